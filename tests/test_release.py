"""Release files (tools/export_release.py): a fine-tuned checkpoint and its test summary ->
model.safetensors, config.json, a model card, SHA256SUMS and the transformers layout; the
directory round-trips through --finetune, --eval, --path_t and extract_features.py with
identical outputs, and its transformers export loads in transformers."""
import csv
import hashlib
import json
import os

import pytest
import torch

import extract_features
import run_class_finetuning as rcf
import run_state
from checkpoint import save_checkpoint
from conftest import VIDEOS
from model_factory import create_classifier, create_student, create_teacher
from run_mmkd_pretraining import get_args_parser as pretraining_parser
from test_finetuning import DIST_CLIPS, _anno_dir, _main_error
from tools.export_release import export_release
from tools.export_release import main as export_main
from weights import load_teacher

pytestmark = pytest.mark.usefixtures("two_block_tiny")
TINY = dict(img_size=32, num_frames=4)
BASE = ["--data_set", "UCF101", "--data_root", VIDEOS, "--device", "cpu", "--model",
        "vit_tiny_patch16_224", "--input_size", "32", "--short_side_size", "32", "--num_frames",
        "4", "--sampling_rate", "2", "--num_workers", "0", "--no-auto_resume",
        "--test_num_segment", "2", "--test_num_crop", "1"]


def _predictions(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return list(csv.DictReader(f))


def _fine_tuned(root, pos_embed="sincos_1d"):
    """A fine-tuned ViT-Ti file with the arguments our run writes (a recipe among them)."""
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=5, pos_embed=pos_embed, **TINY)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)  # scores that differ between videos
    args = rcf.get_args_parser().parse_args(["--data_path", str(root), "--nb_classes", "5",
                                             "--recipe", "finetune_small_ucf", *BASE])
    saved = dict(vars(args), pos_embed=pos_embed, world_size=1, recipe_drift=[])
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "checkpoint-9.pth")
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 9, "args": saved})
    return path, model.eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory, two_block_tiny):
    root = tmp_path_factory.mktemp("rel")
    data = _anno_dir(root / "anno", DIST_CLIPS[:3], [0, 1, 2])
    ckpt, model = _fine_tuned(str(root / "run"))
    eval_argv = ["--data_path", data, "--nb_classes", "5", "--eval", *BASE]
    rcf.main(rcf.get_args_parser().parse_args([*eval_argv, "--finetune", ckpt, "--output_dir",
                                               str(root / "run")]))  # its test_summary.json
    out = str(root / "release")
    export_main([ckpt, out])
    return dict(ckpt=ckpt, model=model, out=out, data=data, eval_argv=eval_argv, root=root)


def test_release_files(release):
    out = release["out"]
    names = {"model.safetensors", "config.json", "README.md", "SHA256SUMS", "transformers"}
    assert set(os.listdir(out)) == names
    listed = {}
    for line in open(os.path.join(out, "SHA256SUMS")):
        digest, name = line.split()
        listed[name] = digest
        assert hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest() == digest
    assert {"model.safetensors", "config.json", "README.md",
            "transformers/model.safetensors", "transformers/config.json"} <= set(listed)
    from safetensors.torch import load_file
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert weights.keys() == release["model"].state_dict().keys()  # weights only
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model"] == "vit_tiny_patch16_224" and config["pos_embed"] == "sincos_1d"
    assert (config["num_frames"], config["input_size"], config["nb_classes"]) == (4, 32, 5)
    assert config["recipe"] == "finetune_small_ucf" and config["settings"]["total_batch"] == 64
    summary = json.load(open(os.path.join(os.path.dirname(release["ckpt"]), "test_summary.json")))
    card = open(os.path.join(out, "README.md")).read()
    assert f"| {summary['top1']:.2f} | {summary['top5']:.2f} |" in card
    assert "protocol: 4x2x1" in card and summary["annotation_sha256"] in card
    assert "python run_class_finetuning.py" in card and "--recipe finetune_small_ucf" in card
    assert "@inproceedings{li2023mask" in card and "MaskAgain" in card


