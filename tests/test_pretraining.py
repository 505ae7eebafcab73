"""run_mae_pretraining / run_mmkd_pretraining end to end on real clips, resume, bad input."""
import contextlib
import hashlib
import json
import math
import os

import pytest
import torch

import losses
import run_mmkd_pretraining as rmp
from conftest import VIDEOS, killed_after_saving, linear_output_dtypes

CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
         "short_clip_part0.mp4", "corrupted_h264.mp4"]
TINY = ["--model", "pretrain_videomae_tiny_patch16_224", "--input_size", "32", "--num_frames", "4",
        "--sampling_rate", "2", "--batch_size", "2", "--device", "cpu", "--num_workers", "0",
        "--warmup_epochs", "0", "--mask_ratio", "0.5", "--lr", "1e-3", "--save_ckpt_freq", "1"]


@pytest.fixture(scope="module")
def anno(tmp_path_factory):
    d = tmp_path_factory.mktemp("anno")
    path = d / "train.csv"
    path.write_text("".join(f"{c} 0\n" for c in CLIPS))
    return str(path)


def run(argv, teacher=True):
    args = rmp.get_args_parser(teacher).parse_args(argv)
    rmp.main(args)
    return args


def read_log(out):
    with open(os.path.join(out, "log.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def teacher_ckpt(anno, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mae"))
    run(["--data_path", anno, "--data_root", VIDEOS, "--decoder_depth", "1", "--epochs", "1",
         "--output_dir", out, *TINY], teacher=False)
    return out


def test_pixel_pretraining_writes_a_teacher(teacher_ckpt):
    log = read_log(teacher_ckpt)
    assert len(log) == 1 and math.isfinite(log[0]["train_pixel"])
    assert log[0]["train_skipped_videos"] == 1  # the corrupted clip, counted
    ckpt = torch.load(os.path.join(teacher_ckpt, "checkpoint-0.pth"), weights_only=True)
    assert "decoder.head.weight" in ckpt["model"] and ckpt["epoch"] == 0
    assert ckpt["args"]["total_batch_size"] == 2


def test_distill_two_epochs_resume_and_finite_losses(anno, teacher_ckpt, tmp_path, capsys):
    out = str(tmp_path / "kd")
    common = ["--data_path", anno, "--data_root", VIDEOS, "--model_t",
              "pretrain_videomae_tiny_patch16_224", "--path_t",
              os.path.join(teacher_ckpt, "checkpoint-0.pth"), "--num_k", "2", "--num_f", "4",
              "--teacher_proj", "--output_dir", out, "--log_dir", str(tmp_path / "tb"), *TINY]
    run(common + ["--epochs", "1"])
    first = torch.load(os.path.join(out, "checkpoint-0.pth"), weights_only=True)
    run(common + ["--epochs", "2"])  # auto-resumes from checkpoint-0
    text = capsys.readouterr().out
    assert "resumed from" in text and "checkpoint-0.pth" in text
    assert "effective batch size 2 = 2 per process x 1 processes x 1 accumulation" in text
    saved = json.load(open(os.path.join(out, "args.json")))
    assert saved["total_batch_size"] == 2 and saved["token_grid"] == [2, 2, 2]
    assert saved["lr_scaled"] == pytest.approx(1e-3 * 2 / 256)
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    for r in log:
        for term in ("loss", "hint", "relation", "global", "local"):
            assert math.isfinite(r[f"train_{term}"]), term
        assert r["train_skipped_videos"] == 1
    second = torch.load(os.path.join(out, "checkpoint-1.pth"), weights_only=True)
    steps = first["step"]
    assert second["step"] == 2 * steps
    assert all(s["step"].item() == 2 * steps for s in second["optimizer"]["state"].values())
    assert not any(k.startswith("teacher") for k in second["model"])
    # the teacher-side Linear is the student's: in its checkpoint and its optimizer
    assert {f"projector.attn_t.{v}.{p}" for v in ("global", "local") for p in ("weight", "bias")} \
        <= set(second["model"])
    assert len(second["optimizer"]["state"]) == len(second["model"])  # every parameter steps
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_non_finite_loss_stops_and_keeps_checkpoint(anno, tmp_path, monkeypatch):
    out = str(tmp_path / "nan")
    common = ["--data_path", anno, "--data_root", VIDEOS, "--model_t",
              "pretrain_videomae_tiny_patch16_224", "--num_k", "2", "--num_f", "4",
              "--output_dir", out, *TINY]
    run(common + ["--epochs", "1"])
    path = os.path.join(out, "checkpoint-0.pth")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    monkeypatch.setattr(losses, "hint_loss", lambda s, t: torch.tensor(float("nan")))
    with pytest.raises(SystemExit) as e:
        run(common + ["--epochs", "2"])
    msg = str(e.value)
    assert "'hint'" in msg and "step 0" in msg and "checkpoint-0.pth" in msg
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    assert not os.path.exists(os.path.join(out, "checkpoint-1.pth"))


