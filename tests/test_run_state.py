"""run_state.py: a run stopped by a signal in the middle of an epoch saves, exits with
REQUEUE_EXIT and resumes to the same losses, log and final weights as a run straight
through (pre-training, fine-tuning with its multi-view test, DeepSpeed); the rolling
checkpoint; resume errors; log records after a resume. The SLURM side: tests/test_slurm.py."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import run_class_finetuning as rcf
import run_mmkd_pretraining as rmp
import run_state
from checkpoint import checkpoint_candidates, load_checkpoint, save_checkpoint
from conftest import ROOT, VIDEOS
from logger import RunLogger
from model_factory import create_classifier
from test_finetuning import DIST_CLIPS, ENV, _anno_dir

CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
         "short_clip_part0.mp4", "corrupted_h264.mp4", "ava_style_demo.mp4"]
PRETRAIN = ["--model", "pretrain_videomae_tiny_patch16_224", "--input_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--device", "cpu",
            "--num_workers", "0", "--warmup_epochs", "0", "--mask_ratio", "0.5", "--lr", "1e-3",
            "--decoder_depth", "1", "--drop_path", "0.1", "--epochs", "2", "--save_ckpt_freq", "5"]
FINETUNE = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
            "--data_root", VIDEOS, "--input_size", "32", "--short_side_size", "40",
            "--num_frames", "4", "--sampling_rate", "4", "--batch_size", "1", "--epochs", "1",
            "--warmup_epochs", "0", "--test_num_segment", "2", "--test_num_crop", "1",
            "--num_workers", "0", "--device", "cpu", "--drop_path", "0.1", "--num_sample", "2",
            "--save_ckpt_freq", "5"]


def stop_at_update(monkeypatch, k):
    """SIGUSR1 to this process just before the stop check of its ``k``-th update."""
    count, after = [0], run_state.RunState.after_update

    def hooked(self, *a):
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGUSR1)
        return after(self, *a)
    monkeypatch.setattr(run_state.RunState, "after_update", hooked)


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.json"))]


def weights(path):
    ckpt = load_checkpoint(path)
    return ckpt.get("model", ckpt.get("module"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretraining_stopped_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    """3 updates per epoch, stopped after update 5 (epoch 1, update 2 of 3): exit status 75,
    checkpoint-latest holds the position; the resumed run's log (drop path: the RNG
    states) and final weights equal the straight run's, each epoch logged once."""
    anno = tmp_path / "train.csv"
    anno.write_text("".join(f"{c} 0\n" for c in CLIPS + CLIPS[:1]))
    common = ["--data_path", str(anno), "--data_root", VIDEOS, *PRETRAIN]
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    parser = rmp.get_args_parser(teacher=False)
    rmp.main(parser.parse_args([*common, "--output_dir", straight]))
    with monkeypatch.context() as m:
        stop_at_update(m, 5)
        with pytest.raises(SystemExit) as e:
            rmp.main(parser.parse_args([*common, "--output_dir", stopped]))
    assert e.value.code == run_state.REQUEUE_EXIT
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers given back
    latest = load_checkpoint(os.path.join(stopped, "checkpoint-latest.pth"))
    assert (latest["resume_epoch"], latest["resume_batch"], latest["step"]) == (1, 2, 5)
    assert not os.path.exists(os.path.join(stopped, "checkpoint-1.pth"))
    assert [r["epoch"] for r in log(stopped)] == [0]
    rmp.main(parser.parse_args([*common, "--output_dir", stopped]))  # auto-resume
    assert log(stopped) == log(straight) or (
        [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
         for r in log(stopped)] ==
        [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
         for r in log(straight)])
    assert_same_weights(weights(os.path.join(straight, "checkpoint-1.pth")),
                        weights(os.path.join(stopped, "checkpoint-1.pth")))
    # the kept file and the rolling one are the same bytes (a hard link), newest first
    assert os.path.samefile(os.path.join(stopped, "checkpoint-1.pth"),
                            os.path.join(stopped, "checkpoint-latest.pth"))
    assert checkpoint_candidates(stopped)[0].endswith("checkpoint-1.pth")


