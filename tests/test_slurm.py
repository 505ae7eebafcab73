"""The SLURM path against a real cluster: a private one-node ``slurmctld`` + ``slurmd`` (and
``munged``) from Debian's ``slurm-wlm`` and ``munge``, configured in a temporary directory,
2 tasks, gloo, the bundled clips, tiny models. ``sbatch`` and ``bash`` launches of the zoo
scripts; a stop by ``scancel --signal=USR1`` and by a time limit's ``--signal`` in the middle of
an epoch, each followed by a requeue and a resume whose final weights equal an
uninterrupted run's; fine-tuning requeued mid-epoch with the same multi-view test.

Skipped, with the reason, where the daemons cannot be had (not root, packages missing, the
daemons do not come up). A requeued job is held for 120 s by SLURM before it may start
again; the tests release it at once (``scontrol update StartTime=now``), as an admin can.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ROOT, VIDEOS
from test_finetuning import DIST_CLIPS, _anno_dir

pytestmark = pytest.mark.slurm
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel")
PRETRAIN_CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
                  "short_clip_part0.mp4", "ava_style_demo.mp4"] * 2  # 10 -> 5 updates per epoch
KD = ["--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
      "pretrain_videomae_tiny_patch16_224", "--path_t", "", "--input_size", "32",
      "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "1", "--mask_ratio", "0.5",
      "--num_k", "1", "--num_f", "2", "--epochs", "2", "--warmup_epochs", "0",
      "--save_ckpt_freq", "5", "--device", "cpu", "--num_workers", "0"]
FT = ["--model", "vit_tiny_patch16_224", "--finetune", "", "--data_set", "UCF101",
      "--nb_classes", "3", "--input_size", "32", "--short_side_size", "40", "--num_frames", "4",
      "--batch_size", "1", "--epochs", "1", "--warmup_epochs", "0", "--test_num_segment", "2",
      "--test_num_crop", "1", "--save_ckpt_freq", "5", "--device", "cpu", "--num_workers", "0",
      "--drop_path", "0.1"]
SHAPE = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]  # and SBATCH_GRES=none


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable():
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root here"
    return None


def _conf(d, host):
    return f"""ClusterName=test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``env`` for SLURM commands on a private cluster; its daemons (by PID) stop after."""
    reason = _unavailable()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    d = str(tmp_path_factory.mktemp("slurm"))
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(d, sub))
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(d, "slurm.conf"), "w") as f:
        f.write(_conf(d, host))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(SLURM_CONF=os.path.join(d, "slurm.conf"), PYTHONPATH=ROOT)
    subprocess.run(["mungekey", "-c", "-f", "-k", f"{d}/munge.key"], check=True,
                   capture_output=True)
    os.chmod(f"{d}/munge.key", 0o600)
    log = open(os.path.join(d, "daemons.out"), "w")
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
             f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
             f"--seed-file={d}/munge.seed"], stdout=log, stderr=log))
        time.sleep(0.5)
        procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", env["SLURM_CONF"]],
                                      stdout=log, stderr=log, env=env))
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", env["SLURM_CONF"]],
                                      stdout=log, stderr=log, env=env))
        state = ""
        for _ in range(60):
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead:
                break
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                   text=True, env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            tail = open(os.path.join(d, "daemons.out")).read()[-300:]
            pytest.skip(f"the SLURM daemons did not come up (node state {state!r}, exited: "
                        f"{dead}): {tail}")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def job_fields(env, job):
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], capture_output=True,
                         text=True, env=env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(env, job, timeout=240, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")):
    """Poll job ``job`` to one of ``until``; a requeued job held by SLURM (``BeginTime``) is
    released at once with a time limit that leaves it room. Returns its fields."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        f = job_fields(env, job)
        if f.get("JobState") in until:
            return f
        if f.get("JobState") == "PENDING" and f.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now",
                            "TimeLimit=10"], env=env, capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {job_fields(env, job).get('JobState')} after "
                         f"{timeout} s")


