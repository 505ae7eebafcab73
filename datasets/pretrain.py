"""Masked video pre-training data (VideoMAE, Tong et al. 2022, Sec. 3 and 4.1).

Each item is one clip of ``num_frames`` frames, ``sampling_rate`` apart (I3D dense sampling,
short videos padded), augmented with VideoMAE's multi-scale crop, plus a token mask from
``mask_generator`` (e.g. ``masking_generator.TubeMaskingGenerator``).
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from .sampling import EpochSeed, dense_sample_indices
from .transforms import PretrainTransform
from .guard import CorruptedVideoGuard
from .video_io import read_annotation


class VideoMAEPretrainDataset(Dataset):
    """Clips and masks for VideoMAE / MVD / MMKD pre-training.

    Args:
        anno_path (str): ``path label`` annotation file (labels are read but unused).
        data_root (str): prefix of relative video paths.
        num_frames (int): frames per clip ``T``.
        sampling_rate (int): stride between sampled frames.
        input_size (int): crop side ``H = W``.
        mask_generator (callable): ``mask_generator(rng) -> bool np.ndarray [N]``.
        num_sample (int): augmented clips drawn from one decode (repeated sampling);
            1 gives un-stacked items.
        flip (bool): random horizontal flip (VideoMAE: off).
        check_files (bool): check at construction that every video exists.
        scale_on_decode (bool): videos larger than the crops need are scaled down while
            decoding (short side ``transform.decode_short_side``, 340 for 224); False =
            decode at full size and resize in the transform (slower, for comparisons).
    Items:
        ``{'video': float32 [3, T, H, W], 'bool_masked_pos': bool [N], 'index': int}``;
        with ``num_sample > 1``: ``video [num_sample, 3, T, H, W]`` and masks
        ``[num_sample, N]``. ``None`` (after a warning naming the file) for a video that
        cannot be decoded (see ``guard.py``): use ``collate_skip_none``.
        The sampling, crop and mask of an item come from ``(seed, epoch, index)`` only
        (:class:`~datasets.sampling.EpochSeed`; call :meth:`set_epoch` before each epoch).
    Raises:
        FileNotFoundError, ValueError: bad annotation file or missing video (file + line).
    """

    def __init__(self, anno_path, data_root, num_frames, sampling_rate, input_size,
                 mask_generator, num_sample=1, flip=False, check_files=True, scale_on_decode=True):
        self.samples = read_annotation(anno_path, data_root, check_exists=check_files)
        self.scale_on_decode = scale_on_decode
        self.num_frames, self.sampling_rate, self.num_sample = num_frames, sampling_rate, num_sample
        self.transform = PretrainTransform(input_size, flip=flip)
        self.mask_generator = mask_generator
        self.guard = CorruptedVideoGuard(len(self.samples))
        self.epoch_seed = EpochSeed()

    def set_epoch(self, epoch, seed=0):
        """Items of ``epoch`` of a run seeded ``seed`` (see :class:`EpochSeed`)."""
        self.epoch_seed.set_epoch(epoch, seed)

    def __len__(self):
        return len(self.samples)

    def __repr__(self):
        return (f"VideoMAEPretrainDataset(videos={len(self)}, frames={self.num_frames}"
                f"x{self.sampling_rate}, {self.transform.input_size}px, {self.mask_generator})")

    def __getitem__(self, index):
        path, _ = self.samples[index]
        rng = self.epoch_seed.rng(index)
        short = self.transform.decode_short_side if self.scale_on_decode else -1
        frames = self.guard.load(index, path, lambda n, fps: dense_sample_indices(
            n, self.num_frames, self.sampling_rate, rng), short_side=short)
        if frames is None:
            return None
        videos, masks = [], []
        for _ in range(self.num_sample):  # one decode, num_sample augmented clips
            videos.append(self.transform(frames, rng))  # [3, T, H, W]
            masks.append(torch.from_numpy(np.asarray(self.mask_generator(rng), dtype=bool)))
        if self.num_sample == 1:
            return {"video": videos[0], "bool_masked_pos": masks[0], "index": index}
        return {"video": torch.stack(videos), "bool_masked_pos": torch.stack(masks), "index": index}
