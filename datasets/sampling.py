"""Which frames and which crops a clip is made of: small pure functions.

- Dense sampling (I3D, Carreira & Zisserman 2017; the Kinetics/UCF101/HMDB51 recipe of
  VideoMAE): ``num_frames`` frames ``sampling_rate`` apart inside a window of
  ``num_frames * sampling_rate`` frames. Training picks a random window; testing takes
  ``num_segment`` windows at evenly spaced starts (SlowFast/VideoMAE multi-clip test).
- TSN sampling (Wang et al. 2016; VideoMAE's Something-Something V2 recipe): the video is
  cut into ``num_segments`` equal segments and one frame is taken from each, at random
  (training) or at a fixed offset (test; each temporal view uses a different offset).
- Spatial crop offsets for the multi-crop test (1 = centre, 3 = both ends and centre of the
  long side of the short-side-resized frames).

A clip shorter than its sampling window is padded by repeating frames (indices are clipped
to the last frame); it is never rejected.

All index functions return ``np.int64`` arrays of length ``num_frames``/``num_segments``
with values in ``[0, num_video_frames)``. They raise ``ValueError`` on non-positive sizes.
"""
import contextlib
import random

import numpy as np
import torch


def _check_positive(**values):
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class EpochSeed:
    """The run's seed and the current epoch, in shared memory: the one source of every data set
    item's randomness (:meth:`rng`).

    Items are drawn from ``np.random.default_rng([seed, epoch, index])``: the frames, crops,
    flips, masks and augmentations of an item depend on nothing else, not on which data loader
    worker loads it, how many workers there are, what they loaded before, or the machine's
    load. So a run is reproducible with any ``--num_workers``, and a run resumed at an epoch
    draws the same items as one that never stopped. The training loop calls
    :meth:`set_epoch` before each epoch; the values live in shared memory, so persistent
    workers (started before the epoch changed) read them too.
    """

    def __init__(self):
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()  # [seed, epoch]

    def set_epoch(self, epoch, seed=0):
        """Draw the items of ``epoch`` of a run seeded ``seed`` (``--seed`` + rank)."""
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
        self.state.copy_(torch.tensor([seed, epoch]))

    def rng(self, index):
        """A numpy ``Generator`` for item ``index`` of the current epoch."""
        seed, epoch = self.state.tolist()
        return np.random.default_rng([seed, epoch, int(index)])


@contextlib.contextmanager
def global_rngs_from(rng):
    """Seed Python's ``random``, numpy's global RNG and torch's CPU RNG from ``rng`` inside
    the block and restore their states after: for library transforms that draw from the global
    RNGs (torchvision's crop parameters, timm's RandAugment and RandomErasing), so that they
    depend on the item only, and leave the caller's streams untouched."""
    seed = int(rng.integers(2**63))
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def dense_sample_indices(num_video_frames, num_frames, sampling_rate, rng=None):
    """I3D dense sampling for training: every ``sampling_rate``-th frame of a random window.

    Args:
        num_video_frames (int): frames in the video.
        num_frames (int): frames in the clip (``T``).
        sampling_rate (int): stride between sampled frames.
        rng (np.random.Generator | None): source of the random start.
    Returns:
        np.ndarray ``[num_frames]`` int64. The window has ``num_frames * sampling_rate``
        frames; a shorter video starts at 0 and repeats its last frame (padding).
    Raises:
        ValueError: a non-positive size.
    """
    _check_positive(num_video_frames=num_video_frames, num_frames=num_frames,
                    sampling_rate=sampling_rate)
    rng = np.random.default_rng() if rng is None else rng
    slack = num_video_frames - num_frames * sampling_rate
    start = int(rng.integers(0, slack + 1)) if slack > 0 else 0
    return _strided(start, num_video_frames, num_frames, sampling_rate)


