"""tools/prepare_videos.py on real clips: same frames, smaller, short GOP, corrupted clip left
out of the new annotation, a re-run skips what is done, and the data sets read the result."""
import os
import shutil

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import VIDEOS
from datasets import VideoMAEPretrainDataset
from datasets.video_io import load_frames
from masking_generator import TubeMaskingGenerator
from tools import prepare_videos as pv

CLIPS = ["short_clip_part0.mp4", "kinetics_clip_test.avi", "corrupted_h264.mp4"]


def keyframes(path):
    with av.open(path) as c:
        return [i for i, p in enumerate(c.demux(c.streams.video[0])) if p.is_keyframe]


def every_frame(path):
    return load_frames(path, lambda n, fps: np.arange(n))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(os.path.join(VIDEOS, name), src / "sub" / name)
    anno = tmp / "train.csv"
    anno.write_text("".join(f"sub/{n} {i}\n" for i, n in enumerate(CLIPS)))
    args = pv.get_args_parser().parse_args(
        ["--src", str(src), "--dst", str(tmp / "dst"), "--anno", str(anno), "--out_anno",
         str(tmp / "train_prep.csv"), "--short_side", "128", "--gop", "8"])
    failed = pv.main(args)
    return tmp, args, failed


def test_prepared_clips_keep_every_frame_at_the_new_size(prepared):
    tmp, _, failed = prepared
    assert [os.path.basename(f) for f in failed] == ["corrupted_h264.mp4"]
    for name, out in [("short_clip_part0.mp4", "short_clip_part0.mp4"),
                      ("kinetics_clip_test.avi", "kinetics_clip_test.mp4")]:
        src, dst = os.path.join(VIDEOS, name), str(tmp / "dst" / "sub" / out)
        a, b = every_frame(src), every_frame(dst)
        assert len(a) == len(b)  # frame i is still frame i
        assert b.shape[1] == 128  # landscape: short side = height; width even, aspect kept
        assert b.shape[2] == int(128 * a.shape[2] / a.shape[1]) // 2 * 2
        ref = F.interpolate(torch.from_numpy(a).permute(0, 3, 1, 2).float(), size=b.shape[1:3],
                            mode="bilinear", antialias=True)
        mse = (ref - torch.from_numpy(b).permute(0, 3, 1, 2).float()).square().mean().item()
        assert 10 * np.log10(255 ** 2 / mse) > 30, name  # PSNR in dB against a resized original
        k = keyframes(dst)
        assert k == list(range(0, len(b), 8))
    assert not any(p.name.endswith(".part") for p in (tmp / "dst").rglob("*"))


def test_new_annotation_and_rerun(prepared, capsys):
    tmp, args, _ = prepared
    lines = (tmp / "train_prep.csv").read_text().splitlines()
    assert lines == ["sub/short_clip_part0.mp4 0", "sub/kinetics_clip_test.mp4 1"]
    before = {p: p.stat().st_mtime_ns for p in (tmp / "dst").rglob("*.mp4")}
    pv.main(args)
    out = capsys.readouterr().out
    assert out.count("exists:") == 2 and "failed:" in out
    assert {p: p.stat().st_mtime_ns for p in (tmp / "dst").rglob("*.mp4")} == before
    ds = VideoMAEPretrainDataset(str(tmp / "train_prep.csv"), str(tmp / "dst"), 8, 2, 64,
                                 TubeMaskingGenerator((4, 4, 4), 0.75))
    item = ds[1]
    assert item["video"].shape == (3, 8, 64, 64) and item["bool_masked_pos"].sum() == 48


def test_name_clashes_and_bad_input(tmp_path):
    assert pv.new_paths(["a/b.avi", "a/b.mp4", "c.mkv"]) == ["a/b.avi.mp4", "a/b.mp4", "c.mp4"]
    with pytest.raises(ValueError, match="--gop"):
        pv.encode_video(os.path.join(VIDEOS, CLIPS[0]), str(tmp_path / "x.mp4"), gop=0)
    with pytest.raises(SystemExit, match="not a directory"):
        pv.main(pv.get_args_parser().parse_args(["--src", str(tmp_path / "no"), "--dst", "x"]))
