"""Hostile checkpoints, shared or full output directories and bad flags or files (issue 14):
each stops with one line naming the flag or file and a non-zero exit status, nothing in a
checkpoint runs, and nothing written is lost.

1. A crafted DeepSpeed checkpoint directory whose pickles would create a marker file, through
   every entry point that reads a checkpoint (DeepSpeed's ``engine.load_checkpoint`` too).
2. Two runs, one ``--output_dir``: two real processes on the bundled clips.
3. Disk full during a checkpoint write: an injected ``ENOSPC`` (``os.fsync`` fails, as on
   network file systems and quotas), and a real 1.5-checkpoint tmpfs where mounting works.
4. Numeric flags outside their range, and read-only output directories.
5. A UTF-8 byte-order mark in annotation files, converter load errors, a corrupt newest
   checkpoint (auto-resume falls back), ``--resume`` of an empty directory.
"""
import argparse
import errno
import functools
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import run_class_finetuning as rcf
import run_mmkd_pretraining as rmp
from checkpoint import checkpoint_candidates, load_resume_checkpoint
from conftest import ROOT, VIDEOS
from flag_checks import FLAG_RANGES, flag_errors
from model_factory import create_classifier
from run_dir import LOCK_FILE, lock_output_dir, release_output_dir
from test_deepspeed import _NO_SHM
from test_finetuning import ENV, _anno_dir
from test_pretraining import read_log
from test_reference_checkpoints import RunsCode
from tools import convert_checkpoint

CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
         "short_clip_part0.mp4"]
TINY_MAE = ["--model", "pretrain_videomae_tiny_patch16_224", "--input_size", "32",
            "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "2", "--device", "cpu",
            "--num_workers", "0", "--warmup_epochs", "0", "--mask_ratio", "0.5", "--epochs", "1",
            "--save_ckpt_freq", "1"]
TINY_PRE = [*TINY_MAE, "--model_t", "pretrain_videomae_tiny_patch16_224", "--num_k", "2",
            "--num_f", "4"]
TINY_FT = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
           "--input_size", "32", "--short_side_size", "40", "--num_frames", "4",
           "--sampling_rate", "4", "--batch_size", "2", "--epochs", "1", "--warmup_epochs", "0",
           "--test_num_segment", "1", "--test_num_crop", "1", "--num_workers", "0",
           "--device", "cpu", "--aa", "none", "--reprob", "0"]
TO_HF = ["to-hf", "--model", "vit_tiny_patch16_224", "--nb_classes", "3", "--num_frames", "4",
         "--input_size", "32"]  # the tiny classifier's export, less --checkpoint, --output_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``{"pre": annotation file, "ft": directory with train/val/test.csv}`` of real clips."""
    ft = _anno_dir(tmp_path_factory.mktemp("data"), CLIPS, [i % 3 for i in range(len(CLIPS))])
    return {"pre": os.path.join(ft, "train.csv"), "ft": ft}


def pretrain(data, *extra, teacher=True):
    """``run_mmkd_pretraining.py`` (``teacher=False``: ``run_mae_pretraining.py``) in-process."""
    tiny = TINY_PRE if teacher else [*TINY_MAE, "--decoder_depth", "1"]
    rmp.main(rmp.get_args_parser(teacher).parse_args(
        ["--data_path", data["pre"], "--data_root", VIDEOS, *tiny, *extra]))


def finetune(data, *extra):
    rcf.main(rcf.get_args_parser().parse_args(
        ["--data_path", data["ft"], "--data_root", VIDEOS, *TINY_FT, *extra]))


def exit_message(fn, *args, **kwargs):
    """The message of the ``SystemExit`` that ``fn`` ends with: a string (exit status 1),
    one line, no traceback text."""
    with pytest.raises(SystemExit) as e:
        fn(*args, **kwargs)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: "), msg
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def run_script(script, argv, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(res, *needles):
    """A script that failed as it should: status 1, the last stderr line is the error."""
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in last, last
    return last


# ---------------------------------------------------------------------------------------------
# 1. a crafted checkpoint never runs code, DeepSpeed included
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _classifier_state():
    return create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32,
                             num_frames=4).state_dict()


