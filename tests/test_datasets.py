"""Tests of the data layer (datasets/): sampling arithmetic, annotation files, decoding of the
real clips in tests/data/videos, transforms, the data sets, collation, converters and the
validator. CPU only, tiny clips (4 frames, 64 px)."""
import json
import os
import pickle
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets import (VideoClsDataset, VideoDecodeError, VideoMAEPretrainDataset, build_dataset,
                      build_pretraining_dataset, collate_skip_none, read_annotation)
from datasets import annotations, sampling, video_io
from datasets.transforms import (ClipRandAugment, EvalTransform, FinetuneTrainTransform,
                                 fixed_crop_offsets, multi_scale_crop_box, normalize, to_tchw)
from masking_generator import TubeMaskingGenerator

VIDEOS = os.path.join(os.path.dirname(__file__), "data", "videos")
GOOD = ["arm_wrestling_demo.mp4", "ava_style_demo.mp4", "flipping_a_pancake.mkv",
        "kinetics_clip_test.avi", "kinetics_clip_test.mp4",
        "ntu_rgbd_S001C001P001R001A001_rgb.avi", "short_clip_part0.mp4"]
CORRUPTED = "corrupted_h264.mp4"


def write(path, text):
    path.write_text(text)
    return str(path)


def anno(tmp_path, names, labels=None, name="anno.csv"):
    labels = labels if labels is not None else [i % 3 for i in range(len(names))]
    return write(tmp_path / name, "".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))


def mask_gen():
    return TubeMaskingGenerator((2, 4, 4), 0.75)  # 4 frames / tubelet 2, 64 px / 16


# ---------------------------------------------------------------- sampling arithmetic

def test_dense_sample_indices_is_a_strided_window_at_random_starts():
    starts = set()
    for seed in range(200):
        idx = sampling.dense_sample_indices(100, 4, 4, np.random.default_rng(seed))
        assert idx.dtype == np.int64 and idx.shape == (4,)
        assert np.all(np.diff(idx) == 4)
        assert 0 <= idx[0] <= 100 - 16
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 84 and len(starts) > 50


def test_dense_sample_indices_pads_short_videos_with_the_last_frame():
    idx = sampling.dense_sample_indices(10, 4, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [0, 4, 8, 9])
    np.testing.assert_array_equal(sampling.dense_sample_indices(1, 3, 2), [0, 0, 0])
    # exactly one window: start 0, no padding
    np.testing.assert_array_equal(sampling.dense_sample_indices(16, 4, 4), [0, 4, 8, 12])


def test_test_clips_are_evenly_spaced_and_cover_the_video():
    np.testing.assert_array_equal(sampling.test_clip_starts(100, 16, 5), [0, 21, 42, 63, 84])
    np.testing.assert_array_equal(sampling.test_clip_starts(100, 16, 1), [42])  # centred
    np.testing.assert_array_equal(sampling.test_clip_starts(10, 16, 3), [0, 0, 0])
    last = sampling.dense_test_indices(100, 4, 4, 5, 4)
    np.testing.assert_array_equal(last, [84, 88, 92, 96])
    np.testing.assert_array_equal(sampling.dense_test_indices(6, 4, 2, 2, 1), [0, 2, 4, 5])
    with pytest.raises(ValueError, match="segment_idx"):
        sampling.dense_test_indices(100, 4, 4, 5, 5)


def test_tsn_train_takes_one_random_frame_per_segment():
    seen = set()
    for seed in range(50):
        idx = sampling.tsn_sample_indices(160, 16, np.random.default_rng(seed))
        np.testing.assert_array_equal(idx // 10, np.arange(16))  # frame k in segment k
        seen.update(idx.tolist())
    assert len(seen) > 100  # random within segments
    short = sampling.tsn_sample_indices(5, 8, np.random.default_rng(0))
    assert short.min() >= 0 and short.max() <= 4 and np.all(np.diff(short) >= 0)


def test_tsn_test_views_use_different_offsets_in_each_segment():
    np.testing.assert_array_equal(sampling.tsn_sample_indices(160, 16, test_segment=0),
                                  np.arange(16) * 10 + 5)  # middle frames
    v0 = sampling.tsn_sample_indices(160, 16, test_segment=0, test_num_segment=2)
    v1 = sampling.tsn_sample_indices(160, 16, test_segment=1, test_num_segment=2)
    np.testing.assert_array_equal(v0, np.arange(16) * 10 + 2)
    np.testing.assert_array_equal(v1, np.arange(16) * 10 + 7)
    with pytest.raises(ValueError, match="test_segment"):
        sampling.tsn_sample_indices(160, 16, test_segment=2, test_num_segment=2)


def test_sampling_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="num_frames"):
        sampling.dense_sample_indices(100, 0, 4)
    with pytest.raises(ValueError, match="num_video_frames"):
        sampling.tsn_sample_indices(0, 8)


