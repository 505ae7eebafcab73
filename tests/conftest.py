"""Shared test set-up: the repo root on sys.path, where the bundled real clips live, and the
``cuda`` marker: tests that need a CUDA device are marked ``@pytest.mark.cuda`` and skipped
where none is visible (``pytest -m cuda`` runs only them; ``benchmarks/gpu_check.sh`` does)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
VIDEOS = os.path.join(ROOT, "tests", "data", "videos")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped where none is "
                                       "visible; run them alone with `pytest -m cuda`)")


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
