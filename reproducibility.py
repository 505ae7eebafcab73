"""Same seed, same numbers: the random-number state a checkpoint carries, so that a resumed
run continues the streams of the run it resumes.

What a run draws, and from where:

- data: every item from ``(seed, epoch, index)`` (``datasets.sampling.EpochSeed``) and the
  order of an epoch from ``(seed, epoch)`` (``DistributedSampler.set_epoch``, also on one
  process): nothing to store but the epoch;
- model and loss (drop path, dropout, Mixup/CutMix): the global torch (CPU and CUDA), numpy
  and Python RNGs of each process, which :func:`rng_state` captures after an epoch and
  :func:`set_rng_state` restores on resume.

The states are stored as tensors, lists and numbers only, so a checkpoint holding them still
loads with ``torch.load(..., weights_only=True)`` (numpy's state as an int64 tensor, not an
``np.ndarray``). Floating-point results on a CPU also depend on the number of threads (the
summation order): ``scripts/launch.sh`` and ``scripts/demo.sh`` fix it (``OMP_NUM_THREADS``)
and turn off MKL's and OpenMP's dynamic thread counts (``MKL_DYNAMIC``, ``OMP_DYNAMIC``),
which may otherwise run fewer threads on a busy machine.
"""
import random

import numpy as np
import torch
import torch.distributed as dist


def rng_state():
    """This process's global RNG states: ``{'torch', 'cuda', 'numpy', 'python'}``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss_next}}


def set_rng_state(state):
    """Restore the states of :func:`rng_state` (CUDA's where this process has CUDA)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def all_rng_states():
    """:func:`rng_state` of every process, by rank (a list of one without a process group).
    A collective: every rank must call it."""
    own = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [own]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states


def resume_rng_state(states, rank=0):
    """Restore this rank's entry of a checkpoint's ``rng_states`` (from
    :func:`all_rng_states`); returns False (nothing restored) for a checkpoint without them
    or written by fewer processes."""
    if not states or rank >= len(states):
        return False
    set_rng_state(states[rank])
    return True
