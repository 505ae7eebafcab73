"""Skipping corrupted videos during training, the same way in every worker and epoch.

A broken stream may decode only part-way (the sample ``corrupted_h264.mp4`` decodes frames
0-27 of 50, then decord raises), so whether one clip of it decodes depends on where the clip
falls. To treat such a file as corrupted consistently, the first load of every video also
decodes its last frame; a video that fails once is marked corrupted in a table in shared
memory, seen by all data loader workers and kept across epochs, and every later item of it is
``None`` without decoding. The cost is one extra frame per video, on its first load only.
"""
import warnings

import torch

from .video_io import VideoDecodeError, load_frames

UNKNOWN, GOOD, CORRUPTED = 0, 1, 2


class CorruptedVideoGuard:
    """``load_frames`` for the videos of one data set, with shared corrupted/good verdicts.

    Args:
        num_videos (int): videos in the data set (verdicts are indexed by video row).
        verify (bool): decode the last frame on a video's first load.
    """

    def __init__(self, num_videos, verify=True):
        self.status = torch.zeros(num_videos, dtype=torch.uint8).share_memory_()  # [V]
        self.verify = verify

    def load(self, video_index, path, indices_fn, **decode_kwargs):
        """Frames uint8 ``[T, H, W, 3]`` from ``load_frames`` (``decode_kwargs``: its
        ``width``/``height``/``short_side``), or ``None`` for a corrupted video (with a
        ``RuntimeWarning`` naming the file, the first time)."""
        status = int(self.status[video_index])
        if status == CORRUPTED:
            return None
        try:
            frames = load_frames(path, indices_fn, check_last=self.verify and status == UNKNOWN,
                                 **decode_kwargs)
        except VideoDecodeError as e:
            self.status[video_index] = CORRUPTED
            warnings.warn(f"skipping corrupted video: {e}", RuntimeWarning, stacklevel=3)
            return None
        self.status[video_index] = GOOD
        return frames

    @property
    def corrupted(self):
        """Row indices of the videos found corrupted so far."""
        return torch.nonzero(self.status == CORRUPTED).flatten().tolist()