def wait_file(env, job, path, timeout=180):
    """Wait for ``path`` (the pause helper's mark) while job ``job`` runs."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        state = job_fields(env, job).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING") and time.monotonic() < end, \
            f"job {job} is {state} and {path} never appeared"
        time.sleep(0.2)


def python_wrapper(tmp):
    """A ``PYTHON`` for launch.sh that runs the script through tests/pause_at_update.py."""
    path = os.path.join(tmp, "python")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\n[ "$1" = -u ] && shift\nexec {sys.executable} -u '
                f'{ROOT}/tests/pause_at_update.py "$@"\n')
    os.chmod(path, 0o755)
    return path


def sbatch(env, script, out, flags, *options, **extra_env):
    res = subprocess.run(["sbatch", "--parsable", *SHAPE, f"--output={out}/slurm-%j.out",
                          *options, f"scripts/{script}", *flags], cwd=ROOT,
                         env=dict(env, SBATCH_GRES="none", **extra_env), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip().split(";")[0])


def kd_flags(data, out):
    return [*KD, "--data_path", data, "--data_root", VIDEOS, "--output_dir", out,
            "--log_dir", out]


def final_weights(out, name="checkpoint-1.pth"):
    return load_checkpoint(os.path.join(out, name))["model"]


def assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def epochs_logged(out):
    return [json.loads(line)["epoch"] for line in open(os.path.join(out, "log.json"))]


@pytest.fixture(scope="module")
def kd_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("kd_data")
    (d / "train.csv").write_text("".join(f"{c} 0\n" for c in PRETRAIN_CLIPS))
    return str(d / "train.csv")


@pytest.fixture(scope="module")
def kd_runs(cluster, kd_data, tmp_path_factory):
    """Three distillation runs at once (their waits overlap): ``bash
    scripts/kd_base_k400_slurm.sh myjob ...`` from the login node (srun allocates 2 tasks,
    GPUS=2, GRES=none; uninterrupted), and two ``sbatch`` runs paused at update 7 (epoch 1,
    update 2 of 5) until a stop signal: ``scancel --signal=USR1``, and SLURM's own warning
    before a time limit (``--time=1 --signal=USR1@50``; SLURM may send it up to a minute
    early, so that run stops wherever the signal lands). Returns ``{name: (out, job or
    CompletedProcess, text)}`` once all have ended."""
    tmp = str(tmp_path_factory.mktemp("kd"))
    outs = {n: os.path.join(tmp, n) for n in ("baseline", "scancel", "time_limit")}
    for out in outs.values():
        os.makedirs(out)
    wrapper = python_wrapper(tmp)
    env = dict(cluster, GPUS="2", GRES="none", CPUS_PER_TASK="1", PYTHON=wrapper)
    base = subprocess.Popen(["bash", "scripts/kd_base_k400_slurm.sh", "myjob",
                             *kd_flags(kd_data, outs["baseline"])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pause = {n: os.path.join(tmp, f"{n}.paused") for n in ("scancel", "time_limit")}
    jobs = {n: sbatch(cluster, "kd_base_k400_slurm.sh", outs[n], kd_flags(kd_data, outs[n]),
                      *options, PYTHON=wrapper, PAUSE_AT_UPDATE="7", PAUSE_FILE=pause[n])
            for n, options in (("scancel", ()), ("time_limit", ("--time=1", "--signal=USR1@50")))}
    wait_file(cluster, jobs["scancel"], pause["scancel"])
    subprocess.run(["scancel", "--signal=USR1", str(jobs["scancel"])], env=cluster, check=True)
    runs = {}
    for n, job in jobs.items():
        f = wait_for(cluster, job)
        runs[n] = (outs[n], f, open(os.path.join(outs[n], f"slurm-{job}.out")).read())
    text, _ = base.communicate(timeout=300)
    runs["baseline"] = (outs["baseline"], base.returncode, text)
    return runs


def test_bash_launch_from_a_login_node_with_a_job_name(cluster, kd_runs):
    out, rc, text = kd_runs["baseline"]
    assert rc == 0, text[-3000:]
    assert "distributed: rank 0 of 2, gloo on cpu" in text
    assert epochs_logged(out) == [0, 1]
    jobs = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                          env=cluster).stdout
    assert re.search(r"JobName=myjob .*JobState=COMPLET(ED|ING) .*ExitCode=0:0", jobs), jobs[-1000:]


@pytest.mark.parametrize("name, where", [("scancel", "epoch 1 after 2 of 5 updates"),
                                         ("time_limit", "epoch [01] after [1-5] of 5 updates")])
def test_sbatch_stopped_mid_epoch_requeues_and_resumes_exactly(kd_runs, name, where):
    """``sbatch scripts/kd_base_k400_slurm.sh`` completes after a stop in the middle of an
    epoch, a checkpoint, a requeue and a resume; final weights and losses equal the
    uninterrupted run's, each epoch logged once."""
    out, f, text = kd_runs[name]
    assert f["JobState"] == "COMPLETED" and int(f["Restarts"]) >= 1, (f, text[-3000:])
    # both runs' output in one file (--open-mode=append); the stop saved, requeued, resumed
    assert "stopped by SIGUSR1" in text and f"SLURM job {f['JobId']} requeued" in text, \
        text[-3000:]
    assert re.search(f"resumed from .*checkpoint-latest.pth: {where}", text), text[-3000:]
    assert epochs_logged(out) == [0, 1]
    base = kd_runs["baseline"][0]
    assert_equal_weights(final_weights(base), final_weights(out))
    losses = lambda d: [json.loads(line)["train_loss"]  # noqa: E731
                        for line in open(os.path.join(d, "log.json"))]
    assert losses(base) == losses(out)


