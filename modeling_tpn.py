"""The CNN family: Temporal Pyramid Network (Yang et al., "Temporal Pyramid Network for Action
Recognition", CVPR 2020) on a slow-only 3-D ResNet or a TSM ResNet, and those backbones alone
(the baselines of the paper's tables).

- Backbones (``modeling_resnet3d``): torchvision's ``resnet50`` / ``resnet101`` converted to
  a slow-only 3-D ResNet (:class:`SlowOnlyResNet`) or a TSM ResNet (:class:`TSMResNet`),
  torchvision's module and state-dict key names kept.
- :class:`TPN`, the neck (Sec. 3) over res4 (1024 channels) and res5 (2048): spatial semantic
  modulation (res4: a ``(1, 3, 3)`` stride-2 conv to 2048 channels + BN + ReLU; res5 as is),
  temporal rate modulation (per level a grouped (32) ``(3, 1, 1)`` conv to 1024 channels,
  then a temporal max-pool by the level's rate), information flow top-down (upsample, add)
  then bottom-up (``(3, 1, 1)`` conv, add) on the top-down result ("cascade flow"), a level
  fusion of each flow (per level grouped 1x1 conv + BN + ReLU, concatenate, 1x1 conv to 2048)
  and the pyramid fusion of the two (4096 -> 2048). The auxiliary head on res4 (Sec. 3.3:
  ``(1, 3, 3)`` stride-2 conv to 2048 + BN + ReLU, pool, dropout 0.5, fc) is trained with
  weight 0.5 and not run at test time.
- :class:`ClsHead`: average pool, dropout, ``fc_cls`` (normal init, std 0.01). At test time
  it is fully convolutional: ``fc_cls`` applied as a 1x1x1 convolution at every space-time
  position, the logits averaged (TPN's "fully-convolutional testing" on 256 px crops).

Module names follow the published checkpoints: torchvision's in ``backbone``, mmaction2's in
``neck`` (``level_fusion_1`` is the top-down flow's fusion, ``level_fusion_2`` the
bottom-up's), ``cls_head.fc_cls`` as in both. :func:`remap_cnn_keys` maps the
decisionforce/TPN and mmaction2 layouts onto these keys.

Shapes: clips ``[B, 3, T, H, W]``; for a ``T x 224`` clip res4 is ``[B, 1024, T, 14, 14]``,
res5 ``[B, 2048, T, 7, 7]`` and the neck's output ``[B, 2048, T', 7, 7]`` with ``T' = 1`` for
the TPN configurations (every level pooled by its rate).
"""
import re
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from checkpoint import load_checkpoint, saved_args, unwrap_state_dict
from modeling_resnet3d import (RES_STAGES, TSM_SHIFT_PLACES, SlowOnlyResNet, TSMResNet,
                               inflate_weight)
from weights import load_weights


# ---------------------------------------------------------------------------------------------
# the TPN neck (Sec. 3) and the heads
# ---------------------------------------------------------------------------------------------