def test_clip_starts(num_video_frames, window, num_segment):
    """Start frames of ``num_segment`` test windows of ``window`` frames, evenly spaced.

    The first window starts at frame 0 and the last ends at the last frame; one window is
    centred. A video shorter than the window gives starts of 0.

    Returns:
        np.ndarray ``[num_segment]`` int64.
    Raises:
        ValueError: a non-positive size.
    """
    _check_positive(num_video_frames=num_video_frames, window=window, num_segment=num_segment)
    slack = max(num_video_frames - window, 0)
    if num_segment == 1:
        return np.array([slack // 2], dtype=np.int64)
    return np.floor(np.arange(num_segment) * slack / (num_segment - 1)).astype(np.int64)


def dense_test_indices(num_video_frames, num_frames, sampling_rate, num_segment, segment_idx):
    """Frames of test clip ``segment_idx`` of ``num_segment`` (VideoMAE's Kinetics test mode).

    Returns:
        np.ndarray ``[num_frames]`` int64, padded like ``dense_sample_indices``.
    Raises:
        ValueError: a non-positive size or ``segment_idx`` outside ``[0, num_segment)``.
    """
    _check_positive(num_frames=num_frames, sampling_rate=sampling_rate)
    if not 0 <= segment_idx < num_segment:
        raise ValueError(f"segment_idx must be in [0, {num_segment}), got {segment_idx}")
    start = test_clip_starts(num_video_frames, num_frames * sampling_rate, num_segment)[segment_idx]
    return _strided(int(start), num_video_frames, num_frames, sampling_rate)


def _strided(start, num_video_frames, num_frames, sampling_rate):
    idx = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.clip(idx, 0, num_video_frames - 1)  # short video: repeat the last frame


def tsn_sample_indices(num_video_frames, num_segments, rng=None, *, test_segment=None,
                       test_num_segment=1):
    """TSN segment sampling: one frame from each of ``num_segments`` equal segments.

    Args:
        num_video_frames (int): frames in the video.
        num_segments (int): segments = frames in the clip (``T``).
        rng (np.random.Generator | None): training: a random frame in every segment.
        test_segment (int | None): when given, the deterministic test view
            ``test_segment`` of ``test_num_segment``: the frame at fraction
            ``(test_segment + 0.5) / test_num_segment`` of every segment (one view = the
            middle frames; two views = the 1/4 and 3/4 points).
        test_num_segment (int): number of temporal test views.
    Returns:
        np.ndarray ``[num_segments]`` int64, non-decreasing. A video with fewer frames than
        segments repeats frames.
    Raises:
        ValueError: a non-positive size or ``test_segment`` outside ``[0, test_num_segment)``.
    """
    _check_positive(num_video_frames=num_video_frames, num_segments=num_segments,
                    test_num_segment=test_num_segment)
    seg_len = num_video_frames / num_segments
    if test_segment is None:
        rng = np.random.default_rng() if rng is None else rng
        offset = rng.random(num_segments)
    elif 0 <= test_segment < test_num_segment:
        offset = np.full(num_segments, (test_segment + 0.5) / test_num_segment)
    else:
        raise ValueError(f"test_segment must be in [0, {test_num_segment}), got {test_segment}")
    idx = np.floor((np.arange(num_segments) + offset) * seg_len).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1)


def spatial_crop_offsets(height, width, crop_size, num_crop):
    """Top-left corners of the test crops of a frame already resized to its short side.

    Args:
        height, width (int): frame size (the short side is usually ``short_side_size``).
        crop_size (int): side of the square crops.
        num_crop (int): 1 = the centre crop; 3 = start, centre and end of the long side
            (left/centre/right for landscape or square frames, top/centre/bottom for
            portrait ones), centred on the short side.
    Returns:
        list of ``num_crop`` ``(top, left)`` int tuples.
    Raises:
        ValueError: ``num_crop`` not 1 or 3, or a crop larger than the frame.
    """
    if num_crop not in (1, 3):
        raise ValueError(f"num_crop (--test_num_crop) must be 1 or 3, got {num_crop}")
    if crop_size > height or crop_size > width:
        raise ValueError(f"crop {crop_size} does not fit in a {height}x{width} frame")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    if num_crop == 1:
        return [(top, left)]
    if width >= height:
        return [(top, 0), (top, left), (top, width - crop_size)]
    return [(0, left), (top, left), (height - crop_size, left)]


test_clip_starts.__test__ = False  # not a pytest test when imported into a test module