def test_spatial_crop_offsets_landscape_portrait_and_centre():
    assert sampling.spatial_crop_offsets(64, 85, 64, 3) == [(0, 0), (0, 10), (0, 21)]
    assert sampling.spatial_crop_offsets(85, 64, 64, 3) == [(0, 0), (10, 0), (21, 0)]
    assert sampling.spatial_crop_offsets(80, 100, 64, 1) == [(8, 18)]
    with pytest.raises(ValueError, match="num_crop"):
        sampling.spatial_crop_offsets(64, 85, 64, 2)
    with pytest.raises(ValueError, match="does not fit"):
        sampling.spatial_crop_offsets(64, 85, 65, 1)


def test_epoch_seed_depends_on_seed_epoch_and_index_only():
    s = sampling.EpochSeed()
    s.set_epoch(3, seed=7)
    torch.manual_seed(0)
    a = s.rng(5).random(4)
    torch.manual_seed(1)  # the global RNGs play no part
    np.testing.assert_array_equal(a, s.rng(5).random(4))
    assert not np.allclose(a, s.rng(6).random(4))
    s.set_epoch(4, seed=7)
    assert not np.allclose(a, s.rng(5).random(4))
    s.set_epoch(3, seed=8)
    assert not np.allclose(a, s.rng(5).random(4))
    with pytest.raises(ValueError, match="seed and epoch"):
        s.set_epoch(-1)


def test_global_rngs_from_an_item_leave_the_callers_streams():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expect = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    draws = []
    for _ in range(2):
        with sampling.global_rngs_from(np.random.default_rng(3)):
            draws.append((torch.rand(2), np.random.rand(2), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][2] == draws[1][2]
    assert torch.equal(torch.rand(2), expect[0]) and np.array_equal(np.random.rand(2), expect[1])
    assert random.random() == expect[2]


# ---------------------------------------------------------------- annotation files

def test_read_annotation_formats(tmp_path):
    path = write(tmp_path / "a.csv", "a.mp4 1\n\nsub dir/with space.mp4 2\nc.mp4,3\n/abs/d.mp4\t0\n")
    assert read_annotation(path, data_root="root") == [
        ("root/a.mp4", 1), ("root/sub dir/with space.mp4", 2), ("root/c.mp4", 3), ("/abs/d.mp4", 0)]


def test_read_annotation_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_annotation(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="empty"):
        read_annotation(write(tmp_path / "empty.csv", "\n\n"))
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: expected 'path label'"):
        read_annotation(write(tmp_path / "bad.csv", "a.mp4 1\nonly_a_path.mp4\n"))
    with pytest.raises(ValueError, match=r"lab\.csv, line 3: label 'x' is not an integer"):
        read_annotation(write(tmp_path / "lab.csv", "a.mp4 1\nb.mp4 2\nc.mp4 x\n"))
    with pytest.raises(ValueError, match=r"rng\.csv, line 2: label 5 outside \[0, 5\)"):
        read_annotation(write(tmp_path / "rng.csv", "a.mp4 1\nb.mp4 5\n"), nb_classes=5)
    with pytest.raises(ValueError, match="cannot read"):
        read_annotation(str(tmp_path))  # a directory
    with pytest.raises(FileNotFoundError, match=r"ex\.csv, line 1: video file .*nope\.mp4"):
        read_annotation(write(tmp_path / "ex.csv", "nope.mp4 0\n"), str(tmp_path),
                        check_exists=True)


# ---------------------------------------------------------------- decoding

def test_load_frames_decodes_only_the_requested_frames():
    path = os.path.join(VIDEOS, "arm_wrestling_demo.mp4")
    calls = []

    def indices(n, fps):
        calls.append((n, fps))
        return [0, 5, 5, 279]
    frames = video_io.load_frames(path, indices)
    assert calls == [(280, 28.0)]
    assert frames.shape == (4, 256, 340, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], frames[2])
    assert not np.array_equal(frames[0], frames[3])
    small = video_io.load_frames(path, lambda n, fps: [0, 1], width=64, height=48)
    assert small.shape == (2, 48, 64, 3)