def test_finetuning_stopped_mid_epoch_same_test_and_predictions(tmp_path, monkeypatch):
    """Mixup/CutMix (numpy's RNG), drop path, repeated augmentation: stopped by SIGTERM after
    update 3 of 5, resumed; the same log record, multi-view Top-1,
    predictions.csv and weights as straight through."""
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS, [0, 1, 2, 0, 1])
    os.remove(os.path.join(data, "val.csv"))  # the SLURM test validates; time is short here
    common = [*FINETUNE, "--data_path", data]
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    rcf.main(rcf.get_args_parser().parse_args([*common, "--output_dir", straight]))
    count, after = [0], run_state.RunState.after_update

    def term_at_3(self, *a):
        count[0] += 1
        if count[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return after(self, *a)
    with monkeypatch.context() as m:
        m.setattr(run_state.RunState, "after_update", term_at_3)
        with pytest.raises(SystemExit) as e:
            rcf.main(rcf.get_args_parser().parse_args([*common, "--output_dir", stopped]))
    assert e.value.code == run_state.REQUEUE_EXIT
    assert load_checkpoint(os.path.join(stopped, "checkpoint-latest.pth"))["resume_batch"] == 3
    rcf.main(rcf.get_args_parser().parse_args([*common, "--output_dir", stopped]))
    keep = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}  # noqa: E731
                         for r in rows]
    assert keep(log(stopped)) == keep(log(straight)) and len(log(stopped)) == 1
    summary = [json.load(open(os.path.join(d, "test_summary.json"))) for d in (straight, stopped)]
    assert summary[0]["top1"] == summary[1]["top1"] and summary[0]["num_views"] == 10
    assert (open(os.path.join(straight, "predictions.csv")).read()
            == open(os.path.join(stopped, "predictions.csv")).read())
    assert_same_weights(weights(os.path.join(straight, "checkpoint-0.pth")),
                        weights(os.path.join(stopped, "checkpoint-0.pth")))