def test_release_round_trips_through_every_entry_point(release, tmp_path):
    ckpt, out, model = release["ckpt"], release["out"], release["model"]
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    # --finetune
    built = []
    for source in (ckpt, out):
        args = rcf.get_args_parser().parse_args(["--data_path", "unused", "--nb_classes", "5",
                                                 "--finetune", source, *BASE])
        built.append(rcf.build_model(args).eval())
    resumed = create_classifier("vit_tiny_patch16_224", num_classes=5, **TINY).eval()
    args.resume, args.output_dir = out, ""  # --resume / --eval --resume of the directory
    assert run_state.resume_weights(args, resumed) == out
    with torch.no_grad():
        want = model(x)
        for m in (*built, resumed):
            assert torch.equal(m(x), want)
    # --eval: identical predictions
    eval_out = str(tmp_path / "eval")
    rcf.main(rcf.get_args_parser().parse_args([*release["eval_argv"], "--finetune", out,
                                               "--output_dir", eval_out]))
    assert _predictions(eval_out) == _predictions(os.path.dirname(ckpt))
    # --path_t: the teacher's encoder
    teachers = []
    for source in (ckpt, out):
        teacher = create_teacher("pretrain_videomae_teacher_tiny_patch16_224", **TINY)
        load_teacher(teacher, source)
        teachers.append(teacher.encoder.state_dict())
    assert teachers[0].keys() == teachers[1].keys()
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])
    # extract_features.py (the release names its model itself)
    feats = []
    for i, extra in enumerate((["--checkpoint", ckpt, "--model", "vit_tiny_patch16_224"],
                               ["--checkpoint", out])):
        target = str(tmp_path / f"f{i}.pt")
        extract_features.main([*extra, "--videos", os.path.join(VIDEOS, DIST_CLIPS[0]),
                               "--num_frames", "4", "--input_size", "32", "--output", target,
                               "--num_workers", "0", "--device", "cpu"])
        feats.append(torch.load(target)["features"])
    assert torch.equal(feats[0], feats[1])


def test_transformers_export_loads_in_transformers(release):
    from transformers import VideoMAEForVideoClassification
    hf = VideoMAEForVideoClassification.from_pretrained(
        os.path.join(release["out"], "transformers")).eval()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = hf(x.permute(0, 2, 1, 3, 4)).logits
        want = release["model"](x)
    # transformers' fc_norm runs with eps 1e-5 (ours 1e-6): hf_interop's documented difference
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


def test_a_3d_table_release_and_a_bad_file(tmp_path, capsys):
    ckpt, model = _fine_tuned(str(tmp_path / "run3d"), pos_embed="sincos_3d")
    out = str(tmp_path / "release3d")
    config = export_release(ckpt, out)
    assert config["pos_embed"] == "sincos_3d" and not config["transformers"]
    assert "no transformers export" in capsys.readouterr().out
    assert "No test result" in open(os.path.join(out, "README.md")).read()
    args = rcf.get_args_parser().parse_args(["--data_path", "unused", "--nb_classes", "5",
                                             "--finetune", out, *BASE])  # no --pos_embed
    loaded = rcf.build_model(args).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert loaded.pos_embed_type == "sincos_3d" and torch.equal(loaded(x), model(x))
    ints = str(tmp_path / "int.pth")
    torch.save({"model": {k: v.long() for k, v in model.state_dict().items()}}, ints)
    with pytest.raises(SystemExit) as e:
        export_main([ints, str(tmp_path / "nope")])
    assert "non-floating" in str(e.value.code) and not os.path.exists(tmp_path / "nope")
    # the refusal through the fine-tuning script reads the same
    assert "non-floating" in _main_error(["--data_path", "unused", "--nb_classes", "5",
                                          "--finetune", ints, *BASE])


def test_a_pretraining_release_is_a_teacher(tmp_path):
    """A VideoMAE pre-training checkpoint (run_mae_pretraining.py's arguments): the release
    names the method and the command, and --path_t of it gives the same teacher."""
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **TINY)
    args = pretraining_parser(teacher=False).parse_args(
        ["--data_path", "train.csv", "--model", "pretrain_videomae_tiny_patch16_224",
         "--input_size", "32", "--num_frames", "4", "--epochs", "3"])
    ckpt = str(tmp_path / "checkpoint-2.pth")
    save_checkpoint(ckpt, {"model": student.state_dict(), "args": dict(vars(args), world_size=1)})
    out = str(tmp_path / "release")
    config = export_release(ckpt, out)
    assert (config["method"], config["pos_embed"], config["transformers"]) == \
        ("VideoMAE", "sincos_1d", False)
    card = open(os.path.join(out, "README.md")).read()
    assert "python run_mae_pretraining.py" in card and "--epochs 3" in card
    assert "@inproceedings{tong2022videomae" in card
    teachers = []
    for source in (ckpt, out):
        teacher = create_teacher("pretrain_videomae_teacher_tiny_patch16_224", **TINY)
        load_teacher(teacher, source)
        teachers.append(teacher.encoder.state_dict())
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])
