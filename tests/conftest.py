"""Shared test set-up: the repo root on sys.path, where the bundled real clips live, a
fixture that makes ViT-Ti two blocks deep, and the ``cuda`` marker: tests that need a CUDA
device are marked ``@pytest.mark.cuda`` and skipped where none is visible (``pytest -m cuda``
runs only them; ``benchmarks/gpu_check.sh`` does)."""
import contextlib
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
VIDEOS = os.path.join(ROOT, "tests", "data", "videos")


@contextlib.contextmanager
def killed_after_saving(epoch):
    """While active, ``run_state``'s write of the checkpoint of ``epoch`` is followed by a
    ``KeyboardInterrupt``: a run killed right after that save, for resume tests."""
    import run_state
    real = run_state.save_checkpoint

    def save(path, state):
        real(path, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt
    run_state.save_checkpoint = save
    try:
        yield
    finally:
        run_state.save_checkpoint = real


@contextlib.contextmanager
def linear_output_dtypes(**modules):
    """While active, record the dtype of every ``nn.Linear`` output inside each named module
    (``name=module``): yields ``{name: set of dtypes}``, filled as the modules run. Tells
    whether a forward really ran under autocast, which a finite loss cannot."""
    seen = {name: set() for name in modules}
    handles = [lin.register_forward_hook(lambda mod, inp, out, n=name: seen[n].add(out.dtype))
               for name, m in modules.items() for lin in m.modules()
               if isinstance(lin, torch.nn.Linear)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def two_block_tiny():
    """Every ViT-Ti of the module using it with 2 blocks instead of 12, for tests whose
    subject (loading, position tables) does not depend on depth."""
    import model_factory
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(model_factory.ARCHS, "tiny", dict(model_factory.ARCHS["tiny"], depth=2))
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped where none is "
                                       "visible; run them alone with `pytest -m cuda`)")
    config.addinivalue_line("markers", "slurm: runs a private SLURM cluster (tests/test_slurm.py; "
                                       "skipped without slurm-wlm, munge and root)")


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none is visible)")
    for item in marked:
        item.add_marker(skip)
