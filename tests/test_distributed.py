"""Process-group start-up from fake torchrun / SLURM environments (no cluster needed)."""
import socket
from types import SimpleNamespace

import pytest
import torch.distributed as dist

import distributed as du
from distributed import _first_slurm_host, dist_env

SRUN = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
        "SLURM_NODELIST": "gpu[01-04]", "SLURM_JOB_ID": "123456"}


@pytest.fixture(autouse=True)
def no_scontrol(monkeypatch):
    """Exercise our own node-list parsing even on a machine with SLURM installed."""
    def fail(*a, **k):
        raise OSError("no scontrol")
    monkeypatch.setattr(du.subprocess, "run", fail)


def test_single_process_environments():
    assert dist_env({}) is None
    assert dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_NODELIST": "gpu01"}) is None
    # sbatch with --ntasks 8 but python started directly (no srun step of 8 tasks)
    assert dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_torchrun_environment_wins_over_slurm():
    env = dict(SRUN, RANK="3", WORLD_SIZE="8", LOCAL_RANK="3", MASTER_ADDR="10.0.0.2",
               MASTER_PORT="29501")
    assert dist_env(env) == (3, 8, 3, "10.0.0.2", 29501)
    assert dist_env({"RANK": "0", "WORLD_SIZE": "2"}) == (0, 2, 0, "127.0.0.1", 29500)


def test_srun_environment():
    assert dist_env(SRUN) == (5, 16, 1, "gpu01", 20000 + 123456 % 20000)
    assert dist_env(dict(SRUN, MASTER_PORT="12345"))[4] == 12345
    assert dist_env(dict(SRUN, MASTER_ADDR="head"))[3] == "head"
    # the step's own task count and node list take precedence over the job's
    step = dict(SRUN, SLURM_STEP_NUM_TASKS="8", SLURM_STEP_NODELIST="gpu[03-04]")
    assert dist_env(step)[1:4] == (8, 1, "gpu03")
    assert dist_env({k: v for k, v in SRUN.items() if k != "SLURM_JOB_ID"})[4] == 29500


@pytest.mark.parametrize("nodes, first", [
    ("gpu[01-04]", "gpu01"), ("gpu[07,01-04],cpu1", "gpu07"), ("node12,node13", "node12"),
    ("rack[2-3]-n[08-09]", "rack2-n08"), ("a100-[003-004]", "a100-003"), ("single", "single"),
])
def test_first_slurm_host(nodes, first):
    assert _first_slurm_host(nodes) == first


def test_init_distributed_mode_one_process_gloo(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    args = SimpleNamespace(device="cpu")
    du.init_distributed_mode(args)
    try:
        assert args.distributed and (args.rank, args.world_size, args.gpu) == (0, 1, 0)
        assert du.is_dist() and du.get_world_size() == 1 and du.is_main_process()
        assert du.all_reduce_mean({"loss": 2.0}) == {"loss": 2.0}
    finally:
        dist.destroy_process_group()