@pytest.mark.parametrize("name", ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv"])
def test_decord_and_pyav_return_the_same_frames(name, monkeypatch):
    path = os.path.join(VIDEOS, name)
    indices = lambda n, fps: [0, 7, n // 2, n - 1]  # noqa: E731
    by_decord = video_io.load_frames(path, indices)
    monkeypatch.setattr(video_io, "decord", None)  # decord missing: PyAV
    np.testing.assert_array_equal(video_io.load_frames(path, indices), by_decord)


def test_avi_last_frames_are_exact():
    """decord returns stale frames at the end of AVI files (dmlc/decord#195); PyAV is used."""
    path = os.path.join(VIDEOS, "kinetics_clip_test.avi")
    everything = video_io.load_frames(path, lambda n, fps: np.arange(n))
    assert len(everything) == 164
    for _ in range(3):
        frames = video_io.load_frames(path, lambda n, fps: [0, 10, n - 1])
        np.testing.assert_array_equal(frames, everything[[0, 10, 163]])


def test_load_frames_errors(tmp_path):
    with pytest.raises(VideoDecodeError, match="file not found"):
        video_io.load_frames(str(tmp_path / "none.mp4"), lambda n, fps: [0])
    with pytest.raises(VideoDecodeError, match="not_a_video.mp4"):
        video_io.load_frames(write(tmp_path / "not_a_video.mp4", "hello"), lambda n, fps: [0])
    with pytest.raises(ValueError, match="outside"):
        video_io.load_frames(os.path.join(VIDEOS, "short_clip_part0.mp4"), lambda n, fps: [n])
    err = VideoDecodeError("x.mp4", "boom")
    assert pickle.loads(pickle.dumps(err)).reason == "boom"  # crosses worker processes


def test_corrupted_clip_decodes_partly_and_check_last_rejects_it():
    """decord decodes frames 0-27 of the 50 of corrupted_h264.mp4 and raises after that."""
    path = os.path.join(VIDEOS, CORRUPTED)
    head = video_io.load_frames(path, lambda n, fps: [0, 13, 27])
    assert head.shape == (3, 720, 1280, 3)
    with pytest.raises(VideoDecodeError, match=CORRUPTED):
        video_io.load_frames(path, lambda n, fps: [0, 30])
    with pytest.raises(VideoDecodeError):
        video_io.load_frames(path, lambda n, fps: [0, 13], check_last=True)


# ---------------------------------------------------------------- transforms

def test_multi_scale_crop_uses_videomae_scales_and_13_positions():
    assert len(fixed_crop_offsets(256, 340, 224, 224)) == 13
    assert len(fixed_crop_offsets(256, 340, 224, 224, more_fix_crop=False)) == 5
    allowed = {int(256 * s) for s in (1, .875, .75, .66)}
    rng = np.random.default_rng(0)
    for _ in range(100):
        top, left, h, w = multi_scale_crop_box(256, 340, 112, rng)
        assert h in allowed and w in allowed
        assert abs(sorted(allowed).index(h) - sorted(allowed).index(w)) <= 1
        assert (top, left) in fixed_crop_offsets(256, 340, h, w)
        assert top + h <= 256 and left + w <= 340


def test_normalize_uses_imagenet_statistics():
    """The ImageNet mean maps to 0 and mean + std to 1 per channel: a wrong mean fails the
    first, a wrong std the second."""
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    at_mean = (mean * 255).round().to(torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = normalize(at_mean)
    assert out.shape == (3, 2, 4, 4) and out.dtype == torch.float32
    assert out.abs().max() < 0.01
    one_std = ((mean + std) * 255).round().to(torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    # uint8 rounding moves a value by at most 0.5 / 255 / std < 0.01
    assert (normalize(one_std) - 1).abs().max() < 0.01


def test_rand_augment_is_the_same_for_every_frame():
    frame = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    clip = to_tchw(np.repeat(frame, 4, 0))
    augment = ClipRandAugment("rand-m9-n4-mstd0.5-inc1", 64)
    random.seed(0)
    np.random.seed(0)
    changed = 0
    for _ in range(5):
        out = augment(clip)
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
        changed += not torch.equal(out, clip)
    assert changed >= 2


def _gradient_clip(width=64):
    row = np.linspace(0, 255, width).astype(np.uint8)
    return np.tile(row[None, None, :, None], (4, 64, 1, 3))  # [T, 64, W, 3], brighter rightwards


@pytest.mark.parametrize("flip", [True, False])
def test_finetune_flip_can_be_switched_off(flip):
    transform = FinetuneTrainTransform(64, scale=(1, 1), ratio=(1, 1), flip=flip)
    directions = {bool(transform(_gradient_clip())[0, 0, 0, -1] > 0) for _ in range(30)}
    assert directions == ({True, False} if flip else {True})


def test_finetune_random_erasing_and_eval_crops():
    erased = FinetuneTrainTransform(64, reprob=1.0)(_gradient_clip())
    assert erased.shape == (3, 4, 64, 64)
    assert not torch.allclose(erased[:, 0], erased[:, 1])  # erased per frame
    clip = _gradient_clip(100)  # 64 x 100, landscape
    crops = [EvalTransform(64, 64, 3)(clip, i) for i in range(3)]
    means = [c.mean().item() for c in crops]
    assert means[0] < means[1] < means[2]  # left, centre, right
    with pytest.raises(ValueError, match="num_crop"):
        EvalTransform(64, 64, 2)


# ---------------------------------------------------------------- pre-training data

def test_pretrain_dataset_items_on_real_clips(tmp_path):
    ds = VideoMAEPretrainDataset(anno(tmp_path, GOOD), VIDEOS, 4, 4, 64, mask_gen())
    means = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 4, 64, 64) and item["video"].dtype == torch.float32
        assert item["bool_masked_pos"].shape == (32,) and item["bool_masked_pos"].dtype == torch.bool
        assert item["bool_masked_pos"].sum() == 24 and item["index"] == i
        assert torch.equal(item["bool_masked_pos"][:16], item["bool_masked_pos"][16:])  # tube
        means.append(item["video"].mean().item())
        assert 0.2 < item["video"].std().item() < 2.5
    assert abs(np.mean(means)) < 0.6 and max(map(abs, means)) < 1.5


def test_pretrain_items_are_reproducible_and_differ_between_epochs(tmp_path):
    ds = VideoMAEPretrainDataset(anno(tmp_path, GOOD[:1]), VIDEOS, 4, 4, 64, mask_gen())
    ds.set_epoch(1, seed=0)
    a, b = ds[0], ds[0]
    ds.set_epoch(2, seed=0)
    c = ds[0]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["bool_masked_pos"], b["bool_masked_pos"])
    assert not torch.equal(a["bool_masked_pos"], c["bool_masked_pos"])


def test_finetune_items_depend_on_seed_epoch_and_index_only(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(f"{GOOD[0]} 0\n{GOOD[1]} 1\n")
    ds = VideoClsDataset(str(path), VIDEOS, "train", nb_classes=2, num_frames=4, sampling_rate=2,
                         input_size=32, short_side_size=40, auto_augment="rand-m7-n4-mstd0.5-inc1",
                         reprob=0.25, num_sample=2)
    ds.set_epoch(1, seed=3)
    torch.manual_seed(0)
    a = ds[1]["video"]
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(ds[1]["video"], a) and torch.equal(torch.rand(1), after)  # untouched
    assert not torch.equal(a[0], a[1])  # the repeated-augmentation copies still differ
    ds.set_epoch(2, seed=3)
    assert not torch.equal(ds[1]["video"], a)


def test_pretrain_short_clip_is_padded_and_repeated_sampling(tmp_path):
    path = anno(tmp_path, ["short_clip_part0.mp4"])
    item = VideoMAEPretrainDataset(path, VIDEOS, 16, 4, 64, mask_gen())[0]  # 32 < 64 frames
    video = item["video"]  # frames 0, 4, ..., 28, then 31 repeated 8 times
    assert video.shape == (3, 16, 64, 64)
    assert all(torch.equal(video[:, 8], video[:, t]) for t in range(9, 16))
    assert not torch.equal(video[:, 0], video[:, 8])
    multi = VideoMAEPretrainDataset(path, VIDEOS, 4, 4, 64, mask_gen(), num_sample=2)[0]
    assert multi["video"].shape == (2, 3, 4, 64, 64) and multi["bool_masked_pos"].shape == (2, 32)


def test_corrupted_clip_is_skipped_with_a_warning_and_counted(tmp_path):
    ds = VideoMAEPretrainDataset(anno(tmp_path, [GOOD[1], CORRUPTED, GOOD[4]]), VIDEOS, 4, 2, 64,
                                 mask_gen())
    with pytest.warns(RuntimeWarning, match=CORRUPTED):
        assert ds[1] is None  # a 8-frame window inside the good first 28 frames still fails
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: now skipped silently, without decoding
        assert ds[1] is None
    assert ds.guard.corrupted == [1]
    batch = collate_skip_none([ds[i] for i in range(3)])
    assert batch["num_skipped"] == 1 and batch["video"].shape == (2, 3, 4, 64, 64)
    assert batch["index"].tolist() == [0, 2]


def test_corrupted_verdict_is_shared_by_data_loader_workers(tmp_path):
    names = [GOOD[0], CORRUPTED, GOOD[1], GOOD[4]]
    ds = VideoMAEPretrainDataset(anno(tmp_path, names), VIDEOS, 4, 2, 64, mask_gen())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                         collate_fn=collate_skip_none)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(2):
            batches = list(loader)
            assert sum(b["num_skipped"] for b in batches) == 1
            assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 2, 3]
    assert ds.guard.corrupted == [1]  # written by a worker, seen by the main process


def test_pretrain_dataset_construction_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"line 2: video file .*missing\.mp4"):
        VideoMAEPretrainDataset(anno(tmp_path, [GOOD[0], "missing.mp4"]), VIDEOS, 4, 4, 64, mask_gen())
    args = SimpleNamespace(data_path=anno(tmp_path, GOOD[:2]), data_root=VIDEOS, num_frames=4,
                           sampling_rate=4, input_size=64)
    assert len(build_pretraining_dataset(args, mask_gen())) == 2


