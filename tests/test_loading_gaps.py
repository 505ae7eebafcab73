"""The loading gaps of issue 23: an MVD fine-tuned file as MVD's save_model writes it (its
parser's Namespace) against a re-implementation of MVD's forward without any flag;
non-floating and float64 weights; no checkpoint written from diverged weights (unit and
through the fine-tuning loop); a FIFO in an annotation list; --eval of a pre-training file
refused; the test summary's protocol and list fingerprint."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import extract_features
import run_class_finetuning as rcf
from checkpoint import DivergedWeightsError, WEIGHT_BOUND, load_checkpoint, save_checkpoint
from conftest import VIDEOS
from datasets.annotations import validate_annotation
from datasets.video_io import VideoDecodeError, load_frames, read_annotation
from model_factory import create_classifier, create_student
from test_finetuning import DIST_CLIPS, _anno_dir, _main_error
from test_position_tables import CLASSES, _finetune_model, loop_3d_table, mvd_finetuned_state, \
    mvd_forward
from tools import convert_checkpoint
from weights import load_pretrained

pytestmark = pytest.mark.usefixtures("two_block_tiny")
TINY = dict(img_size=32, num_frames=4)
BASE = ["--data_set", "UCF101", "--data_root", VIDEOS, "--device", "cpu", "--model",
        "vit_tiny_patch16_224", "--input_size", "32", "--short_side_size", "32", "--num_frames",
        "4", "--sampling_rate", "2", "--num_workers", "0", "--no-auto_resume"]


def mvd_namespace(**overrides):
    """The arguments MVD's run_class_finetuning.py saves (its parser's fields that matter
    here, defaults as in its parser; MVD-only: use_cls_token, merge_test, eval_log_name,
    remove_pos_emb)."""
    values = dict(model="vit_tiny_patch16_224", nb_classes=CLASSES, num_frames=4, input_size=32,
                  tubelet_size=2, use_mean_pooling=True, use_cls_token=False, merge_test=False,
                  eval_log_name="log_eval", remove_pos_emb=False, model_key="model|module",
                  model_prefix="", batch_size=6, update_freq=2, epochs=75, lr=5e-4,
                  layer_decay=0.75, data_set="Kinetics-400", test_num_segment=5,
                  test_num_crop=3, sampling_rate=4, finetune="checkpoint-399.pth")
    values.update(overrides)
    return argparse.Namespace(**values)


def _mvd_save_model(path, sd, args):
    """MVD's utils.save_model with a loss scaler: model, optimizer, epoch, scaler, args."""
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 74,
                "scaler": {"scale": 65536.0}, "args": args}, path)


def test_mvd_finetuned_file_gives_mvds_logits_without_a_flag(tmp_path, capsys):
    sd = mvd_finetuned_state(seed=3)
    path = str(tmp_path / "mvd_checkpoint-74.pth")
    _mvd_save_model(path, sd, mvd_namespace())
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = mvd_forward(sd, x, loop_3d_table(2, 2, 2, 192))
        model, args = _finetune_model(path)  # no --pos_embed
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert got.argmax(1).tolist() == want.argmax(1).tolist()
    out = capsys.readouterr().out
    assert "MVD 3-D sin-cos table, which MVD's fine-tuning builds" in out
    assert "use_cls_token, merge_test, eval_log_name, remove_pos_emb" in out
    rcf.resolve_args(args, model)
    assert args.pos_embed == "sincos_3d"
    enc = extract_features.build_feature_encoder(path, "vit_tiny_patch16_224", 32, 4)
    with torch.no_grad():  # extract_features.py without --pos_embed: the same features
        torch.testing.assert_close(enc(x)[1], model.forward_head(
            model.forward_features(x).tokens, pre_logits=True))
    # a VideoMAE-style Namespace (no MVD-only flag) keeps --pos_embed: the 1-D table
    plain = str(tmp_path / "videomae.pth")
    _mvd_save_model(plain, sd, argparse.Namespace(model="vit_tiny_patch16_224"))
    with torch.no_grad():
        assert (_finetune_model(plain)[0](x) - want).abs().max() > 0.1
    # a class-token model cannot be ours: one line
    cls = str(tmp_path / "mvd_cls.pth")
    _mvd_save_model(cls, sd, mvd_namespace(use_cls_token=True))
    with pytest.raises(ValueError, match="fine-tuned by MVD with --use_cls_token"):
        _finetune_model(cls)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory, two_block_tiny):
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=5, **TINY)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    path = str(tmp_path_factory.mktemp("cls") / "ft.pth")
    save_checkpoint(path, {"model": model.state_dict(), "args": {"pos_embed": "sincos_1d"}})
    return path, model