def test_deepspeed_stopped_mid_epoch_resumes_bit_identical(tmp_path):
    """ZeRO-2 through DeepSpeed's engine (its own checkpoint directories): stopped after
    update 2 of 4 (the rolling tag checkpoint-latest/, named by 'latest'), resumed; the same
    losses and final weights as straight through."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    from test_deepspeed import _NO_SHM
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS[:2], [0, 1])
    with open(os.path.join(data, "train.csv"), "w") as f:  # 8 clips, 2 per step: 4 updates
        f.write("".join(f"{c} {i % 3}\n" for i, c in enumerate(DIST_CLIPS + DIST_CLIPS[:3])))
    os.remove(os.path.join(data, "val.csv"))
    argv = [*FINETUNE, "--data_path", data, "--batch_size", "2", "--num_sample", "1",
            "--epochs", "1", "--enable_deepspeed", "--zero_stage", "2", "--clip_grad", "1.0"]

    def run(out, **env):
        res = subprocess.run([sys.executable, "-c", _NO_SHM, os.path.join(ROOT, "tests",
                              "pause_at_update.py"), os.path.join(ROOT, "run_class_finetuning.py"),
                              *argv, "--output_dir", out], cwd=ROOT, env=dict(ENV, **env),
                             capture_output=True, text=True, timeout=300)
        return res
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    res = run(straight)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = run(stopped, STOP_AT_UPDATE="2")
    assert res.returncode == run_state.REQUEUE_EXIT, res.stdout[-3000:] + res.stderr[-3000:]
    assert open(os.path.join(stopped, "latest")).read().strip() == "checkpoint-latest"
    res = run(stopped)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ": epoch 0 after 2 of 4 updates" in res.stdout
    assert [r["train_loss"] for r in log(straight)] == [r["train_loss"] for r in log(stopped)]
    assert_same_weights(weights(os.path.join(straight, "checkpoint-0")),
                        weights(os.path.join(stopped, "checkpoint-0")))


def test_finetuning_resume_that_does_not_fit_names_the_keys(tmp_path, capsys):
    """A --resume of another head size: the key summary, one line per kind, not torch's
    load_state_dict text."""
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS[:2], [0, 1])
    model = create_classifier("vit_tiny_patch16_224", num_classes=5, img_size=32, num_frames=4)
    bad = str(tmp_path / "other.pth")
    save_checkpoint(bad, {"model": model.state_dict(), "epoch": 0})
    with pytest.raises(SystemExit) as e:
        rcf.main(rcf.get_args_parser().parse_args(
            [*FINETUNE, "--data_path", data, "--resume", bad, "--output_dir",
             str(tmp_path / "out")]))
    msg = str(e.value.code)
    assert msg.startswith(f"error: checkpoint {bad} does not fit")
    assert "wrong shape (2): head.weight: checkpoint (5, 192) vs model (3, 192)" in msg
    assert "Error(s) in loading state_dict" not in msg and msg.count("\n") == 1


def test_log_records_from_the_resumed_epoch_are_dropped(tmp_path):
    out = str(tmp_path)
    with open(os.path.join(out, "log.json"), "w") as f:
        for epoch in range(3):
            f.write(json.dumps({"epoch": epoch, "train_loss": 1.0}) + "\n")
    RunLogger(out, resume=(1, 10)).log_json({"epoch": 1, "train_loss": 0.5})
    assert [(r["epoch"], r["train_loss"]) for r in log(out)] == [(0, 1.0), (1, 0.5)]


def test_rolling_checkpoint_order(tmp_path):
    """checkpoint-latest.pth before the kept files written before it; a kept file written
    after it (killed before the link) comes first."""
    for name in ("checkpoint-0.pth", "checkpoint-latest.pth"):
        save_checkpoint(str(tmp_path / name), {"epoch": 0})
    os.utime(tmp_path / "checkpoint-0.pth", (1, 1))
    assert checkpoint_candidates(str(tmp_path))[0].endswith("checkpoint-latest.pth")
    save_checkpoint(str(tmp_path / "checkpoint-1.pth"), {"epoch": 1})
    os.utime(tmp_path / "checkpoint-latest.pth", (2, 2))
    assert [os.path.basename(p) for p in checkpoint_candidates(str(tmp_path))] == [
        "checkpoint-1.pth", "checkpoint-latest.pth", "checkpoint-0.pth"]


def test_timed_rolling_checkpoint_within_an_epoch(tmp_path, monkeypatch):
    """--save_latest_minutes: checkpoint-latest.pth also within an epoch (here after every
    update: the interval is tiny), each with its position; the epoch's end as before."""
    anno = tmp_path / "train.csv"
    anno.write_text("".join(f"{c} 0\n" for c in CLIPS[:4] + CLIPS[5:] + CLIPS[:1]))
    saved = []

    def recording(path, state, save=run_state.save_checkpoint):
        saved.append((os.path.basename(path), state["resume_epoch"], state["resume_batch"]))
        save(path, state)
    monkeypatch.setattr(run_state, "save_checkpoint", recording)
    out = str(tmp_path / "out")
    argv = ["--data_path", str(anno), "--data_root", VIDEOS, *PRETRAIN, "--epochs", "1",
            "--save_latest_minutes", "1e-9", "--output_dir", out]
    rmp.main(rmp.get_args_parser(teacher=False).parse_args(argv))
    assert saved == [("checkpoint-latest.pth", 0, 1), ("checkpoint-latest.pth", 0, 2),
                     ("checkpoint-latest.pth", 0, 3), ("checkpoint-0.pth", 1, 0)]