# ---------------------------------------------------------------- classification data

def split_dir(tmp_path, names, labels=None):
    for split in ("train", "val", "test"):
        anno(tmp_path, names, labels, f"{split}.csv")
    return str(tmp_path)


def cls_args(tmp_path, data_set="Kinetics-400", names=GOOD[:3], **kw):
    args = dict(data_set=data_set, data_path=split_dir(tmp_path, names), data_root=VIDEOS,
                nb_classes=3, num_frames=4, sampling_rate=2, input_size=64, short_side_size=64,
                test_num_segment=2, test_num_crop=3, num_sample=1, aa="rand-m7-n4-mstd0.5-inc1",
                reprob=0.25)
    args.update(kw)
    return SimpleNamespace(**args)


def test_classification_train_items(tmp_path):
    ds, nb_classes = build_dataset(True, False, cls_args(tmp_path, num_sample=2))
    assert nb_classes == 3 and len(ds) == 3
    item = ds[1]
    assert set(item) == {"video", "label", "index"}
    assert item["video"].shape == (2, 3, 4, 64, 64) and item["label"] == 1 and item["index"] == 1
    assert not torch.equal(item["video"][0], item["video"][1])  # two augmentations


def test_classification_validation_is_one_deterministic_centre_view(tmp_path):
    ds, _ = build_dataset(False, False, cls_args(tmp_path))
    a, b = ds[2], ds[2]
    assert len(ds) == 3 and a["video"].shape == (3, 4, 64, 64)
    assert torch.equal(a["video"], b["video"])
    assert a["video_id"] == GOOD[2] and a["label"] == 2 and a["index"] == 2
    batch = collate_skip_none([ds[0], ds[1]])
    assert batch["video_id"] == GOOD[:2] and batch["label"].tolist() == [0, 1]