def test_integer_weights_are_refused_and_float64_cast(classifier_file, tmp_path, capsys):
    path, model = classifier_file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ints = str(tmp_path / "int64.pth")
    torch.save({"model": {k: v.long() for k, v in state.items()}}, ints)
    data = _anno_dir(tmp_path / "a", DIST_CLIPS[:2], [0, 1])
    for entry in (lambda: load_checkpoint(ints),
                  lambda: load_pretrained(create_classifier("vit_tiny_patch16_224",
                                                            num_classes=5, **TINY), ints, ints)):
        with pytest.raises(ValueError) as e:
            entry()
        msg = str(e.value)
        assert "\n" not in msg and ints in msg and "non-floating weight tensors" in msg
        assert "patch_embed.proj.weight (int64)" in msg
    msg = _main_error(["--data_path", data, "--nb_classes", "5", "--eval", "--finetune", ints,
                       *BASE])
    assert msg.startswith("error: checkpoint") and "non-floating" in msg
    with pytest.raises(SystemExit) as e:  # nor is it converted
        convert_checkpoint.cli(["to-hf", "--checkpoint", ints, "--model",
                                 "vit_tiny_patch16_224", "--nb_classes", "5", "--num_frames",
                                 "4", "--input_size", "32", "--output_dir",
                                 str(tmp_path / "hf")])
    assert "non-floating" in str(e.value.code) and not os.path.exists(tmp_path / "hf")
    doubles = str(tmp_path / "float64.pth")
    torch.save({"model": {k: v.double() for k, v in state.items()}}, doubles)
    capsys.readouterr()
    fresh = create_classifier("vit_tiny_patch16_224", num_classes=5, **TINY)
    load_pretrained(fresh, doubles, doubles)
    assert "float64 weight tensors" in capsys.readouterr().out
    for k, v in fresh.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, state[k])
    # BatchNorm's integer counter is a legitimate buffer
    cnn_path = str(tmp_path / "cnn.pth")
    torch.save({"model": torch.nn.BatchNorm3d(4).state_dict()}, cnn_path)
    assert load_checkpoint(cnn_path)["model"]["num_batches_tracked"].dtype == torch.int64


def test_diverged_weights_are_never_saved(tmp_path):
    model = create_classifier("vit_tiny_patch16_224", num_classes=5, **TINY)
    good = str(tmp_path / "checkpoint-0.pth")
    save_checkpoint(good, {"model": model.state_dict(), "epoch": 0})
    bad = str(tmp_path / "checkpoint-1.pth")
    for value, what in ((1e28, "max |w| 1e+28 in blocks.0.attn.qkv.weight"),
                        (float("nan"), "blocks.0.attn.qkv.weight holds NaN or inf")):
        state = model.state_dict()
        state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"].clone()
        state["blocks.0.attn.qkv.weight"][0, 0] = value
        with pytest.raises(DivergedWeightsError) as e:
            save_checkpoint(bad, {"model": state, "epoch": 1})
        assert what in str(e.value) and f"last checkpoint whose weights were sane: {good}" \
            in str(e.value)
        assert not os.path.exists(bad)
    state = model.state_dict()
    state["head.weight"] = state["head.weight"] * 0 + WEIGHT_BOUND / 2  # large but inside
    save_checkpoint(bad, {"model": state})
    assert os.path.exists(bad)


def test_fine_tuning_stops_naming_the_last_sane_checkpoint(tmp_path, monkeypatch):
    """The loss explodes on epoch 1's last update: its weights (1e28) are not saved, the run
    stops naming checkpoint-0."""
    real = rcf.train_one_epoch

    def exploding(model, *a, **k):
        stats = real(model, *a, **k)
        if a[4] == 1:  # the epoch argument
            with torch.no_grad():
                next(model.parameters()).mul_(1e28)
        return stats

    monkeypatch.setattr(rcf, "train_one_epoch", exploding)
    data = _anno_dir(tmp_path / "a", DIST_CLIPS[:2], [0, 1])
    out = str(tmp_path / "out")
    msg = _main_error(["--data_path", data, "--nb_classes", "2", "--output_dir", out,
                       "--epochs", "2", "--save_ckpt_freq", "1", "--batch_size", "2",
                       "--num_sample", "1", "--mixup", "0", "--cutmix", "0", "--aa", "none",
                       "--test_num_segment", "1", "--test_num_crop", "1", *BASE])
    assert msg.startswith("error: not writing checkpoint") and "checkpoint-1.pth" in msg
    assert f"last checkpoint whose weights were sane: {os.path.join(out, 'checkpoint-0.pth')}" \
        in msg
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == \
        ["checkpoint-0.pth", "checkpoint-latest.pth"]
    # the rolling checkpoint was not replaced by epoch 1's weights either
    assert torch.load(os.path.join(out, "checkpoint-latest.pth"), weights_only=True)["epoch"] == 0


