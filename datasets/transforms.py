"""Clip transforms: the same spatial operation on every frame of a clip.

Input: decoded frames, uint8 ``[T, H, W, 3]`` (numpy or torch). Output: float32
``[3, T, H, W]``, divided by 255 and normalised with timm's ImageNet mean/std.

- ``PretrainTransform``: VideoMAE pre-training augmentation (its ``GroupMultiScaleCrop``, from
  TSN, Wang et al. 2016): a crop whose sides are drawn from ``scales`` of the short side
  (aspect distortion at most ``max_distort`` scale steps), at one of 13 fixed positions,
  resized to ``input_size``.
- ``FinetuneTrainTransform``: VideoMAE fine-tuning augmentation: random resized crop (scale
  (0.08, 1), torchvision), optional flip, timm RandAugment with one random draw per clip,
  normalisation, timm ``RandomErasing`` per frame (time as the batch dimension).
- ``EvalTransform``: short side resized to ``short_side_size``, then the centre crop or one
  of the multi-view test crops of ``spatial_crop_offsets``.

Deviation from VideoMAE: RandAugment runs after the crop, on ``input_size`` frames, rather than
on the full-size frames before it (much cheaper; the same ops and magnitudes).

Each transform has ``decode_short_side``: the smallest short side its crops need, so that the
data sets can have the decoder scale larger videos down to it (``load_frames(short_side=)``)
instead of converting full-size frames and resizing them here.
"""
import math
import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from timm.data import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_pil_interp
from torchvision.transforms import RandomResizedCrop

from .sampling import spatial_crop_offsets

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1)


def to_tchw(frames):
    """uint8 ``[T, H, W, 3]`` (numpy or torch) -> uint8 tensor ``[T, 3, H, W]``."""
    frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray)
                             else frames)
    return frames.permute(0, 3, 1, 2)


def normalize(clip):
    """uint8 ``[T, 3, H, W]`` -> float32 ``[3, T, H, W]``, ``(x / 255 - mean) / std``."""
    clip = clip.permute(1, 0, 2, 3).float().div_(255.0)
    return clip.sub_(_MEAN).div_(_STD)


def fixed_crop_offsets(height, width, crop_h, crop_w, more_fix_crop=True):
    """TSN's fixed crop positions ``(top, left)``: 4 corners + centre (5), and with
    ``more_fix_crop`` also the 4 edge midpoints and the 4 quarter points (13)."""
    h_step, w_step = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # (row, column) in quarter steps
    if more_fix_crop:
        grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(r * h_step, c * w_step) for r, c in grid]


def multi_scale_crop_box(height, width, input_size, rng, scales=(1, .875, .75, .66),
                         max_distort=1, fix_crop=True, more_fix_crop=True):
    """Draw VideoMAE's multi-scale crop ``(top, left, crop_h, crop_w)`` for a frame.

    Crop sides are ``int(scale * min(height, width))`` (snapped to ``input_size`` when
    within 2 pixels of it); height and width scales differ by at most ``max_distort`` steps.
    """
    base = min(height, width)
    sides = [input_size if abs(int(base * s) - input_size) < 3 else int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides)
             if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[rng.integers(len(pairs))]
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)  # snapping may overshoot
    if fix_crop:
        offsets = fixed_crop_offsets(height, width, crop_h, crop_w, more_fix_crop)
        top, left = offsets[rng.integers(len(offsets))]
    else:
        top, left = rng.integers(height - crop_h + 1), rng.integers(width - crop_w + 1)
    return int(top), int(left), crop_h, crop_w


class PretrainTransform:
    """Multi-scale crop -> resize to ``input_size`` -> optional flip -> normalise.

    Args:
        input_size (int): output side.
        scales (tuple[float]): crop sides as fractions of the short side.
        max_distort (int): largest difference of scale steps between crop height and width.
        flip (bool): random horizontal flip (off in VideoMAE pre-training).
    Call: ``(frames uint8 [T, H, W, 3], rng: np.random.Generator) -> float32 [3, T, S, S]``.
    """

    def __init__(self, input_size, scales=(1, .875, .75, .66), max_distort=1, flip=False):
        self.input_size, self.scales, self.max_distort, self.flip = input_size, scales, max_distort, flip

    @property
    def decode_short_side(self):
        """``ceil(input_size / min(scales))`` (340 for 224): the smallest crop, ``min(scales)``
        of the short side, is then still >= ``input_size`` pixels, so no crop is upsampled
        that would not be from the full-size frames."""
        return math.ceil(self.input_size / min(self.scales))

    def __call__(self, frames, rng):
        clip = to_tchw(frames)  # [T, 3, H, W] uint8
        top, left, h, w = multi_scale_crop_box(clip.shape[-2], clip.shape[-1], self.input_size,
                                               rng, self.scales, self.max_distort)
        size = [self.input_size, self.input_size]
        clip = F.resized_crop(clip, top, left, h, w, size, antialias=True)  # [T, 3, S, S]
        if self.flip and rng.random() < 0.5:
            clip = clip.flip(-1)
        return normalize(clip)  # [3, T, S, S]