def test_classification_test_views(tmp_path):
    ds, _ = build_dataset(False, True, cls_args(tmp_path))
    assert len(ds) == 3 * 2 * 3
    items = [ds[i] for i in range(6)]  # all views of video 0
    assert [it["view"] for it in items] == list(range(6))
    assert {it["index"] for it in items} == {0} and ds[6]["index"] == 1
    crops = [it["video"] for it in items[:3]]  # segment 0, crops left/centre/right
    assert not torch.equal(crops[0], crops[2])
    assert not torch.equal(items[0]["video"], items[3]["video"])  # segment 0 vs 1


def test_ssv2_uses_tsn_sampling_without_flip(tmp_path):
    ds, nb_classes = build_dataset(True, False, cls_args(tmp_path, "SSV2", nb_classes=None))
    assert nb_classes == 174 and ds.sampling == "tsn" and ds.transform.flip is False
    idx = ds.frame_indices(160, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(idx // 40, np.arange(4))  # 4 segments of 40 frames
    kinetics, _ = build_dataset(True, False, cls_args(tmp_path))
    assert kinetics.sampling == "dense" and kinetics.transform.flip is True
    assert ds[0]["video"].shape == (3, 4, 64, 64)


def test_classification_errors(tmp_path):
    with pytest.raises(ValueError, match=r"val\.csv, line 2: label 7 outside \[0, 3\)"):
        (tmp_path / "bad").mkdir()
        bad_dir = split_dir(tmp_path / "bad", GOOD[:2], [0, 7])
        build_dataset(False, False, cls_args(tmp_path, data_path=bad_dir))
    with pytest.raises(ValueError, match="--data_set must be one of"):
        build_dataset(True, False, cls_args(tmp_path, "Kinetics-700"))
    with pytest.raises(ValueError, match="--data_path must be a directory"):
        build_dataset(True, False, cls_args(tmp_path, data_path=str(tmp_path / "train.csv")))
    with pytest.raises(ValueError, match="mode"):
        VideoClsDataset(anno(tmp_path, GOOD[:1]), VIDEOS, "val", nb_classes=3)


def test_classification_corrupted_video_gives_none_for_every_view(tmp_path):
    ds, _ = build_dataset(False, True, cls_args(tmp_path, names=[GOOD[0], CORRUPTED]))
    with pytest.warns(RuntimeWarning, match=CORRUPTED):
        items = [ds[i] for i in range(6, 12)]
    assert items == [None] * 6
    batch = collate_skip_none([ds[0], ds[6]])
    assert batch["num_skipped"] == 1 and batch["video"].shape[0] == 1


def test_collate_skip_none():
    assert collate_skip_none([None, None]) == {"num_skipped": 2}
    batch = collate_skip_none([{"x": torch.ones(2), "id": "a"}, None, {"x": torch.zeros(2), "id": "b"}])
    assert batch["x"].shape == (2, 2) and batch["id"] == ["a", "b"] and batch["num_skipped"] == 1


# ---------------------------------------------------------------- converters and validator

def test_convert_k400(tmp_path):
    csv_path = write(tmp_path / "k400.csv", "label,youtube_id,time_start,time_end,split\n"
                     "zumba,abc,14,24,train\n\"arm wrestling\",x_y-z,0,10,train\nzumba,q,3,13,train\n")
    out, classes = tmp_path / "train.csv", tmp_path / "classes.txt"
    assert annotations.main(["convert-k400", "--csv", csv_path, "--out", str(out),
                             "--classes_out", str(classes)]) == 0
    assert out.read_text().splitlines() == ["abc_000014_000024.mp4 1", "x_y-z_000000_000010.mp4 0",
                                            "q_000003_000013.mp4 1"]
    assert classes.read_text().splitlines() == ["arm wrestling", "zumba"]
    val = write(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\nzumba,v,1,11,val\n")
    samples, _ = annotations.convert_k400(val, annotations.read_class_names(str(classes)))
    assert samples == [("v_000001_000011.mp4", 1)]
    with pytest.raises(ValueError, match="line 2"):
        annotations.convert_k400(val, ["arm wrestling"])


def test_convert_ssv2(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(
        {"Putting something on a surface": "0", "Pushing something from left to right": "1"}))
    items = [{"id": "74225", "label": "pushing a pen from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
             {"id": "3", "label": "putting a cup on a table",
              "template": "Putting [something] on a surface", "placeholders": ["a cup"]}]
    train = write(tmp_path / "train.json", json.dumps(items))
    assert annotations.convert_ssv2(train, labels) == [("74225.webm", 1), ("3.webm", 0)]
    items[0]["template"] = "Dancing with [something]"
    with pytest.raises(ValueError, match="74225"):
        annotations.convert_ssv2(write(tmp_path / "bad.json", json.dumps(items)), labels)


def test_convert_ucf101(tmp_path):
    class_ind = write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 HandstandPushups\n")
    train = write(tmp_path / "trainlist01.txt", "ApplyLipstick/v_ApplyLipstick_g08_c01.avi 2\r\n"
                  "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\n")
    test = write(tmp_path / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    samples, names = annotations.convert_ucf101(class_ind, train)
    assert samples == [("ApplyLipstick/v_ApplyLipstick_g08_c01.avi", 1),
                       ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2)]
    assert names == ["ApplyEyeMakeup", "ApplyLipstick", "HandstandPushups"]
    assert annotations.convert_ucf101(class_ind, test)[0] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0)]
    bad = write(tmp_path / "bad.txt", "ApplyLipstick/v_x.avi 1\n")
    with pytest.raises(ValueError, match="line 1"):
        annotations.convert_ucf101(class_ind, bad)


def test_convert_hmdb51(tmp_path):
    write(tmp_path / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    write(tmp_path / "cartwheel_test_split1.txt", "d.avi 2\ne.avi 1\n")
    write(tmp_path / "cartwheel_test_split2.txt", "d.avi 1\n")
    train, names = annotations.convert_hmdb51(str(tmp_path), 1, "train")
    assert names == ["brush_hair", "cartwheel"]
    assert train == [("brush_hair/a.avi", 0), ("cartwheel/e.avi", 1)]
    assert annotations.convert_hmdb51(str(tmp_path), 1, "test")[0] == [
        ("brush_hair/b.avi", 0), ("cartwheel/d.avi", 1)]
    with pytest.raises(ValueError, match="test_split3"):
        annotations.convert_hmdb51(str(tmp_path), 3)


def test_validate_finds_missing_corrupted_short_and_bad_labels(tmp_path, capsys):
    path = write(tmp_path / "a.csv", f"{GOOD[0]} 0\nmissing.mp4 1\n{CORRUPTED} 1\n"
                 f"short_clip_part0.mp4 1\n{GOOD[1]} x\n{GOOD[1]} 9\n")
    report = annotations.validate_annotation(path, VIDEOS, nb_classes=4)
    assert {k: [p[0] for p in v] for k, v in report.errors.items()} == {
        "label": [5, 6], "missing": [2], "corrupted": [3]}
    assert [p[0] for p in report.warnings["short"]] == [4]
    assert [p[2] for p in report.warnings["empty_class"]] == ["class 2 has no usable video",
                                                               "class 3 has no usable video"]
    clean = tmp_path / "clean.csv"
    status = annotations.main(["validate", path, "--data_root", VIDEOS, "--nb_classes", "4",
                               "--write_clean", str(clean)])
    out = capsys.readouterr().out
    assert status == 1 and "6 lines, 2 usable" in out and "missing.mp4" in out
    assert clean.read_text().splitlines() == [f"{GOOD[0]} 0", "short_clip_part0.mp4 1"]
    assert annotations.main(["validate", str(clean), "--data_root", VIDEOS]) == 0