def test_a_fifo_is_reported_as_such(tmp_path):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    anno = tmp_path / "list.csv"
    anno.write_text(f"{fifo} 0\n")
    with pytest.raises(ValueError, match=r"line 1: .*clip.mp4 is a FIFO \(named pipe\), not a "
                                         r"video file"):
        read_annotation(str(anno), check_exists=True)
    report = validate_annotation(str(anno))
    assert [m for _, _, m in report.errors["not_a_file"]] == [
        "a FIFO (named pipe), not a video file or frame folder"]
    with pytest.raises(VideoDecodeError, match="FIFO"):
        load_frames(str(fifo), lambda n, fps: [0])
    data = _anno_dir(tmp_path / "d", [str(fifo)], [0])
    msg = _main_error(["--data_path", data, "--nb_classes", "2", "--eval", *BASE])
    assert "is a FIFO (named pipe)" in msg and "\n" not in msg


def test_eval_of_a_pretraining_file_is_refused(tmp_path, classifier_file):
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1,
                             teacher_dim=192, **TINY)
    pt = str(tmp_path / "checkpoint-399.pth")
    save_checkpoint(pt, {"model": student.state_dict()})
    data = _anno_dir(tmp_path / "a", DIST_CLIPS[:2], [0, 1])
    msg = _main_error(["--data_path", data, "--nb_classes", "5", "--eval", "--finetune", pt,
                       *BASE])
    assert msg.startswith(f"error: --eval of {pt}: it holds no trained classification head")
    assert f"fine-tune from it with --finetune {pt} (without --eval)" in msg and "\n" not in msg
    # a head of another number of classes would be dropped: refused too
    msg = _main_error(["--data_path", data, "--nb_classes", "7", "--eval", "--finetune",
                       classifier_file[0], *BASE])
    assert "no trained classification head for --nb_classes 7" in msg


def test_summary_states_the_protocol_and_the_lists_fingerprint(tmp_path, classifier_file,
                                                              capsys):
    path, _ = classifier_file
    summaries = []
    for i, clips in enumerate((DIST_CLIPS[:2], DIST_CLIPS[:2][::-1])):
        data = _anno_dir(tmp_path / f"a{i}", clips, [0, 1])
        out = str(tmp_path / f"out{i}")
        rcf.main(rcf.get_args_parser().parse_args(
            ["--data_path", data, "--nb_classes", "5", "--eval", "--finetune", path,
             "--output_dir", out, "--test_num_segment", "2", "--test_num_crop", "1", *BASE]))
        summaries.append(json.load(open(os.path.join(out, "test_summary.json"))))
    s, t = summaries
    assert s["protocol"] == "4x2x1" and s["data_set"] == "UCF101" and s["nb_classes"] == 5
    assert s["videos_listed"] == s["videos_found"] == s["num_videos"] == 2
    assert "2 apart" in s["sampling"] and "averaged over the 2 views" in s["merge"]
    assert len(s["annotation_sha256"]) == 64 and s["annotation_sha256"] != t["annotation_sha256"]
    assert s["top1"] == t["top1"]  # the same videos, listed in another order
    out = capsys.readouterr().out
    assert "test protocol 4x2x1 (frames x clips x crops) on UCF101 (5 classes)" in out
    assert f"sha256 {s['annotation_sha256'][:16]}" in out


def test_checkpoint_io_imports_no_model_module():
    """``checkpoint.py`` is files only: importing it loads no ``modeling_*`` module (the
    layouts and loading live in ``weights.py``, the CNN loader in ``modeling_tpn.py``)."""
    code = ("import sys, checkpoint; "
            "print([m for m in sys.modules if m.startswith(('modeling', 'weights', 'pos_embed'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         check=True).stdout.strip()
    assert out == "[]"
