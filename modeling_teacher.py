"""The frozen teachers.

- :class:`Teacher`, MMKD's (Sec. 3.1) and MVD's video teacher: a VideoMAE-pretrained ViT that
  encodes the same visible tokens as the student (or, as in MVD, the whole clip) and provides
  the targets of every MMKD term (its last block's features, and the top-k attention outputs
  of its last block, global and per temporal slice) and MVD's video targets (its last block's
  features at the hidden positions).
- :class:`ImageTeacher`, MVD's image teacher (Wang et al., CVPR 2023, Sec. 3.1): an ImageMAE
  ViT (timm's ``VisionTransformer``) on the first frame of every tubelet.
- :class:`Teachers`: both behind the one call the training step makes.

Every teacher is frozen as timm's distillation task freezes one: ``eval()`` whatever
``train()`` asks, ``requires_grad_(False)``, outside the optimizer, DDP and the student's
checkpoint.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from losses import topk_attention_global, topk_attention_local
from modeling_encoder import VideoViTEncoder, select_tokens
from pos_embed import sincos_2d_table


@dataclass
class TeacherOutput:
    """Targets for the student: MMKD's over the student's visible tokens, MVD's over the
    hidden ones.

    Attributes:
        features: ``[B, N_vis, D_t]`` last-block output (no final norm); None without a video
            teacher.
        attn_global: ``[B, N_vis, D_t]`` or None; attn_local: ``[B, N_vis, T', D_t]`` or None
            (before the student's optional teacher-side Linear, which the loss applies).
        img_feat: ``[B, N_hidden, D_img]`` or None: the image teacher's features at the hidden
            positions (MVD).
        vid_feat: ``[B, N_hidden, D_t]`` or None: the video teacher's last-block features at
            the hidden positions, the whole clip encoded (MVD).
    """
    features: Optional[torch.Tensor] = None
    attn_global: Optional[torch.Tensor] = None
    attn_local: Optional[torch.Tensor] = None
    img_feat: Optional[torch.Tensor] = None
    vid_feat: Optional[torch.Tensor] = None


def attention_views(maps, views, num_k, kd_T, num_slices, pairing="slice"):
    """Top-k attention outputs of one block's :class:`AttnMaps` for the requested ``views``
    (``'global'``, ``'local'``); ``(global [B, N, D] | None, local [B, N, S, D] | None)``.
    ``pairing``: the local view's value pairing (``losses.topk_attention_local``)."""
    g = topk_attention_global(maps.logits, maps.v, num_k, kd_T) if "global" in views else None
    loc = (topk_attention_local(maps.logits, maps.v, num_k, num_slices, kd_T, pairing=pairing)
           if "local" in views else None)
    return g, loc


class Teacher(nn.Module):
    """Frozen ViT teacher: ``eval()``, no gradients, never in an optimizer.

    Args:
        encoder: a :class:`VideoViTEncoder` (built without a final norm).
        sees_all_tokens: encode the whole clip and read the targets at the student's visible
            positions (MVD) instead of encoding only the visible tokens (MMKD's recipe).
    """

    def __init__(self, encoder: VideoViTEncoder, sees_all_tokens=False):
        super().__init__()
        self.encoder = encoder
        self.sees_all_tokens = sees_all_tokens
        self.freeze()

    @property
    def embed_dim(self):
        return self.encoder.embed_dim

    @property
    def patch_embed(self):
        return self.encoder.patch_embed

    @property
    def pos_embed_type(self):
        return self.encoder.pos_embed_type

    def set_position_table(self, kind):
        self.encoder.set_position_table(kind)

    def freeze(self):
        self.encoder.eval()
        self.encoder.requires_grad_(False)
        return self

    def train(self, mode=True):
        """A teacher never leaves eval mode (no dropout, no drop path)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x, bool_masked_pos, views=(), num_k=10, kd_T=1.0, pairing="slice",
                hidden=False):
        """Targets for a clip ``x [B, 3, T, H, W]`` hidden by ``bool_masked_pos [B, N]``;
        ``pairing``: the local view's value pairing (the student's); ``hidden``: also MVD's
        video targets (``vid_feat``, needs ``sees_all_tokens``).

        ``no_grad`` rather than ``inference_mode``: the targets are saved by the student's
        loss for its backward, which inference tensors may not be.
        """
        if hidden and not self.sees_all_tokens:
            raise ValueError("targets at the hidden positions need a teacher that sees the "
                             "whole clip (sees_all_tokens)")
        enc = self.encoder
        out = enc.forward_features(x, None if self.sees_all_tokens else bool_masked_pos,
                                   maps_from=(-1,) if views else ())
        feats = out.tokens
        maps = out.maps.get(len(enc.blocks) - 1)
        vid = select_tokens(feats, bool_masked_pos) if hidden else None
        if self.sees_all_tokens:  # keep the rows (and keys) of the student's visible tokens
            vis = ~bool_masked_pos
            feats = select_tokens(feats, vis)
            if maps is not None:  # logits among the visible tokens only, never N x N
                maps = maps.select(vis.nonzero()[:, 1].reshape(feats.shape[0], -1))
        g = loc = None
        if views:
            g, loc = attention_views(maps, views, num_k, kd_T, enc.patch_embed.grid_size[0],
                                     pairing)
        return TeacherOutput(features=feats, attn_global=g, attn_local=loc, vid_feat=vid)


class ImageTeacher(nn.Module):
    """MVD's image teacher (METHOD.md, "MVD exactly"): an ImageMAE ViT (He et al. 2022: class
    token, fused qkv bias, MAE's fixed 2-D sin-cos table) applied to the first frame of every
    tubelet, its last block's tokens **before** the final norm, class token dropped, in
    ``(t, h, w)`` order: one target per student token.

    The ViT is timm's ``VisionTransformer`` (an image model; MAE's ``mae_pretrain_vit_*.pth``
    load into it through timm's ``checkpoint_filter_fn``, ``weights.load_image_teacher``).
    Frames whose size differs from the ViT's (``--teacher_input_size``, 196 for the patch-14
    ViT-H) are resized bilinearly (antialiased) from the student's crop, where MVD's loader
    resizes the same crop to both sizes.

    Args:
        vit: a timm ``VisionTransformer`` with a class token; its ``pos_embed`` is replaced by
            MAE's fixed table and frozen.
        tubelet_size: the student's; frames ``0, t, 2t, ...`` are encoded.
    """

    def __init__(self, vit, tubelet_size=2):
        super().__init__()
        self.vit, self.tubelet_size = vit, tubelet_size
        table = sincos_2d_table(vit.patch_embed.grid_size, vit.embed_dim, class_token=True)
        with torch.no_grad():
            vit.pos_embed.copy_(table)
        self.freeze()

    @property
    def embed_dim(self):
        return self.vit.embed_dim

    @property
    def grid_size(self):
        """``(h, w)`` patches per frame."""
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def img_size(self):
        return self.vit.patch_embed.img_size[0]

    def freeze(self):
        self.train(False)
        self.vit.requires_grad_(False)
        return self

    def train(self, mode=True):
        """A teacher never leaves eval mode."""
        return super().train(False)

    @torch.no_grad()
    def features(self, x):
        """``x [B, 3, T, H, W]`` -> ``[B, (T / tubelet) * h * w, D_img]``: frame 0 of every
        tubelet through the ViT, last block before the final norm, class token dropped."""
        b = x.shape[0]
        frames = rearrange(x[:, :, ::self.tubelet_size], "b c t h w -> (b t) c h w")
        if frames.shape[-2:] != (self.img_size, self.img_size):
            frames = F.interpolate(frames, size=(self.img_size, self.img_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        tokens = self.vit.forward_intermediates(frames, indices=1, norm=False, output_fmt="NLC",
                                                intermediates_only=True)[0]  # [B T', h w, D]
        return rearrange(tokens, "(b t) l d -> b (t l) d", b=b)

    @torch.no_grad()
    def forward(self, x, bool_masked_pos):
        """MVD's image targets: :meth:`features` at the hidden positions,
        ``[B, N_hidden, D_img]``."""
        return select_tokens(self.features(x), bool_masked_pos)


class Teachers(nn.Module):
    """The frozen teachers of an MVD run behind the call the training step makes on a
    :class:`Teacher` (so MMKD's terms, MVD's terms and the pixel term combine in one run).

    Args:
        video: the video :class:`Teacher` (whole clip) or None; it serves MVD's video targets
            (``vid_feat``, when ``video_targets``) and MMKD's targets, all from one forward.
        image: the :class:`ImageTeacher` or None.
        video_targets: compute ``vid_feat`` (its loss weight is not zero).
    """

    def __init__(self, video=None, image=None, video_targets=True):
        super().__init__()
        self.video, self.image, self.video_targets = video, image, video_targets
        self.train(False)

    def train(self, mode=True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, x, bool_masked_pos, views=(), num_k=10, kd_T=1.0, pairing="slice"):
        """Every target the run needs, as one :class:`TeacherOutput`."""
        out = TeacherOutput()
        if self.video is not None:
            out = self.video(x, bool_masked_pos, views, num_k, kd_T, pairing,
                             hidden=self.video_targets)
        if self.image is not None:
            out.img_feat = self.image(x, bool_masked_pos)
        return out