def test_finetuning_requeued_mid_epoch_same_multiview_test(cluster, tmp_path):
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS, [0, 1, 2, 0, 1])
    with open(os.path.join(data, "train.csv"), "a") as f:  # 8 clips: 4 updates per epoch
        f.write("".join(f"{c} {y}\n" for c, y in zip(DIST_CLIPS, [0, 1, 2])))
    flags = lambda out: [*FT, "--data_path", data, "--data_root", VIDEOS,  # noqa: E731
                         "--output_dir", out, "--log_dir", out]
    runs = {}
    for name in ("straight", "stopped"):
        out = str(tmp_path / name)
        os.makedirs(out)
        pause = str(tmp_path / f"{name}.paused")
        extra = dict(PAUSE_AT_UPDATE="2", PAUSE_FILE=pause) if name == "stopped" else {}
        runs[name] = (out, sbatch(cluster, "finetune_small_ucf_slurm.sh", out, flags(out),
                                  PYTHON=python_wrapper(str(tmp_path)), **extra), pause)
    out, job, pause = runs["stopped"]
    wait_file(cluster, job, pause)
    subprocess.run(["scancel", "--signal=USR1", str(job)], env=cluster, check=True)
    for name, (out, job, _) in runs.items():
        f = wait_for(cluster, job)
        text = open(os.path.join(out, f"slurm-{job}.out")).read()
        assert f["JobState"] == "COMPLETED", (f, text[-3000:])
        assert int(f["Restarts"]) == (name == "stopped"), f
    (a, _, _), (b, _, _) = runs["straight"], runs["stopped"]
    sa, sb = (json.load(open(os.path.join(d, "test_summary.json"))) for d in (a, b))
    assert sa["top1"] == sb["top1"] and sa["num_views"] == sb["num_views"] == 10
    assert (open(os.path.join(a, "predictions.csv")).read()
            == open(os.path.join(b, "predictions.csv")).read())
    assert epochs_logged(b) == [0]
    assert_equal_weights(final_weights(a, "checkpoint-0.pth"),
                         final_weights(b, "checkpoint-0.pth"))
