"""Video classification data for fine-tuning and evaluation (VideoMAE, Tong et al. 2022, Sec. 4).

One data set class for every benchmark; the benchmarks differ only in parameters:

- Kinetics-400, UCF101, HMDB51: I3D dense sampling (``sampling='dense'``: ``num_frames``
  frames ``sampling_rate`` apart), horizontal flip on.
- Something-Something V2: TSN uniform sampling (``sampling='tsn'``: one frame from each of
  ``num_frames`` segments), no flip (its labels say "left"/"right").

Modes: ``train`` (random clip, fine-tuning augmentation), ``validation`` (one centred clip,
centre crop) and ``test`` (``test_num_segment`` temporal x ``test_num_crop`` spatial views per
video, one item per view).
"""
import os

import torch
from torch.utils.data import Dataset

from .sampling import (EpochSeed, dense_sample_indices, dense_test_indices, global_rngs_from,
                       tsn_sample_indices)
from .transforms import EvalTransform, FinetuneTrainTransform
from .guard import CorruptedVideoGuard
from .video_io import read_annotation

MODES = ("train", "validation", "test")
SAMPLINGS = ("dense", "tsn")


class VideoClsDataset(Dataset):
    """Labelled clips from a ``path label`` annotation file.

    Args:
        anno_path (str): annotation file; labels must be in ``[0, nb_classes)``.
        data_root (str): prefix of relative video paths.
        mode (str): ``'train'``, ``'validation'`` or ``'test'``.
        nb_classes (int): number of classes.
        num_frames (int): frames per clip ``T`` (TSN: number of segments).
        sampling_rate (int): stride of dense sampling (unused by TSN).
        sampling (str): ``'dense'`` (I3D) or ``'tsn'`` (TSN segments).
        input_size (int): crop side ``H = W``.
        short_side_size (int): short side before the eval crops.
        test_num_segment (int), test_num_crop (int): test views per video (crops: 1 or 3).
        num_sample (int): train: augmented copies of one decoded clip (repeated augmentation).
        flip (bool): train: random horizontal flip.
        auto_augment (str | None), interpolation (str), reprob (float), remode (str),
        recount (int): train: RandAugment and random erasing, see ``FinetuneTrainTransform``.
        check_files (bool): check at construction that every video exists.
        scale_on_decode (bool): validation/test: videos with a short side above
            ``short_side_size`` are scaled to it while decoding (``transform.decode_short_side``;
            training decodes at full size, see ``FinetuneTrainTransform``); False = decode at
            full size and resize in the transform (slower, for comparisons).
        reuse_decode (bool): test mode: the spatial crops of one temporal clip reuse one
            decode when they are asked for one after another (as by a sequential sampler:
            their indices are consecutive), instead of decoding it ``test_num_crop`` times.
    Items (``index``: the video's row in the annotation file, 0-based):
        train: ``{'video': float32 [3, T, H, W] (num_sample > 1: [num_sample, 3, T, H, W]),
        'label': int, 'index': int}``;
        validation: ``{'video': [3, T, H, W], 'label', 'video_id': str, 'index'}``;
        test: as validation plus ``'view': int`` = ``segment * test_num_crop + crop``;
        ``len`` = videos x ``test_num_segment`` x ``test_num_crop``.
        ``video_id`` is the path as written in the annotation file.
        ``None`` (after a warning naming the file) for a video that cannot be decoded
        (see ``guard.py``: every view of it, once found corrupted).
    Raises:
        ValueError: unknown mode/sampling, bad annotation line or label out of range
            (file + line), ``test_num_crop`` not 1 or 3.
        FileNotFoundError: missing annotation file or video (file + line).
    """

    def __init__(self, anno_path, data_root="", mode="train", *, nb_classes, num_frames=16,
                 sampling_rate=4, sampling="dense", input_size=224, short_side_size=256,
                 test_num_segment=5, test_num_crop=3, num_sample=1, flip=True,
                 auto_augment=None, interpolation="bicubic", reprob=0.0, remode="pixel",
                 recount=1, check_files=True, scale_on_decode=True, reuse_decode=True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.samples = read_annotation(anno_path, data_root, nb_classes=nb_classes,
                                       check_exists=check_files)
        self.data_root, self.mode, self.sampling, self.nb_classes = data_root, mode, sampling, nb_classes
        self.num_frames, self.sampling_rate, self.num_sample = num_frames, sampling_rate, num_sample
        self.num_segment = test_num_segment if mode == "test" else 1
        self.num_crop = test_num_crop if mode == "test" else 1
        if mode == "train":
            self.transform = FinetuneTrainTransform(
                input_size, flip=flip, auto_augment=auto_augment, interpolation=interpolation,
                reprob=reprob, remode=remode, recount=recount)
        else:
            self.transform = EvalTransform(short_side_size, input_size, self.num_crop)
        self.guard = CorruptedVideoGuard(len(self.samples))
        self.scale_on_decode, self.reuse_decode = scale_on_decode, reuse_decode
        self._last = None  # (video_index, segment, frames) of the last test decode, per worker
        self.epoch_seed = EpochSeed()

    def set_epoch(self, epoch, seed=0):
        """Training items of ``epoch`` of a run seeded ``seed``: frames and augmentation depend
        on ``(seed, epoch, index)`` only (see :class:`EpochSeed`)."""
        self.epoch_seed.set_epoch(epoch, seed)

    def __len__(self):
        return len(self.samples) * self.num_segment * self.num_crop

    def __repr__(self):
        return (f"VideoClsDataset({self.mode}, videos={len(self.samples)}, views="
                f"{self.num_segment}x{self.num_crop}, {self.sampling} {self.num_frames}"
                f"x{self.sampling_rate}, classes={self.nb_classes})")

    def frame_indices(self, num_video_frames, segment=0, rng=None):
        """Frame indices ``[T]`` of a clip: random (train, from ``rng``) or test view ``segment``."""
        if self.mode == "train":
            if self.sampling == "tsn":
                return tsn_sample_indices(num_video_frames, self.num_frames, rng)
            return dense_sample_indices(num_video_frames, self.num_frames, self.sampling_rate, rng)
        if self.sampling == "tsn":
            return tsn_sample_indices(num_video_frames, self.num_frames, test_segment=segment,
                                      test_num_segment=self.num_segment)
        return dense_test_indices(num_video_frames, self.num_frames, self.sampling_rate,
                                  self.num_segment, segment)

    def _load(self, video_index, segment, path, rng):
        """Frames of one clip (train: one decode for all ``num_sample`` copies; test: one for
        the ``num_crop`` crops of a temporal clip, see ``reuse_decode``)."""
        reuse = self.reuse_decode and self.mode == "test" and self.num_crop > 1
        if reuse and self._last is not None and self._last[:2] == (video_index, segment):
            return self._last[2]
        short = self.transform.decode_short_side if self.scale_on_decode else -1
        frames = self.guard.load(video_index, path,
                                 lambda n, fps: self.frame_indices(n, segment, rng),
                                 short_side=short)
        self._last = (video_index, segment, frames) if reuse and frames is not None else None
        return frames

    def __getitem__(self, index):
        video_index, view = divmod(index, self.num_segment * self.num_crop)
        segment, crop = divmod(view, self.num_crop)
        path, label = self.samples[video_index]
        rng = self.epoch_seed.rng(index) if self.mode == "train" else None
        frames = self._load(video_index, segment, path, rng)
        if frames is None:
            return None
        if self.mode == "train":
            with global_rngs_from(rng):  # torchvision's and timm's draws, from this item
                clips = [self.transform(frames) for _ in range(self.num_sample)]  # [3, T, H, W]
            video = clips[0] if self.num_sample == 1 else torch.stack(clips)
            return {"video": video, "label": label, "index": video_index}
        item = {"video": self.transform(frames, crop), "label": label,
                "video_id": os.path.relpath(path, self.data_root) if self.data_root else path,
                "index": video_index}
        if self.mode == "test":
            item["view"] = view
        return item
