"""Shared test set-up: the repo root on sys.path, where the bundled real clips live, and a
fixture that makes ViT-Ti two blocks deep."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
VIDEOS = os.path.join(ROOT, "tests", "data", "videos")


@pytest.fixture(scope="module")
def two_block_tiny():
    """Every ViT-Ti of the module using it with 2 blocks instead of 12, for tests whose
    subject (loading, position tables) does not depend on depth."""
    import model_factory
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(model_factory.ARCHS, "tiny", dict(model_factory.ARCHS["tiny"], depth=2))
        yield