class ConvBN(nn.Module):
    """``Conv3d`` (no bias), then optionally ``BatchNorm3d`` (``bn``) and ReLU: the unit every
    part of the neck is made of (mmaction2's ``ConvModule`` key names ``conv`` / ``bn``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm3d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


class DownSample(nn.Module):
    """A :class:`ConvBN` with a max-pool of kernel = stride ``scale`` (ceil mode) before or
    after it (``pool_first``)."""

    def __init__(self, conv, scale=(1, 1, 1), pool_first=False):
        super().__init__()
        self.conv, self.pool_first = conv, pool_first
        self.pool = nn.MaxPool3d(scale, scale, 0, ceil_mode=True)

    def forward(self, x):
        return self.conv(self.pool(x)) if self.pool_first else self.pool(self.conv(x))


class LevelFusion(nn.Module):
    """Fusion of the pyramid's levels (Sec. 3.2): each level through a grouped (32) 1x1x1
    conv + BN + ReLU (after a temporal max-pool by ``scales[i]``, which brings it to the top
    level's temporal size), concatenated over channels, then 1x1x1 conv + BN + ReLU.

    Call: list of ``[B, in_channels[i], T_i, h, w]`` -> ``[B, out_channels, T_top, h, w]``.
    """

    def __init__(self, in_channels=(1024, 1024), mid_channels=(1024, 1024), out_channels=2048,
                 scales=(1, 1)):
        super().__init__()
        self.downsamples = nn.ModuleList(
            DownSample(ConvBN(cin, cmid, 1, groups=32), (s, 1, 1), pool_first=True)
            for cin, cmid, s in zip(in_channels, mid_channels, scales))
        self.fusion_conv = ConvBN(sum(mid_channels), out_channels, 1)

    def forward(self, feats):
        return self.fusion_conv(torch.cat([d(f) for d, f in zip(self.downsamples, feats)], 1))


class SpatialModulation(nn.Module):
    """Spatial semantic modulation (Sec. 3.1): each level but the top one through stride-2
    ``(1, 3, 3)`` conv + BN + ReLU stages, each doubling the channels, until it has
    ``out_channels`` (res4: one stage, 1024 -> 2048 channels, 14x14 -> 7x7); the top level as
    it is. Call: list of ``[B, C_i, T, h_i, w_i]`` -> list of ``[B, out_channels, T, h, w]``."""

    def __init__(self, in_channels=(1024, 2048), out_channels=2048):
        super().__init__()
        levels = []
        for c in in_channels:
            stages, width = [], c
            while width < out_channels:
                stages.append(ConvBN(width, 2 * width, (1, 3, 3), (1, 2, 2), (0, 1, 1)))
                width *= 2
            levels.append(nn.Sequential(*stages) if stages else nn.Identity())
        self.spatial_modulation = nn.ModuleList(levels)

    def forward(self, feats):
        return [m(f) for m, f in zip(self.spatial_modulation, feats)]


class TemporalModulation(nn.Module):
    """Temporal rate modulation of one level (Sec. 3.1): grouped (32) ``(3, 1, 1)`` conv
    (no BN, no activation), then a temporal max-pool of kernel = stride ``rate`` (ceil mode).
    Call: ``[B, in_channels, T, h, w] -> [B, out_channels, ceil(T / rate), h, w]``."""

    def __init__(self, in_channels=2048, out_channels=1024, rate=8):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), groups=32,
                           norm=False, act=False)
        self.pool = nn.MaxPool3d((rate, 1, 1), (rate, 1, 1), 0, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(x))


class AuxHead(nn.Module):
    """Auxiliary head on res4 (Sec. 3.3, "deep supervision"): ``(1, 3, 3)`` stride-2 conv to
    ``2 * in_channels`` + BN + ReLU, global average pool, dropout 0.5, fc.
    Call: ``[B, in_channels, T, h, w] -> [B, num_classes]``."""

    def __init__(self, in_channels=1024, num_classes=400):
        super().__init__()
        self.conv = ConvBN(in_channels, 2 * in_channels, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2 * in_channels, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.conv(x).mean(dim=(2, 3, 4))))


class TPN(nn.Module):
    """The temporal pyramid neck (Sec. 3) over res4 and res5, cascade flow.

    Args:
        num_classes (int): classes of the auxiliary head (None = no auxiliary head).
        rates (tuple[int]): temporal max-pool of each level's temporal modulation
            (decisionforce/TPN's ``scales``): ``(T, T)`` for the R50 and TSM configurations,
            ``(T / 2, T)`` for R101 (res4 keeps 2 time steps, res5 one).
        in_channels (tuple[int]): channels of res4, res5.
        out_channels (int): channels of each level after temporal modulation.
    The bottom-up flow's conv and the level fusion pool each level by
    ``rates[-1] // rates[i]`` in time, to the top level's temporal size.

    Call: ``[res4, res5] -> (features [B, 2048, T / rates[-1], h, w], aux logits [B, C] in
    training with an auxiliary head, else None)``; ``h, w`` are res5's.
    """

    def __init__(self, num_classes=400, rates=(8, 8), in_channels=(1024, 2048),
                 out_channels=1024):
        super().__init__()
        top = in_channels[-1]
        scales = [rates[-1] // r for r in rates]
        self.spatial_modulation = SpatialModulation(in_channels, top)
        self.temporal_modulation_ops = nn.ModuleList(
            TemporalModulation(top, out_channels, r) for r in rates)
        self.downsample_ops = nn.ModuleList(  # bottom-up: level i -> level i + 1
            DownSample(ConvBN(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0),
                              norm=False, act=False), (s // scales[i + 1], 1, 1))
            for i, s in enumerate(scales[:-1]))
        fused = 2048
        self.level_fusion_1 = LevelFusion((out_channels,) * len(rates),
                                          (out_channels,) * len(rates), fused, scales)
        self.level_fusion_2 = LevelFusion((out_channels,) * len(rates),
                                          (out_channels,) * len(rates), fused, scales)
        self.pyramid_fusion = ConvBN(2 * fused, 2048, 1)
        self.aux_head = AuxHead(in_channels[-2], num_classes) if num_classes else None

    def forward(self, feats):
        aux = self.aux_head(feats[-2]) if self.aux_head is not None and self.training else None
        x = self.spatial_modulation(feats)  # every level [B, 2048, T, h, w]
        x = [m(f) for m, f in zip(self.temporal_modulation_ops, x)]  # [B, 1024, T_i, h, w]
        for i in range(len(x) - 1, 0, -1):  # top-down: upsample the higher level in time, add
            x[i - 1] = x[i - 1] + F.interpolate(x[i], size=x[i - 1].shape[2:], mode="nearest")
        top_down = self.level_fusion_1(x)
        for i in range(len(x) - 1):  # bottom-up, on the top-down result (cascade flow)
            x[i + 1] = x[i + 1] + self.downsample_ops[i](x[i])
        bottom_up = self.level_fusion_2(x)
        return self.pyramid_fusion(torch.cat([top_down, bottom_up], dim=1)), aux


class ClsHead(nn.Module):
    """Classification head: average pool, dropout, ``fc_cls``.

    Training (or ``fully_conv=False``): logits of the space-time mean of the features.
    Test (``fully_conv=True``, the default in eval mode): fully convolutional, ``fc_cls``
    applied as a 1x1x1 convolution at every position of the feature map and the logits
    averaged over space and time (TPN's testing protocol; by linearity the same logits as
    pooling first, at any feature-map size).

    Call: ``[B, in_channels, T, h, w] -> [B, num_classes]``.
    """

    def __init__(self, in_channels=2048, num_classes=400, dropout=0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc_cls = nn.Linear(in_channels, num_classes)

    def class_map(self, x):
        """Logits at every position: ``[B, C_in, T, h, w] -> [B, num_classes, T, h, w]``."""
        return F.conv3d(x, self.fc_cls.weight[:, :, None, None, None], self.fc_cls.bias)

    def forward(self, x, fully_conv=None):
        if fully_conv if fully_conv is not None else not self.training:
            return self.class_map(x).mean(dim=(2, 3, 4))
        return self.fc_cls(self.dropout(x.mean(dim=(2, 3, 4))))


class AuxOutput(NamedTuple):
    """Training output of a classifier with an auxiliary head: ``logits``, ``aux_logits``
    (both ``[B, num_classes]``) and the auxiliary loss weight ``aux_weight``."""
    logits: torch.Tensor
    aux_logits: torch.Tensor
    aux_weight: float


class VideoResNetClassifier(nn.Module):
    """Backbone -> optional :class:`TPN` neck -> :class:`ClsHead`.

    Args:
        backbone: :class:`SlowOnlyResNet` or :class:`TSMResNet`.
        neck: :class:`TPN` or None (the baseline: the head reads res5).
        num_classes (int): classes (``--nb_classes``).
        dropout (float): before ``fc_cls`` (``--fc_drop_rate``; TPN: 0.5).
        aux_weight (float): weight of the auxiliary head's loss in training (TPN: 0.5).
    Call: ``[B, 3, T, H, W]`` -> logits ``[B, num_classes]``; in training with an auxiliary
    head an :class:`AuxOutput` (``engine_for_finetuning.classification_loss`` adds
    ``aux_weight x`` its loss).
    """

    def __init__(self, backbone, neck=None, num_classes=400, dropout=0.5, aux_weight=0.5):
        super().__init__()
        self.num_classes, self.aux_weight = num_classes, aux_weight
        self.backbone = backbone
        self.neck = neck
        self.cls_head = ClsHead(2048, num_classes, dropout)
        self._init_weights()

    def _init_weights(self):
        """The references' initialisation of the parts after the backbone: xavier-uniform
        convs, BN weight 1 / bias 0, fcs normal with std 0.01 and zero bias."""
        for m in [*(self.neck.modules() if self.neck is not None else ()),
                  *self.cls_head.modules()]:
            if isinstance(m, nn.Conv3d):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # The model interface the training code asks instead of checking types (the ViT
    # classifier, ``modeling_finetune.VideoViTClassifier``, answers the same questions).
    is_fully_convolutional = True  # any input size; ``--fcn_test`` applies
    # mmcv's SGD of the CNN recipes decays every parameter, biases and BatchNorms included
    # (timm's ``create_optimizer_v2(filter_bias_and_bn=)``)
    filter_bias_and_bn = False

    def no_weight_decay(self):
        """Parameter names kept out of weight decay: none (see ``filter_bias_and_bn``)."""
        return set()

    def get_num_layers(self):
        """The backbone's residual blocks (ResNet-50: 16, ResNet-101: 33)."""
        return sum(len(getattr(self.backbone, name)) for name in RES_STAGES)

    def set_grad_checkpointing(self, enable=True):
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, x):
        """``[B, 3, T, H, W]`` -> ``(features [B, 2048, T', h, w], aux logits or None)``."""
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else (feats[-1], None)

    def forward_head(self, feats, pre_logits=False):
        """``feats [B, 2048, T', h, w]`` -> logits ``[B, num_classes]`` (:class:`ClsHead`;
        fully convolutional in eval mode), or with ``pre_logits`` the pooled ``[B, 2048]``."""
        return feats.mean(dim=(2, 3, 4)) if pre_logits else self.cls_head(feats)

    def forward(self, x):
        feats, aux = self.forward_features(x)
        logits = self.forward_head(feats)
        return logits if aux is None else AuxOutput(logits, aux, self.aux_weight)

    def load_pretrained(self, ckpt, source, strict=False):
        """This family's part of ``weights.load_pretrained`` (which hands it ``ckpt``, a
        loaded checkpoint): any CNN layout (:func:`remap_cnn_keys`), the TSM shift the file
        was trained with (:func:`adopt_tsm_shift`). Unless ``strict``, the backbone must be
        complete and fit, the neck and heads may be new (a baseline checkpoint into a TPN
        model) or left over, and heads of another number of classes are dropped (fine-tuning
        on another data set).

        Returns:
            ``(missing, unexpected)``: the allowed missing / unused keys, for the log.
        Raises:
            weights.KeyMismatchError: (a ValueError) every key that is not allowed, named.
        """
        layout, state = remap_cnn_keys(unwrap_state_dict(ckpt))
        print(f"{source}: {layout} CNN checkpoint layout")
        adopt_tsm_shift(self, ckpt, source, layout)
        if strict:
            return load_weights(self, state, source)
        own = self.state_dict()
        for k in [k for k, v in state.items() if k in own and own[k].shape != v.shape
                  and re.match(r"(cls_head\.fc_cls|neck\.aux_head\.fc)\.", k)]:
            del state[k]
        return load_weights(self, state, source, allow_missing=(r"(?!backbone\.)",),
                            allow_unexpected=(r"(?!backbone\.)",))


# ---------------------------------------------------------------------------------------------
# the model zoo's configurations (decisionforce/TPN config_files) and their names
# ---------------------------------------------------------------------------------------------

# name: (backbone, depth, with the TPN neck)
CNN_CONFIGS = {
    "tpn_r50": ("slowonly", 50, True),
    "tpn_r101": ("slowonly", 101, True),
    "tsm_r50_tpn": ("tsm", 50, True),
    "slowonly_r50": ("slowonly", 50, False),
    "slowonly_r101": ("slowonly", 101, False),
    "tsm_r50": ("tsm", 50, False),
}


def tpn_rates(depth, num_frames):
    """The temporal rates of the TPN configurations for ``num_frames``-frame clips:
    ``(T, T)`` for ResNet-50 (slow-only and TSM), ``(T // 2, T)`` for ResNet-101 (its
    configurations keep two time steps in res4: ``scales=(4, 8)`` at 8x8)."""
    return (max(num_frames // 2, 1), num_frames) if depth == 101 else (num_frames, num_frames)


def create_cnn(name, num_classes=400, num_frames=8, dropout=0.5, use_checkpoint=False,
               tsm_shift="residual"):
    """The CNN classifier ``name`` (one of :data:`CNN_CONFIGS`), randomly initialised.

    Args:
        num_frames (int): frames per clip: the TSM segments and the neck's temporal rates.
        tsm_shift (str): the TSM backbones' shift place (:data:`TSM_SHIFT_PLACES`); ignored by
            the slow-only ones.
    Raises:
        ValueError: an unknown name.
    """
    if name not in CNN_CONFIGS:
        raise ValueError(f"--model {name!r} is not a known CNN; choose from {sorted(CNN_CONFIGS)}")
    kind, depth, with_tpn = CNN_CONFIGS[name]
    backbone = (SlowOnlyResNet(depth, use_checkpoint=use_checkpoint) if kind == "slowonly"
                else TSMResNet(depth, num_frames, use_checkpoint=use_checkpoint,
                               shift_place=tsm_shift))
    neck = TPN(num_classes, tpn_rates(depth, num_frames)) if with_tpn else None
    return VideoResNetClassifier(backbone, neck, num_classes, dropout)


# ---------------------------------------------------------------------------------------------
# checkpoint layouts -> our keys
# ---------------------------------------------------------------------------------------------

# mmaction2 wraps every conv of the backbone in a ConvModule (``conv1.conv`` / ``conv1.bn``,
# ``downsample.conv`` / ``downsample.bn``) and TSM's shifted convs in a TemporalShift
# (``conv1.conv.net``); its neck and head keys are ours.
_MMACTION2_RULES = [
    (r"^backbone\.conv1\.conv\.", "backbone.conv1."),
    (r"^backbone\.conv1\.bn\.", "backbone.bn1."),
    (r"^(backbone\.layer\d\.\d+)\.conv(\d)\.conv\.(?:net\.)?", r"\1.conv\2."),
    (r"^(backbone\.layer\d\.\d+)\.conv(\d)\.bn\.", r"\1.bn\2."),
    (r"^(backbone\.layer\d\.\d+)\.downsample\.conv\.", r"\1.downsample.0."),
    (r"^(backbone\.layer\d\.\d+)\.downsample\.bn\.", r"\1.downsample.1."),
]
# decisionforce/TPN: torchvision names in the backbone (ours), the neck under ``necks`` with
# bare convs and Sequential fusions; ``level_fusion_op2`` fuses the top-down flow,
# ``level_fusion_op`` the bottom-up one.
_ORIGINAL_RULES = [
    (r"^necks\.", "neck."),
    (r"^neck\.temporal_modulation_ops\.(\d+)\.conv\.",
     r"neck.temporal_modulation_ops.\1.conv.conv."),
    (r"^neck\.downsampling_ops\.(\d+)\.conv\.", r"neck.downsample_ops.\1.conv.conv."),
    (r"^neck\.level_fusion_op2\.", "neck.level_fusion_1."),
    (r"^neck\.level_fusion_op\.", "neck.level_fusion_2."),
    (r"^(neck\.level_fusion_\d)\.ops\.(\d+)\.conv\.", r"\1.downsamples.\2.conv.conv."),
    (r"^(neck\.level_fusion_\d)\.ops\.(\d+)\.norm\.", r"\1.downsamples.\2.conv.bn."),
    (r"^(neck\.level_fusion_\d)\.fusion_conv\.0\.", r"\1.fusion_conv.conv."),
    (r"^(neck\.level_fusion_\d)\.fusion_conv\.1\.", r"\1.fusion_conv.bn."),
    (r"^neck\.pyramid_fusion_op\.0\.", "neck.pyramid_fusion.conv."),
    (r"^neck\.pyramid_fusion_op\.1\.", "neck.pyramid_fusion.bn."),
    (r"^neck\.aux_head\.convs\.", "neck.aux_head.conv."),
]
# not weights: mmengine's data pre-processor (input mean/std, which our transforms apply)
_IGNORED = re.compile(r"^data_preprocessor\.")


def checkpoint_layout(state):
    """Which CNN layout a state dict has: ``'mmaction2'`` (``backbone.conv1.conv.weight``),
    ``'original'`` (decisionforce/TPN: ``backbone.conv1.weight`` and ``necks.*``) or
    ``'ours'`` (``backbone.conv1.weight``, ``neck.*`` if any; a baseline's checkpoint of the
    original repository has this layout too).

    Raises:
        ValueError: none of these; the message lists the first keys.
    """
    keys = list(state)
    if "backbone.conv1.conv.weight" in state:
        return "mmaction2"
    if "backbone.conv1.weight" in state:
        return "original" if any(k.startswith("necks.") for k in keys) else "ours"
    hint = ("; an ImageNet ResNet initialises the backbone with --imagenet_init"
            if "conv1.weight" in state else "")
    raise ValueError(f"unrecognised CNN checkpoint layout ({len(keys)} tensors; first keys "
                     f"{keys[:8]}): expected ours or decisionforce/TPN's (backbone.conv1.weight,"
                     f" necks.* / neck.*, cls_head.fc_cls.*) or mmaction2's "
                     f"(backbone.conv1.conv.weight, neck.*, cls_head.fc_cls.*){hint}")


def remap_cnn_keys(state):
    """A CNN state dict of any supported layout (:func:`checkpoint_layout`) -> our keys.

    Args:
        state: a plain state dict (``checkpoint.unwrap_state_dict`` of a checkpoint).
    Returns:
        ``(layout, state dict in our keys)``.
    Raises:
        ValueError: an unknown layout.
    """
    layout = checkpoint_layout(state)
    rules = {"mmaction2": _MMACTION2_RULES, "original": _ORIGINAL_RULES}.get(layout, [])
    out = {}
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return layout, out


def imagenet_to_backbone(state, backbone):
    """A torchvision ImageNet ResNet state dict -> ``backbone``'s state dict: the ``fc.*``
    classifier dropped, 2-D kernels inflated (:func:`inflate_weight`) where ``backbone`` has
    3-D ones. Keys ``backbone`` does not have are kept, for the caller to report."""
    own = backbone.state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key in own and own[key].ndim == 5 and value.ndim == 4:
            value = inflate_weight(value, own[key].shape[2])
        out[key] = value
    return out


def checkpoint_shift_place(ckpt, layout):
    """The TSM shift place (``TSM_SHIFT_PLACES``) a CNN checkpoint was trained
    with, and the evidence, or ``(None, None)`` when it does not tell.

    mmaction2's files use the residual shift (``shift_place='blockres'``); decisionforce/TPN's
    (its neck layout, or its mmcv ``{'meta', 'state_dict'}`` wrapper around torchvision keys
    for the baselines) the in-place one (its default ``tsm_position``); ours record
    ``tsm_shift`` in their saved arguments.

    Args:
        ckpt: the loaded checkpoint (with its wrapper); layout:
            :func:`checkpoint_layout`'s.
    """
    if layout == "mmaction2":
        return "residual", "the mmaction2 layout"
    if layout == "original" or (isinstance(ckpt, dict) and "state_dict" in ckpt
                                and "meta" in ckpt and "model" not in ckpt):
        return "inplace", "the decisionforce/TPN layout"
    place = saved_args(ckpt).get("tsm_shift")
    return ((place, "the saved arguments") if place in TSM_SHIFT_PLACES
            else (None, None))


def adopt_tsm_shift(model, ckpt, source, layout=None):
    """Give a TSM classifier the shift place its checkpoint was trained with
    (:func:`checkpoint_shift_place`) and print which it uses; like the position table, the
    checkpoint's word wins over ``--tsm_shift`` (the other place gives other features from
    the same weights). Nothing for other models.

    Returns:
        the place the model uses now, or None (not a TSM model).
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, TSMResNet):
        return None
    if layout is None:
        layout = checkpoint_layout(unwrap_state_dict(ckpt))
    place, evidence = checkpoint_shift_place(ckpt, layout)
    own = backbone.shift_place
    if place is None:
        print(f"TSM shift: {own} (--tsm_shift); {source} records none")
    elif place != own:
        backbone.set_shift_place(place)
        print(f"TSM shift: {TSM_SHIFT_PLACES[place]}, from {evidence} of "
              f"{source}, instead of --tsm_shift {own}")
    else:
        print(f"TSM shift: {TSM_SHIFT_PLACES[place]}, from {evidence} of {source}")
    return backbone.shift_place


def load_imagenet_init(model, path):
    """Initialise a CNN classifier's backbone from torchvision ImageNet ResNet weights at
    ``path`` (``--imagenet_init``: the state dict of ``torchvision.models.resnet50`` /
    ``resnet101``, as their ``.pth`` files hold it, possibly in a ``state_dict`` / ``model``
    wrapper), loaded safely; the ImageNet ``fc`` is dropped and 2-D kernels are inflated where
    the backbone is 3-D (:func:`imagenet_to_backbone`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a tensors-only checkpoint, or a missing, left-over or wrongly shaped
            backbone weight (all listed; e.g. a ResNet-50 file for a ResNet-101).
    """
    state = imagenet_to_backbone(unwrap_state_dict(load_checkpoint(path)), model.backbone)
    return load_weights(model.backbone, state, path)