class ClipRandAugment:
    """timm RandAugment applied with the SAME ops and magnitudes to every frame of a clip.

    timm draws its choices from Python's ``random`` and numpy's global RNG; both states are
    replayed for every frame, as VideoMAE draws once per clip.

    Args:
        config_str (str): e.g. ``'rand-m7-n4-mstd0.5-inc1'`` (``--aa``).
        input_size (int): frame side (translation is ``0.45 * input_size`` as in VideoMAE).
        interpolation (str): PIL interpolation of geometric ops.
    Call: uint8 ``[T, 3, H, W]`` -> uint8 ``[T, 3, H, W]``.
    """

    def __init__(self, config_str, input_size, interpolation="bicubic"):
        hparams = dict(translate_const=int(0.45 * input_size),
                       img_mean=tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN),
                       interpolation=str_to_pil_interp(interpolation))
        self.augment = rand_augment_transform(config_str, hparams)

    def __call__(self, clip):
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in clip.permute(0, 2, 3, 1).numpy():  # [H, W, 3]
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(self.augment(Image.fromarray(frame))))
        return to_tchw(np.stack(out))


class FinetuneTrainTransform:
    """Random resized crop -> flip -> RandAugment -> normalise -> random erasing.

    Args:
        input_size (int): output side.
        scale, ratio (tuple[float]): random resized crop area fraction and aspect range.
        flip (bool): random horizontal flip (False for Something-Something V2).
        auto_augment (str | None): timm RandAugment string (``--aa``), None = off.
        interpolation (str): RandAugment interpolation (``--train_interpolation``).
        reprob (float): random erasing probability per frame (``--reprob``), 0 = off.
        remode (str), recount (int): erasing fill mode and max count (``--remode/--recount``).
    Call: ``(frames uint8 [T, H, W, 3]) -> float32 [3, T, S, S]``; randomness from torch,
    Python ``random`` and numpy's global RNG (``VideoClsDataset`` seeds them per item with
    ``sampling.global_rngs_from``).
    """

    def __init__(self, input_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True,
                 auto_augment=None, interpolation="bicubic", reprob=0.0, remode="pixel", recount=1):
        self.input_size, self.scale, self.ratio, self.flip = input_size, list(scale), list(ratio), flip
        self.rand_augment = ClipRandAugment(auto_augment, input_size, interpolation) \
            if auto_augment else None
        # num_splits=0: erase every frame independently (VideoMAE passes recount, which
        # would leave the first T / recount frames untouched when recount > 1).
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, num_splits=0,
                                   device="cpu") if reprob > 0 else None

    @property
    def decode_short_side(self):
        """-1: no scaling while decoding. Crops down to ``scale[0]`` (8 %) of the area need
        a short side of ``input_size / sqrt(scale[0])`` (792 for 224) to stay at full detail,
        and scaling 1080p frames to that measured no faster than converting them whole
        (``benchmarks/bench_data.py``)."""
        return -1

    def __call__(self, frames):
        clip = to_tchw(frames)  # [T, 3, H, W] uint8
        top, left, h, w = RandomResizedCrop.get_params(clip, self.scale, self.ratio)
        clip = F.resized_crop(clip, top, left, h, w, [self.input_size] * 2, antialias=True)
        if self.flip and torch.rand(()) < 0.5:
            clip = clip.flip(-1)
        if self.rand_augment is not None:
            clip = self.rand_augment(clip)
        clip = normalize(clip)  # [3, T, S, S]
        if self.erase is not None:
            clip = self.erase(clip.transpose(0, 1)).transpose(0, 1)  # frames as the batch
        return clip


class EvalTransform:
    """Resize the short side to ``short_side_size``, crop ``crop_size`` squares, normalise.

    Args:
        short_side_size (int): short side after resizing.
        crop_size (int): crop side (the model input size).
        num_crop (int): 1 = centre crop (validation); 3 = multi-view test crops.
    Call: ``(frames uint8 [T, H, W, 3], crop_idx=0) -> float32 [3, T, crop, crop]``.
    Raises:
        ValueError: ``num_crop`` not 1 or 3, or ``crop_size > short_side_size``.
    """

    def __init__(self, short_side_size, crop_size, num_crop=1):
        spatial_crop_offsets(short_side_size, short_side_size, crop_size, num_crop)  # validate
        self.short_side_size, self.crop_size, self.num_crop = short_side_size, crop_size, num_crop

    @property
    def decode_short_side(self):
        """``short_side_size``: frames decoded at that size need no resize here."""
        return self.short_side_size

    def __call__(self, frames, crop_idx=0):
        clip = F.resize(to_tchw(frames), [self.short_side_size], antialias=True)  # [T, 3, h, w]
        top, left = spatial_crop_offsets(clip.shape[-2], clip.shape[-1], self.crop_size,
                                         self.num_crop)[crop_idx]
        clip = clip[..., top:top + self.crop_size, left:left + self.crop_size]
        return normalize(clip)  # [3, T, crop, crop]
