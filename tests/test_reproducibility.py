"""RNG states in checkpoints: saved as tensors and numbers, loaded with weights_only=True,
restored so that every stream continues where it was."""
import random

import numpy as np
import torch

from reproducibility import all_rng_states, resume_rng_state, rng_state, set_rng_state


def draws():
    return torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1)


def same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.randn()  # numpy keeps a cached Gaussian: part of the state
    random.gauss(0, 1)
    path = tmp_path / "rng.pth"
    torch.save({"rng_states": all_rng_states()}, path)
    expect = draws()
    assert not same(expect, draws())  # the streams moved on
    states = torch.load(path, weights_only=True)["rng_states"]
    assert resume_rng_state(states, rank=0)
    assert same(draws(), expect)
    assert not resume_rng_state(states, rank=1) and not resume_rng_state(None)


def test_states_are_plain_tensors_and_numbers():
    state = rng_state()
    keys = state["numpy"]["keys"]
    assert isinstance(keys, torch.Tensor) and keys.numel() == 624
    assert isinstance(state["python"]["state"], torch.Tensor)
    set_rng_state(state)
