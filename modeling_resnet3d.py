"""The CNN backbones of the TPN baselines (Yang et al., CVPR 2020, Sec. 4.1): torchvision's
``resnet50`` / ``resnet101``, converted, so every module and state-dict key keeps torchvision's
name (``conv1``, ``bn1``, ``layer3.4.conv1``, ``layer1.0.downsample.0`` ...):

* :class:`SlowOnlyResNet`: every ``Conv2d`` / ``BatchNorm2d`` / ``MaxPool2d`` becomes its
  3-D counterpart with a temporal kernel of 1 and no temporal stride (stem ``(1, 7, 7)``),
  except the ``conv1`` of every block of res4 (``layer3``) and res5 (``layer4``), which gets
  ``(3, 1, 1)`` (TPN Sec. 4.1, Feichtenhofer et al.'s slow-only pathway). 2-D ImageNet
  weights are inflated (I3D, Carreira & Zisserman 2017): ``w.unsqueeze(2)`` repeated ``kt``
  times and divided by ``kt``, so a static clip gives the 2-D network's features.
* :class:`TSMResNet` (Lin et al., "TSM", ICCV 2019): the 2-D network on every frame, the
  ``conv1`` of every block shifting 1/8 of its input channels one frame back in time and
  1/8 one frame forward first (:func:`temporal_shift`). Where the shifted input also goes
  is the ``shift_place`` (:data:`TSM_SHIFT_PLACES`): ``'residual'`` (TSM's own code and
  mmaction2: the shortcut sees the unshifted input) or ``'inplace'`` (decisionforce/TPN's
  default ``tsm_position``: the projection shortcut of each stage's first block sees the
  shifted input too). Published weights need the place they were trained with.

Shapes: clips ``[B, 3, T, H, W]``; for a ``T x 224`` clip res4 (``layer3``) is
``[B, 1024, T, 14, 14]``, res5 (``layer4``) ``[B, 2048, T, 7, 7]``. The neck, the heads and the
classifier around them are in ``modeling_tpn``.
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
import torchvision

RES_STAGES = ("layer1", "layer2", "layer3", "layer4")
FEATURE_STAGES = ("layer3", "layer4")  # res4, res5: what the neck and the heads read

def inflate_weight(weight, kt):
    """A 2-D conv kernel ``[O, I, kh, kw]`` -> ``[O, I, kt, kh, kw]``, repeated over time and
    divided by ``kt`` (I3D inflation: the response to a static clip is the 2-D response)."""
    return weight.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _to_3d(module, kt=1):
    """The 3-D counterpart of a 2-D ``Conv2d`` / ``BatchNorm2d`` / ``MaxPool2d`` (same
    settings, temporal kernel ``kt`` with padding ``kt // 2``, no temporal stride), freshly
    initialised; None for any other module."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv3d(module.in_channels, module.out_channels, (kt, *module.kernel_size),
                         (1, *module.stride), (kt // 2, *module.padding), (1, *module.dilation),
                         module.groups, module.bias is not None)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm3d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if isinstance(module, nn.MaxPool2d):
        return nn.MaxPool3d((1, *_pair(module.kernel_size)), (1, *_pair(module.stride)),
                            (0, *_pair(module.padding)), (1, *_pair(module.dilation)),
                            ceil_mode=module.ceil_mode)
    return None


def _resnet2d(depth):
    """torchvision's ImageNet ResNet, randomly initialised (never downloaded), without its
    ImageNet pooling and fc."""
    if depth not in (50, 101):
        raise ValueError(f"ResNet depth must be 50 or 101, got {depth}")
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    del net.avgpool, net.fc
    return net


class _ResNetStages(nn.Module):
    """The stem and the four stages of a (converted) torchvision ResNet, taken over under
    their torchvision names. ``forward`` runs them and returns res4 and res5; with
    ``use_checkpoint`` every residual block is recomputed in the backward (activation
    checkpointing, TPN's ``with_cp`` for 16x4 and 32x2 clips)."""

    def __init__(self, net, use_checkpoint=False):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", *RES_STAGES):
            setattr(self, name, getattr(net, name))
        self.use_checkpoint = use_checkpoint

    def set_grad_checkpointing(self, enable=True):
        self.use_checkpoint = enable

    def forward_stages(self, x):
        """Stem + res2..res5 on ``x``; returns ``[res4, res5]`` in the layout of ``x``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for name in RES_STAGES:
            for block in getattr(self, name):
                if self.use_checkpoint and x.requires_grad:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if name in FEATURE_STAGES:
                feats.append(x)
        return feats


class SlowOnlyResNet(_ResNetStages):
    """Slow-only 3-D ResNet (TPN's Kinetics backbone): torchvision's ResNet-``depth`` with its
    2-D modules converted to 3-D, stem ``(1, 7, 7)``, no temporal stride or pooling anywhere,
    ``(3, 1, 1)`` kernels in the ``conv1`` of every block of ``inflate_stages``.

    Args:
        depth (int): 50 or 101.
        inflate_stages (tuple[str]): stages whose blocks' ``conv1`` is temporal
            (default res4 and res5: ``('layer3', 'layer4')``).
        use_checkpoint (bool): activation checkpointing per residual block.
    Call: ``[B, 3, T, H, W] -> [res4 [B, 1024, T, H/16, W/16], res5 [B, 2048, T, H/32, W/32]]``.
    Raises:
        ValueError: a depth other than 50 or 101.
    """

    def __init__(self, depth=50, inflate_stages=FEATURE_STAGES, use_checkpoint=False):
        net = _resnet2d(depth)
        for name, module in list(net.named_modules()):
            temporal = re.fullmatch(r"(layer\d)\.\d+\.conv1", name)
            new = _to_3d(module, 3 if temporal and temporal[1] in inflate_stages else 1)
            if new is not None:
                parent, _, attr = name.rpartition(".")
                setattr(net.get_submodule(parent), attr, new)
        for m in net.modules():  # torchvision's initialisation, on the 3-D kernels
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(net, use_checkpoint)

    def forward(self, x):
        return self.forward_stages(x)


def temporal_shift(x, num_segments, fold_div=8):
    """TSM's temporal shift (Lin et al. 2019, Sec. 3): in every frame, the first
    ``C // fold_div`` channels are taken from the next frame (zero in the last frame), the
    next ``C // fold_div`` from the previous frame (zero in the first), the rest stay.

    Args:
        x: ``[N * T, C, H, W]``, the ``T = num_segments`` frames of each clip consecutive.
    Returns:
        a new tensor of ``x``'s shape.
    """
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    ahead = F.pad(x[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # frame t+1, zeros after the last
    behind = F.pad(x[:, :-1, fold:2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # frame t-1
    return torch.cat([ahead, behind, x[:, :, 2 * fold:]], dim=2).view(nt, c, h, w)


class TemporalShiftConv2d(nn.Conv2d):
    """A ``Conv2d`` that applies :func:`temporal_shift` to its input first (same parameters
    and state-dict keys as the convolution it replaces); with ``shift=False`` a plain
    convolution (a projection shortcut under TSM's residual shift, :class:`TSMResNet`)."""

    def __init__(self, conv, num_segments, fold_div=8, shift=True):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.num_segments, self.fold_div, self.shift = num_segments, fold_div, shift

    def forward(self, x):
        return super().forward(temporal_shift(x, self.num_segments, self.fold_div)
                               if self.shift else x)


# Where TSM's shifted input goes besides each block's conv1 (``--tsm_shift``).
TSM_SHIFT_PLACES = {
    "residual": "residual shift (TSM's and mmaction2's: the shortcut sees the unshifted input)",
    "inplace": "in-place shift (decisionforce/TPN's: each stage's projection shortcut sees the "
               "shifted input too)",
}


class TSMResNet(_ResNetStages):
    """TSM ResNet (TPN's Something-Something backbone): torchvision's 2-D ResNet-``depth``
    on every frame, the ``conv1`` of every residual block a :class:`TemporalShiftConv2d`.

    Args:
        depth (int): 50 or 101.
        num_segments (int): frames per clip ``T`` (TSN segments), fixed by the shift.
        use_checkpoint (bool): activation checkpointing per residual block.
        shift_place (str): one of :data:`TSM_SHIFT_PLACES`. The projection shortcut's conv
            (``downsample.0``) is a :class:`TemporalShiftConv2d` that shifts only
            ``'inplace'``, which equals decisionforce/TPN's ``downsample(shifted x)``.
    Call: ``[B, 3, T, H, W] -> [res4 [B, 1024, T, H/16, W/16], res5 [B, 2048, T, H/32, W/32]]``.
    Raises:
        ValueError: a clip of another number of frames than ``num_segments``; an unknown
            ``shift_place``.
    """

    def __init__(self, depth=50, num_segments=8, use_checkpoint=False, shift_place="residual"):
        net = _resnet2d(depth)
        for stage in RES_STAGES:
            for block in getattr(net, stage):
                block.conv1 = TemporalShiftConv2d(block.conv1, num_segments)
                if block.downsample is not None:
                    block.downsample[0] = TemporalShiftConv2d(block.downsample[0], num_segments,
                                                              shift=False)
        super().__init__(net, use_checkpoint)
        self.num_segments = num_segments
        self.set_shift_place(shift_place)

    def set_shift_place(self, place):
        """Move the shift to ``place`` (:data:`TSM_SHIFT_PLACES`); the parameters stay the same
        objects (an optimizer built on them is unaffected)."""
        if place not in TSM_SHIFT_PLACES:
            raise ValueError(f"--tsm_shift {place!r}: expected one of {sorted(TSM_SHIFT_PLACES)}")
        for stage in RES_STAGES:
            for block in getattr(self, stage):
                if block.downsample is not None:
                    block.downsample[0].shift = place == "inplace"
        self.shift_place = place

    def forward(self, x):
        b, c, t, h, w = x.shape
        if t != self.num_segments:
            raise ValueError(f"TSM ResNet built for {self.num_segments} segments (--num_frames) "
                             f"got a clip of {t} frames")
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, 3, H, W]
        return [f.view(b, t, *f.shape[1:]).transpose(1, 2)  # [B, C, T, h, w]
                for f in self.forward_stages(frames)]
