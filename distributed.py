"""Process-group start-up in one place: ``torchrun`` (env://), SLURM ``srun`` and single
process runs; NCCL on CUDA, gloo on CPU. Plus the few collective helpers the engines use.
"""
import os
import re
import subprocess

import torch
import torch.distributed as dist


def _first_slurm_host(nodelist):
    """First host name of a SLURM node list: ``gpu[01-04,07],cpu1`` -> ``gpu01``,
    ``rack[2-3]-n[08-09]`` -> ``rack2-n08``. Asks ``scontrol show hostnames`` when it is
    there, else expands the first entry itself (each ``[...]`` -> its first number)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=10).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist)  # up to the first top-level comma
    head = first.group(0) if first else nodelist
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", head)


def _slurm_port(env):
    """``MASTER_PORT``, else a port derived from ``SLURM_JOB_ID`` (two jobs sharing a node
    do not collide; every task of one job computes the same), else 29500."""
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID", "")
    return 20000 + int(job) % 20000 if job.isdigit() else 29500


def dist_env(environ=None):
    """``(rank, world_size, local_rank, master_addr, master_port)`` from the environment, or
    None for a single-process run.

    torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` win.
    Under ``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``),
    ``SLURM_LOCALID``, master = ``MASTER_ADDR`` or the first host of ``SLURM_STEP_NODELIST``
    (or ``SLURM_NODELIST``), port = :func:`_slurm_port`. One SLURM task = single process.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return (int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if "SLURM_PROCID" in env and ntasks > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return (int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)),
                env.get("MASTER_ADDR") or _first_slurm_host(nodes), _slurm_port(env))
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
    if use_cuda:  # modulo: SLURM may bind one GPU per task (each task then sees only device 0)
        args.gpu %= torch.cuda.device_count()
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, init_method="env://", world_size=args.world_size,
                            rank=args.rank)
    print(f"distributed: rank {args.rank} of {args.world_size}, {backend} on {args.device}, "
          f"master {addr}:{port}", flush=True)
    dist.barrier()
    if args.rank != 0:
        import builtins
        builtins.print = lambda *a, **k: None


def shutdown():
    """Leave the process group at the end of a run: every rank waits for the others, then
    the group is destroyed (without it gloo's threads can abort the interpreter at exit)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


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


def every_rank(flag, device="cpu"):
    """True when ``flag`` is True on every process. Training loops ask this before a step so
    that a process whose batch held only corrupted clips never leaves the others waiting in
    DDP's gradient all-reduce: all skip that step together."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_from_main(value):
    """Rank 0's ``value`` (any picklable object) on every process; ``value`` itself when
    not distributed."""
    if not is_dist():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value, device="cpu"):
    """Sum a number over processes."""
    if not is_dist():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def add_run_args(parser):
    """Flags every training script shares: workers, output, device, seed, resuming, and the
    launcher flags older scripts pass (accepted; the values come from the environment)."""
    import argparse
    a = parser.add_argument
    a("--num_workers", type=int, default=10)
    a("--pin_mem", action=argparse.BooleanOptionalAction, default=True)
    a("--output_dir", default="", help="checkpoints, log.json, args.json")
    a("--log_dir", default=None, help="tensorboard directory")
    a("--device", default="cuda")
    a("--seed", type=int, default=0)
    a("--resume", default="", help="checkpoint to resume from")
    a("--auto_resume", action=argparse.BooleanOptionalAction, default=True,
      help="resume from the newest checkpoint in --output_dir")
    a("--start_epoch", type=int, default=0)
    a("--recipe", default=None, metavar="NAME", help="the published recipe (recipes.RECIPES) "
      "this run reproduces; the zoo scripts pass it: differences are printed and recorded")
    a("--save_latest_minutes", type=float, default=0,
      help="also replace checkpoint-latest.pth every this many minutes within an epoch (0: at "
      "epoch ends only); a kill without a signal loses at most this much (run_state.py)")
    a("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    a("--dist_url", default="env://", help=argparse.SUPPRESS)
    a("--world_size", type=int, default=1, help=argparse.SUPPRESS)
