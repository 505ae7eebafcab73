"""benchmarks/reference_loaders.py: the public code's top-level modules are imported from its
checkout without displacing ours, with stand-ins only for what is missing, only meanwhile.
Checked on a made-up checkout with the public code's module names and imports (the real one,
xiaojieli0903/MaskAgain or MCG-NJU/VideoMAE, is not available offline)."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import reference_loaders  # noqa: E402

FAKE_DATASETS = '''
import pandas as pd
import cv2
from numpy.lib.function_base import disp
from masking_generator import TubeMaskingGenerator
from kinetics import VideoMAE

def build_pretraining_dataset(args):
    rows = pd.read_csv(args.data_path, header=None, delimiter=" ").values
    return VideoMAE(list(rows[:, 0]), TubeMaskingGenerator(args.window_size, args.mask_ratio))
'''
FAKE_KINETICS = '''
class VideoMAE:
    def __init__(self, clips, mask):
        self.clips, self.mask = clips, mask
    def __len__(self):
        return len(self.clips)
    def __getitem__(self, i):
        return self.clips[i], self.mask
'''
FAKE_MASKING = '''
class TubeMaskingGenerator:
    theirs = True
    def __init__(self, window_size, mask_ratio):
        self.window_size, self.mask_ratio = window_size, mask_ratio
'''


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "MaskAgain"
    repo.mkdir()
    for name, text in (("datasets.py", FAKE_DATASETS), ("kinetics.py", FAKE_KINETICS),
                       ("masking_generator.py", FAKE_MASKING)):
        (repo / name).write_text(text)
    return str(repo)


def test_their_modules_in_ours_back(checkout, tmp_path):
    import datasets
    import masking_generator
    before = {k: sys.modules.get(k) for k in ("datasets", "masking_generator", "pandas", "cv2")}
    path = list(sys.path)
    ds = reference_loaders.pretrain_dataset(checkout, ["a.mp4", "b.mp4"], "/videos",
                                            str(tmp_path), 16, 4, 224)
    assert isinstance(ds, reference_loaders.ReferenceDataset) and len(ds) == 2
    assert ds.samples == ["a.mp4", "b.mp4"] and ds.clips_per_item == 1
    clip, mask = ds[1]
    assert clip == "/videos/b.mp4"  # absolute paths, as their loaders take them
    assert type(mask).theirs and mask.window_size == (8, 14, 14) and mask.mask_ratio == 0.9
    # ours again, nothing of theirs or of the stand-ins left behind
    assert sys.modules["datasets"] is datasets
    assert sys.modules["masking_generator"] is masking_generator
    assert {k: sys.modules.get(k) for k in before} == before and sys.path == path
    assert "kinetics" not in sys.modules


def test_not_a_checkout_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no datasets.py"):
        reference_loaders.pretrain_dataset(str(tmp_path), ["a.mp4"], "/v", str(tmp_path), 16, 4,
                                           224)
