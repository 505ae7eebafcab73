"""Process-group start-up in one place: ``torchrun`` (env://), SLURM ``srun`` and single
process runs; NCCL on CUDA, gloo on CPU. Plus the few collective helpers the engines use.
"""
import os
import subprocess

import torch
import torch.distributed as dist


def _first_slurm_host(nodelist):
    """First host name of a SLURM node list such as ``gpu[01-04,07],cpu1`` (``gpu01``)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=10).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:  # gpu[01-04 -> gpu01
        prefix, rng = head.split("[", 1)
        return prefix + rng.split("-")[0].split(",")[0].rstrip("]")
    return head


def dist_env(environ=None):
    """``(rank, world_size, local_rank, master_addr, master_port)`` from the environment, or
    None for a single-process run. torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` win over
    SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (first host of
    ``SLURM_NODELIST`` as master, ``MASTER_PORT`` or 29500 as port)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return (int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        return (int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1")),
                int(env.get("MASTER_PORT", 29500)))
    return None


def init_distributed_mode(args):
    """Start the process group if the environment asks for one; sets ``args.distributed``,
    ``args.rank``, ``args.world_size``, ``args.gpu`` (local rank) and, on CUDA, the device.
    Only rank 0 prints afterwards."""
    found = dist_env()
    if found is None:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.rank, args.world_size, args.gpu, addr, port = found
    args.distributed = True
    os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(args.world_size),
                      LOCAL_RANK=str(args.gpu), MASTER_ADDR=addr, MASTER_PORT=str(port))
    use_cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                            world_size=args.world_size, rank=args.rank)
    dist.barrier()
    if args.rank != 0:
        import builtins
        builtins.print = lambda *a, **k: None


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def all_reduce_mean(values, device="cpu"):
    """Average a ``{name: float}`` dict over processes (identity on one process)."""
    if not is_dist() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / get_world_size() for k, v in zip(keys, t.tolist())}


def all_reduce_sum(value, device="cpu"):
    """Sum a number over processes."""
    if not is_dist():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()