def test_bf16_autocast_on_cpu(anno, tmp_path):
    """``--amp bf16`` on a CPU: teacher and student under bf16 autocast, float32 weights."""
    out = str(tmp_path / "bf16")
    args = rmp.get_args_parser().parse_args(
        ["--data_path", anno, "--data_root", VIDEOS, "--model_t",
         "pretrain_videomae_tiny_patch16_224", "--num_k", "2", "--num_f", "4", "--epochs", "1",
         "--amp", "bf16", "--output_dir", out, *TINY])
    with contextlib.ExitStack() as hooks:
        seen = {}

        def build(a):  # the script's own models, watched while they train
            student, teacher = rmp.build_models(a)
            seen.update(hooks.enter_context(linear_output_dtypes(
                student=student.encoder, teacher=teacher)))
            return student, teacher
        rmp.main(args, build=build)
    assert seen == {"student": {torch.bfloat16}, "teacher": {torch.bfloat16}}
    log = read_log(out)[0]
    assert all(math.isfinite(log[f"train_{k}"]) for k in ("loss", "hint", "relation", "local"))
    ckpt = torch.load(os.path.join(out, "checkpoint-0.pth"), weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize("change, message", [
    (["--num_frames", "5"], "--num_frames 5"),
    (["--input_size", "40"], "--input_size 40"),
    (["--mask_ratio", "1.0"], "--mask_ratio"),
    (["--mask_ratio", "-0.2"], "--mask_ratio"),
    (["--num_k", "50"], "--num_k 50"),
    (["--num_f", "50"], "--num_f 50"),
    (["--mask_type", "random"], "--mask_type tube"),
    (["--amp", "fp16"], "--amp fp16"),
])
def test_bad_flags(anno, change, message):
    argv = ["--data_path", anno, "--data_root", VIDEOS, "--model_t",
            "pretrain_videomae_tiny_patch16_224", "--epochs", "1", "--num_k", "1", "--num_f", "2",
            *TINY, *change]
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert message in str(e.value)


def test_bad_annotation_files(tmp_path):
    base = ["--model_t", "pretrain_videomae_tiny_patch16_224", "--epochs", "1", "--num_k", "1",
            "--num_f", "2", *TINY]
    with pytest.raises(SystemExit) as e:
        run(["--data_path", str(tmp_path / "missing.csv"), *base])
    assert "missing.csv" in str(e.value)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{os.path.join(VIDEOS, CLIPS[0])} 0\nthis-line-has-no-label\n")
    with pytest.raises(SystemExit) as e:
        run(["--data_path", str(bad), *base])
    assert "bad.csv" in str(e.value) and "2" in str(e.value)
    gone = tmp_path / "gone.csv"
    gone.write_text("no_such_video.mp4 0\n")
    with pytest.raises(SystemExit) as e:
        run(["--data_path", str(gone), "--data_root", str(tmp_path), *base])
    assert "no_such_video.mp4" in str(e.value)


def test_teacher_of_another_token_grid(anno, tmp_path):
    from modeling_encoder import VideoViTEncoder
    other = VideoViTEncoder(img_size=32, num_frames=4, tubelet_size=1, embed_dim=192, depth=12,
                            num_heads=3)
    path = str(tmp_path / "t.pth")
    torch.save({"model": {f"encoder.{k}": v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(SystemExit) as e:
        run(["--data_path", anno, "--data_root", VIDEOS, "--model_t",
             "pretrain_videomae_tiny_patch16_224", "--path_t", path, "--epochs", "1", "--num_k", "1",
             "--num_f", "2", *TINY])
    assert "patch_embed.proj.weight" in str(e.value) and "wrong shape" in str(e.value)
    student = rmp.create_student("pretrain_videomae_tiny_patch16_224", img_size=32, num_frames=4)
    teacher = rmp.create_teacher("pretrain_videomae_tiny_patch16_224", img_size=64, num_frames=4)
    args = rmp.get_args_parser().parse_args(["--data_path", anno, *TINY])
    args.use_teacher = True
    with pytest.raises(ValueError, match="token grid"):
        rmp.resolve_args(args, student, teacher)


def test_same_seed_same_losses_with_any_workers_and_after_a_resume(anno, teacher_ckpt, tmp_path):
    """Items come from (seed, epoch, index), the order from (seed, epoch), and a checkpoint
    carries the RNG states (drop path here): two workers or none, straight through or killed
    after a checkpoint and resumed, every epoch's losses are the same to the bit."""
    common = ["--data_path", anno, "--data_root", VIDEOS, "--model_t",
              "pretrain_videomae_tiny_patch16_224", "--path_t",
              os.path.join(teacher_ckpt, "checkpoint-0.pth"), "--num_k", "2", "--num_f", "4",
              "--drop_path", "0.1", *TINY, "--epochs", "3"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run(common + ["--num_workers", "2", "--output_dir", straight])

    with killed_after_saving(1), pytest.raises(KeyboardInterrupt):
        run(common + ["--output_dir", resumed])
    ckpt = torch.load(os.path.join(resumed, "checkpoint-1.pth"), weights_only=True)
    assert len(ckpt["rng_states"]) == 1 and ckpt["rng_states"][0]["numpy"]["keys"].numel() == 624
    run(common + ["--output_dir", resumed])  # auto-resumes at epoch 2
    terms = ("train_loss", "train_hint", "train_relation", "train_global", "train_local")
    a = {r["epoch"]: [r[k] for k in terms] for r in read_log(straight)}
    b = {r["epoch"]: [r[k] for k in terms] for r in read_log(resumed)}  # killed before logging 1
    assert sorted(a) == [0, 1, 2] and sorted(b) == [0, 2]
    assert b[0] == a[0] and b[2] == a[2] and a[1] != a[2]