def classifier_state():
    """The tiny test classifier's state dict (a copy)."""
    return dict(_classifier_state())


def write_deepspeed_dir(root, marker, model_states_run_code=True):
    """A DeepSpeed save directory (``latest`` -> ``checkpoint-0``) for the tiny classifier
    whose ZeRO optimizer file runs code, and whose model-states file does too (or is a
    loadable one, so that DeepSpeed goes on to read the optimizer file)."""
    tag = os.path.join(root, "checkpoint-0")
    os.makedirs(tag)
    with open(os.path.join(root, "latest"), "w") as f:
        f.write("checkpoint-0")
    states = {"module": classifier_state(), "buffer_names": [], "optimizer": None,
              "lr_scheduler": None, "skipped_steps": 0, "global_steps": 1, "global_samples": 2,
              "dp_world_size": 1, "mp_world_size": 1, "epoch": 0, "args": {}}
    if model_states_run_code:
        states["args"] = RunsCode(marker)
    torch.save(states, os.path.join(tag, "mp_rank_00_model_states.pt"))
    torch.save({"optimizer_state_dict": RunsCode(marker), "ds_version": "0"},
               os.path.join(tag, "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    return root


@pytest.fixture
def crafted(tmp_path):
    marker = str(tmp_path / "code_ran")
    return write_deepspeed_dir(str(tmp_path / "crafted"), marker), marker


def test_the_crafted_checkpoint_runs_code_when_unpickled(crafted):
    """The test's premise: an unsafe load of either file writes the marker."""
    root, marker = crafted
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.load(os.path.join(root, "checkpoint-0", name), weights_only=False)
        assert os.path.exists(marker)
        os.remove(marker)


def _vis(out, **kw):
    import run_vis
    argv = [os.path.join(VIDEOS, CLIPS[0]), out, *kw.get("student", []),
            "--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
            "pretrain_videomae_tiny_patch16_224", "--input_size", "32", "--num_frames", "4",
            "--mask_ratio", "0.5", "--num_k", "1", *kw.get("extra", [])]
    run_vis.main(run_vis.get_args_parser().parse_args(argv))


def _features(root, out):
    import extract_features
    extract_features.main(["--checkpoint", root, "--model", "vit_tiny_patch16_224",
                           "--videos", os.path.join(VIDEOS, CLIPS[0]), "--input_size", "32",
                           "--num_frames", "4", "--output", os.path.join(out, "f.pt"),
                           "--device", "cpu", "--num_workers", "0"])


ENTRY_POINTS = {  # name -> fn(data, crafted root, a fresh directory)
    "finetune --finetune": lambda d, r, o: finetune(d, "--finetune", r, "--output_dir", o),
    "finetune --resume": lambda d, r, o: finetune(d, "--resume", r, "--output_dir", o),
    "finetune --resume tag": lambda d, r, o: finetune(d, "--resume",
                                                      os.path.join(r, "checkpoint-0")),
    "finetune auto-resume": lambda d, r, o: finetune(d, "--output_dir", r),
    "finetune --eval": lambda d, r, o: finetune(d, "--eval", "--output_dir", r),
    "pretrain --path_t": lambda d, r, o: pretrain(d, "--path_t", r, "--output_dir", o),
    "pretrain --resume": lambda d, r, o: pretrain(d, "--resume", r, "--output_dir", o),
    "pretrain auto-resume": lambda d, r, o: pretrain(d, "--output_dir", r),
    "convert inspect": lambda d, r, o: convert_checkpoint.cli(["inspect", r]),
    "convert to-hf": lambda d, r, o: convert_checkpoint.cli(
        [*TO_HF, "--checkpoint", r, "--output_dir", o]),
    "extract_features": lambda d, r, o: _features(r, o),
    "run_vis student": lambda d, r, o: _vis(o, student=[r]),
    "run_vis --path_t": lambda d, r, o: _vis(o, extra=["--path_t", r]),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_crafted_checkpoint_is_refused_by_every_entry_point(entry, crafted, data, tmp_path):
    root, marker = crafted
    msg = exit_message(ENTRY_POINTS[entry], data, root, str(tmp_path / "out"))
    assert "mp_rank_00_model_states.pt" in msg and "weights_only" in msg
    assert not os.path.exists(marker)


@pytest.mark.parametrize("how", ["--resume DIR", "--resume TAG", "auto-resume",
                                 "optimizer file only"])
def test_deepspeed_resume_never_unpickles_unsafely(how, data, tmp_path):
    """``--enable_deepspeed --zero_stage 2``: DeepSpeed's own ``load_checkpoint`` reads the
    files through safe loading. In the last case the model-states file is a loadable one, so
    DeepSpeed goes on to the ZeRO optimizer file, which runs code."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    marker = str(tmp_path / "code_ran")
    root = write_deepspeed_dir(str(tmp_path / "ds"), marker,
                               model_states_run_code=how != "optimizer file only")
    out = str(tmp_path / "out")
    where = {"--resume DIR": ["--resume", root, "--output_dir", out],
             "--resume TAG": ["--resume", os.path.join(root, "checkpoint-0"), "--output_dir", out],
             "auto-resume": ["--output_dir", root],
             "optimizer file only": ["--output_dir", root]}[how]
    res = subprocess.run([sys.executable, "-c", _NO_SHM,  # no DeepSpeed shared-memory op build
                          os.path.join(ROOT, "run_class_finetuning.py"), "--data_path",
                          data["ft"], "--data_root", VIDEOS, *TINY_FT, "--enable_deepspeed",
                          "--zero_stage", "2", *where],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    refused = ("zero_pp_rank_0_mp_rank_00_optim_states.pt" if how == "optimizer file only"
               else "mp_rank_00_model_states.pt")
    assert_one_line_failure(res, refused, "weights_only")
    assert not os.path.exists(marker)


# ---------------------------------------------------------------------------------------------
# 2. one run per output directory
# ---------------------------------------------------------------------------------------------

def test_second_run_on_a_held_output_dir_is_refused_and_a_killed_run_frees_it(data, tmp_path,
                                                                               capsys):
    """Run A (a real process, a data-loader worker) holds ``out``; run B (another process)
    is refused with A's pid, host and command; A is killed (SIGKILL); a third run gets the
    directory at once and removes the unfinished checkpoint file a killed run left."""
    out = str(tmp_path / "out")
    argv = ["--data_path", data["pre"], "--data_root", VIDEOS, *TINY_PRE, "--output_dir", out]
    a_err = open(tmp_path / "a.err", "w")
    a = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_mmkd_pretraining.py"), *argv,
                          "--epochs", "100000", "--save_ckpt_freq", "100000", "--num_workers",
                          "1"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=a_err)
    try:
        lock, deadline = os.path.join(out, LOCK_FILE), time.time() + 240
        while not (os.path.exists(lock) and f"pid {a.pid} " in open(lock).read()):
            assert a.poll() is None, open(tmp_path / "a.err").read()[-3000:]
            assert time.time() < deadline, "run A never took the lock"
            time.sleep(0.5)
        b = run_script("run_mmkd_pretraining.py", argv)
        assert_one_line_failure(b, "is in use by another run", f"pid {a.pid} ",
                                f"host {socket.gethostname()}",
                                "run_mmkd_pretraining.py --data_path")
        assert a.poll() is None  # A is unharmed
    finally:
        a.kill()
        a.wait()
        a_err.close()
    orphan = os.path.join(out, f"checkpoint-7.pth.tmp.{a.pid}")
    open(orphan, "wb").write(b"half a checkpoint")
    pretrain(data, "--output_dir", out, "--no-auto_resume")  # at once: the lock died with A
    assert not os.path.exists(orphan) and os.path.isfile(os.path.join(out, "checkpoint-0.pth"))
    assert f"checkpoint-7.pth.tmp.{a.pid}" in capsys.readouterr().out


def test_lock_is_per_process_reentrant_and_released(tmp_path):
    out = str(tmp_path / "o")
    first = lock_output_dir(out)
    assert lock_output_dir(out) is first  # the same run asking again
    holder = open(os.path.join(out, LOCK_FILE)).read()
    assert holder.startswith(f"pid {os.getpid()} on host {socket.gethostname()}, started ")
    code = (f"from run_dir import lock_output_dir\ntry:\n    lock_output_dir({out!r})\n"
            f"except ValueError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert f"is in use by another run (pid {os.getpid()} " in res.stdout
    release_output_dir(out)
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout == ""


# ---------------------------------------------------------------------------------------------
# 3. disk full while writing a checkpoint
# ---------------------------------------------------------------------------------------------

def _fail_second_fsync(monkeypatch):
    """Injected ENOSPC: the first checkpoint's ``fsync`` works, the second's fails."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(checkpoint.os, "fsync", fsync)


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_disk_full_during_a_checkpoint_write(script, data, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    run = pretrain if script == "pretrain" else finetune
    _fail_second_fsync(monkeypatch)
    msg = exit_message(run, data, "--epochs", "2", "--save_ckpt_freq", "1", "--output_dir", out)
    first, second = (os.path.join(out, f"checkpoint-{e}.pth") for e in (0, 1))
    assert f"cannot write checkpoint {second}: No space left on device (" in msg
    assert " free on its file system)" in msg
    assert [r["epoch"] for r in read_log(out)] == [0, 1]
    assert not os.path.exists(second)
    assert not [n for n in os.listdir(out) if ".tmp." in n]
    assert torch.load(first, weights_only=True)["epoch"] == 0


def _mount_refused():
    """Why ``mount`` would fail here before trying it: not root, or root without
    CAP_SYS_ADMIN (bit 21 of the effective capabilities); None where it may work."""
    if os.geteuid() != 0:
        return "not root"
    try:
        with open("/proc/self/status") as f:
            caps = re.search(r"^CapEff:\s*([0-9a-f]+)$", f.read(), re.M)
    except OSError:
        return None
    return None if caps is None or int(caps.group(1), 16) >> 21 & 1 else "no CAP_SYS_ADMIN"


def test_disk_full_on_a_real_small_file_system(data, tmp_path):
    """A tmpfs of about 1.5 checkpoints: the first fits, the second does not (needs the right
    to mount, e.g. root with CAP_SYS_ADMIN; skipped elsewhere)."""
    refused = _mount_refused()
    if refused:  # before the size probe, a whole pre-training run
        pytest.skip(f"cannot mount a tmpfs here: {refused}")
    probe = str(tmp_path / "probe")
    pretrain(data, "--output_dir", probe)
    size = os.path.getsize(os.path.join(probe, "checkpoint-0.pth"))
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 + 65536}",
                          "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        res = run_script("run_mmkd_pretraining.py",
                         ["--data_path", data["pre"], "--data_root", VIDEOS, *TINY_PRE,
                          "--epochs", "2", "--output_dir", str(mnt)])
        last = assert_one_line_failure(res, f"cannot write checkpoint {mnt}/checkpoint-1.pth: "
                                            f"No space left on device (")
        assert "free on its file system" in last
        assert [r["epoch"] for r in read_log(mnt)] == [0, 1]
        assert sorted(n for n in os.listdir(mnt) if n.startswith("checkpoint")) == \
            ["checkpoint-0.pth", "checkpoint-latest.pth"]  # the rolling one: a hard link
        assert os.path.samefile(mnt / "checkpoint-0.pth", mnt / "checkpoint-latest.pth")
        assert torch.load(mnt / "checkpoint-0.pth", weights_only=True)["epoch"] == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------------------------------------
# 4. flags outside their range: one line naming the flag, before any model is built
# ---------------------------------------------------------------------------------------------

def _no_models(monkeypatch):
    def built(*a, **k):
        raise AssertionError("a model was built before the flags were checked")
    for module, names in ((rmp, ("create_student", "create_teacher")),
                          (rcf, ("create_classifier",))):
        for name in names:
            monkeypatch.setattr(module, name, built)


BAD_FLAGS = [  # (script, flag, value, allowed)
    ("pretrain", "lr", "-1", "> 0"), ("finetune", "lr", "-1", "> 0"),
    ("pretrain", "sampling_rate", "0", ">= 1"), ("finetune", "sampling_rate", "0", ">= 1"),
    ("pretrain", "num_frames", "0", ">= 1"), ("finetune", "num_frames", "0", ">= 1"),
    ("pretrain", "input_size", "0", ">= 1"), ("finetune", "input_size", "0", ">= 1"),
    ("pretrain", "num_k", "-3", ">= 1"), ("pretrain", "num_k", "0", ">= 1"),
    ("pretrain", "num_f", "0", ">= 1"), ("finetune", "nb_classes", "0", ">= 1"),
    ("mae", "sampling_rate", "0", ">= 1"), ("mae", "decoder_depth", "-1", ">= 0"),
    # siblings with the same holes
    ("pretrain", "lr", "nan", "> 0"), ("pretrain", "batch_size", "0", ">= 1"),
    ("pretrain", "kd_T", "0", "> 0"), ("pretrain", "temperature_t", "-0.05", "> 0"),
    ("pretrain", "mask_ratio", "1.0", "in [0, 1)"), ("pretrain", "gamma", "-1", ">= 0"),
    ("pretrain", "weight_decay", "-0.05", ">= 0"), ("pretrain", "warmup_epochs", "-2", ">= 0"),
    ("pretrain", "seed", "-1", "in [0, 4294967295]"), ("pretrain", "num_workers", "-1", ">= 0"),
    ("finetune", "epochs", "0", ">= 1"), ("finetune", "update_freq", "0", ">= 1"),
    ("finetune", "min_lr", "-1e-6", ">= 0"), ("finetune", "clip_grad", "0", "> 0"),
    ("finetune", "layer_decay", "0", "in (0, 1]"), ("finetune", "smoothing", "1", "in [0, 1)"),
    ("finetune", "drop_path", "1.5", "in [0, 1)"), ("finetune", "reprob", "2", "in [0, 1]"),
    ("finetune", "mixup", "-0.8", ">= 0"), ("finetune", "num_sample", "0", ">= 1"),
    ("finetune", "test_num_segment", "0", ">= 1"), ("finetune", "short_side_size", "0", ">= 1"),
    ("finetune", "save_ckpt_freq", "0", ">= 1"), ("finetune", "lr", "inf", "> 0"),
]


@pytest.mark.parametrize("script, flag, value, allowed", BAD_FLAGS)
def test_bad_flag_one_line_before_any_model(script, flag, value, allowed, data, tmp_path,
                                            monkeypatch):
    _no_models(monkeypatch)
    run = {"pretrain": pretrain, "finetune": finetune,
           "mae": lambda *a: pretrain(*a, teacher=False)}[script]
    msg = exit_message(run, data, f"--{flag}={value}", "--output_dir", str(tmp_path / "o"))
    assert f"--{flag} must be {allowed}, got " in msg
    assert not os.path.exists(tmp_path / "o")  # stopped before it touched the output


def test_every_bad_flag_in_one_line_and_the_exit_status():
    res = run_script("run_mmkd_pretraining.py", ["--data_path", "x.csv", "--num_k", "0",
                                                  "--num_f", "0", "--lr", "-1"])
    assert_one_line_failure(res, "--lr must be > 0, got -1.0",
                            "--num_k must be >= 1, got 0", "--num_f must be >= 1, got 0")


def _tool_defaults():
    import extract_features
    import run_mvd_pretraining
    import run_frozen_eval
    import run_vis
    return [vars(run_frozen_eval.get_args_parser().parse_args(["--probe", "knn", "--data_path",
                                                               "x"])),
            vars(rmp.get_args_parser().parse_args(["--data_path", "x"])),
            vars(rmp.get_args_parser(teacher=False).parse_args(["--data_path", "x"])),
            vars(run_mvd_pretraining.get_args_parser().parse_args(["--data_path", "x"])),
            vars(rcf.get_args_parser().parse_args(["--data_path", "x"])),
            vars(extract_features.get_args_parser().parse_args(["--checkpoint", "c", "--videos",
                                                                "v", "--output", "o"])),
            vars(run_vis.get_args_parser().parse_args(["v.mp4", "out"])),
            vars(convert_checkpoint.get_args_parser().parse_args(
                ["to-hf", "--checkpoint", "c", "--model", "vit_tiny_patch16_224",
                 "--output_dir", "o"]))]


def test_every_flag_in_the_table_exists_and_defaults_pass():
    """The table names real flags (a typo would check nothing), and every default passes."""
    defaults = _tool_defaults()
    known = set().union(*defaults)
    assert set(FLAG_RANGES) <= known, set(FLAG_RANGES) - known
    for d in defaults:
        assert flag_errors(argparse.Namespace(**d)) == []


def _features_flag(tmp_path, flag):
    import extract_features
    extract_features.main(["--checkpoint", "c.pth", "--videos", "v.mp4", "--output",
                           str(tmp_path / "f.pt"), flag])


def _vis_flag(tmp_path, flag):
    import run_vis
    run_vis.main(run_vis.get_args_parser().parse_args(["v.mp4", str(tmp_path / "v"), flag]))


def _probe_flag(tmp_path, flag):
    import run_frozen_eval
    run_frozen_eval.main(run_frozen_eval.get_args_parser().parse_args(
        ["--probe", "knn", "--data_path", str(tmp_path), flag]))


@pytest.mark.parametrize("tool, flag, message", [
    (_probe_flag, "--knn_k=0", "--knn_k must be >= 1, got 0"),
    (_features_flag, "--num_segments=0", "--num_segments must be >= 1, got 0"),
    (_features_flag, "--batch_size=0", "--batch_size must be >= 1, got 0"),
    (_vis_flag, "--kd_T=0", "--kd_T must be > 0, got 0.0"),
    (_vis_flag, "--num_k=0", "--num_k must be >= 1, got 0"),
    (lambda t, f: convert_checkpoint.cli(["to-hf", "--checkpoint", "c.pth", "--model",
                                          "vit_tiny_patch16_224", "--output_dir", str(t), f]),
     "--nb_classes=0", "--nb_classes must be >= 1, got 0"),
])
def test_bad_flag_in_the_other_tools(tool, flag, message, tmp_path):
    assert message in exit_message(tool, tmp_path, flag)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write: permissions for a normal user; for root (which ignores
    them) a read-only tmpfs, skipped where root may not mount."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield str(d)
        d.chmod(0o755)
        return
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"root without the right to mount a read-only tmpfs: {res.stderr.strip()}")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
@pytest.mark.parametrize("sub", ["", "new"])
@pytest.mark.parametrize("flag", ["--output_dir", "--log_dir"])
def test_read_only_output_dir(script, sub, flag, read_only_dir, data, tmp_path, monkeypatch):
    _no_models(monkeypatch)
    target = os.path.join(read_only_dir, sub) if sub else read_only_dir
    extra = [flag, target] if flag == "--output_dir" else [
        "--output_dir", str(tmp_path / "o"), flag, target]
    msg = exit_message(pretrain if script == "pretrain" else finetune, data, *extra)
    assert f"{flag} {target} is not writable (" in msg


# ---------------------------------------------------------------------------------------------
# 5. bad files
# ---------------------------------------------------------------------------------------------

def _bom(path, text):
    with open(path, "w", encoding="utf-8-sig") as f:
        f.write(text)
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf"
    return str(path)


def _read_pretrain(tmp_path):
    from datasets import read_annotation
    path = _bom(tmp_path / "a.csv", f"{CLIPS[0]} 0\n{CLIPS[1]} 1\n")
    return read_annotation(path, VIDEOS, check_exists=True)[0][0]


def _read_classification(tmp_path):
    from datasets import VideoClsDataset
    path = _bom(tmp_path / "a.csv", f"{CLIPS[0]} 0\n{CLIPS[1]} 1\n")
    return VideoClsDataset(path, VIDEOS, mode="validation", nb_classes=2, num_frames=4,
                           input_size=32, short_side_size=32).samples[0][0]


def _validate(tmp_path):
    from datasets.annotations import validate_annotation
    path = _bom(tmp_path / "a.csv", f"{CLIPS[0]} 0\n")
    report = validate_annotation(path, VIDEOS, num_frames=2, sampling_rate=1)
    assert report.ok, report.errors
    return os.path.join(VIDEOS, report.clean_lines[0].split()[0])


def _k400(tmp_path):
    from datasets.annotations import convert_k400
    path = _bom(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\n"
                                     "abseiling,abc,1,11,train\n")
    return convert_k400(path)[0][0][0]


def _ucf_classes(tmp_path):
    from datasets.annotations import convert_ucf101
    classes = _bom(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n")
    split = _bom(tmp_path / "trainlist01.txt", "ApplyEyeMakeup/v_a.avi 1\n")
    return convert_ucf101(classes, split)[1][0]


BOM_READERS = {
    "pre-training annotation": (_read_pretrain, os.path.join(VIDEOS, CLIPS[0])),
    "fine-tuning annotation": (_read_classification, os.path.join(VIDEOS, CLIPS[0])),
    "validate": (_validate, os.path.join(VIDEOS, CLIPS[0])),
    "Kinetics-400 csv": (_k400, "abc_000001_000011.mp4"),
    "UCF101 classInd": (_ucf_classes, "ApplyEyeMakeup"),
}


@pytest.mark.parametrize("reader", sorted(BOM_READERS))
def test_byte_order_mark_is_not_part_of_the_first_line(reader, tmp_path):
    read, first = BOM_READERS[reader]
    assert read(tmp_path) == first


def test_byte_order_mark_annotation_trains(data, tmp_path):
    anno = _bom(tmp_path / "train.csv", open(data["pre"]).read())
    out = str(tmp_path / "out")
    pretrain({"pre": anno}, "--output_dir", out)
    log = read_log(out)
    assert log[0]["train_skipped_videos"] == 0 and log[0]["train_clips"] == 4


def _truncated(path):
    torch.save({"model": classifier_state()}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _runs_code(path):
    torch.save({"model": {"x": torch.zeros(1)}, "args": RunsCode(str(path) + ".ran")}, path)


def _empty(path):
    open(path, "wb").close()


BROKEN = {"truncated": _truncated, "runs code": _runs_code, "empty": _empty}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("command", ["inspect", "to-hf"])
def test_converter_load_errors_are_one_line(command, kind, tmp_path):
    path = str(tmp_path / "c.pth")
    BROKEN[kind](path)
    argv = ["inspect", path] if command == "inspect" else [
        *TO_HF, "--checkpoint", path, "--output_dir", str(tmp_path / "hf")]
    msg = exit_message(convert_checkpoint.cli, argv)
    assert path in msg
    assert not os.path.exists(path + ".ran")


@pytest.mark.parametrize("problem", ["missing", "empty directory", "not a checkpoint layout",
                                     "does not fit"])
def test_converter_other_errors_name_the_file_without_a_traceback(problem, tmp_path):
    path = str(tmp_path / "c.pth")
    if problem == "empty directory":
        os.makedirs(path)
    elif problem == "not a checkpoint layout":
        torch.save({"model": {"weird.key": torch.zeros(2)}}, path)
    elif problem == "does not fit":  # a classifier of 3 classes read as one of 5
        torch.save({"model": classifier_state()}, path)
    fit = ["--nb_classes", "5"] if problem == "does not fit" else []  # the last one counts
    with pytest.raises(SystemExit) as e:  # not exit_message: a mismatch takes a line per kind
        convert_checkpoint.cli([*TO_HF, "--checkpoint", path, "--output_dir",
                                str(tmp_path / "hf"), *fit])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and path in msg and "Traceback" not in msg


def test_converter_exit_status_and_stderr(tmp_path):
    path = str(tmp_path / "c.pth")
    _truncated(path)
    res = run_script("tools/convert_checkpoint.py", ["inspect", path])
    assert_one_line_failure(res, path)


def _two_checkpoints(out):
    for epoch in (0, 1):
        checkpoint.save_checkpoint(os.path.join(out, f"checkpoint-{epoch}.pth"),
                                   {"model": {"w": torch.full((2,), float(epoch))},
                                    "epoch": epoch})


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(kind, tmp_path, capsys):
    out = str(tmp_path)
    _two_checkpoints(out)
    newest = os.path.join(out, "checkpoint-1.pth")
    BROKEN[kind](newest)
    path, ckpt = load_resume_checkpoint("", out)
    assert path == os.path.join(out, "checkpoint-0.pth") and ckpt["epoch"] == 0
    warning = capsys.readouterr().out.strip()
    assert warning.startswith(f"warning: skipping checkpoint {newest}, which does not load")
    assert "\n" not in warning and not os.path.exists(newest + ".ran")
    path, _ = load_resume_checkpoint(out, "", auto_resume=False)  # --resume of the run dir
    assert path.endswith("checkpoint-0.pth")
    BROKEN[kind](os.path.join(out, "checkpoint-0.pth"))
    with pytest.raises(ValueError, match=f"none of the 2 checkpoints in {out} loads"):
        load_resume_checkpoint("", out)
    with pytest.raises(ValueError, match="checkpoint-1.pth"):  # an explicit file: no fallback
        load_resume_checkpoint(newest, "")


def test_deepspeed_candidates_stop_at_latest(tmp_path):
    """Tag directories newer than ``latest`` are unfinished saves; older ones are fallbacks."""
    for tag in ("checkpoint-0", "checkpoint-1", "checkpoint-2"):
        (tmp_path / tag).mkdir()
    assert checkpoint_candidates(str(tmp_path)) == []  # no save finished
    (tmp_path / "latest").write_text("checkpoint-1")
    assert checkpoint_candidates(str(tmp_path)) == [str(tmp_path / "checkpoint-1"),
                                                   str(tmp_path / "checkpoint-0")]


def test_auto_resume_falls_back_past_a_truncated_checkpoint(data, tmp_path, capsys):
    """A run killed while its newest checkpoint was half-written (as a copy that is not
    atomic would leave it) resumes from the one before."""
    out = str(tmp_path / "out")
    pretrain(data, "--output_dir", out)
    newest = os.path.join(out, "checkpoint-1.pth")
    _truncated(newest)
    pretrain(data, "--epochs", "2", "--output_dir", out)
    text = capsys.readouterr().out
    assert f"warning: skipping checkpoint {newest}, which does not load" in text
    assert "checkpoint-0.pth: epoch 0 done" in text
    assert [r["epoch"] for r in read_log(out)] == [0, 1]
    assert torch.load(newest, weights_only=True)["epoch"] == 1  # rewritten whole


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_resume_of_an_empty_directory(script, data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = exit_message(pretrain if script == "pretrain" else finetune, data, "--resume",
                       str(empty), "--output_dir", str(tmp_path / "o"))
    assert f"--resume {empty} is an empty directory" in msg
