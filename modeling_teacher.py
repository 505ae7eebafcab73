"""The frozen teacher of MMKD (Sec. 3.1): a VideoMAE-pretrained ViT that encodes the same
visible tokens as the student (or, as in MVD, the whole clip) and provides the targets of
every distillation term: its last block's features, and the top-k attention outputs of its
last block (global and per temporal slice).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from losses import topk_attention_global, topk_attention_local
from modeling_encoder import VideoViTEncoder


@dataclass
class TeacherOutput:
    """Targets for the student, all over the student's visible tokens.

    Attributes:
        features: ``[B, N_vis, D_t]`` last-block output (no final norm).
        attn_global: ``[B, N_vis, D_t]`` or None; attn_local: ``[B, N_vis, T', D_t]`` or None
            (before the student's optional teacher-side Linear, which the loss applies).
    """
    features: torch.Tensor
    attn_global: Optional[torch.Tensor] = None
    attn_local: Optional[torch.Tensor] = None


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
    def forward(self, x, bool_masked_pos, views=(), num_k=10, kd_T=1.0, pairing="slice"):
        """Targets for a clip ``x [B, 3, T, H, W]`` hidden by ``bool_masked_pos [B, N]``;
        ``pairing``: the local view's value pairing (the student's).

        ``no_grad`` rather than ``inference_mode``: the targets are saved by the student's
        loss for its backward, which inference tensors may not be.
        """
        enc = self.encoder
        out = enc.forward_features(x, None if self.sees_all_tokens else bool_masked_pos,
                                   maps_from=(-1,) if views else ())
        feats = out.tokens
        maps = out.maps.get(len(enc.blocks) - 1)
        if self.sees_all_tokens:  # keep the rows (and keys) of the student's visible tokens
            b, _, d = feats.shape
            vis = ~bool_masked_pos
            feats = feats[vis].reshape(b, -1, d)
            if maps is not None:  # logits among the visible tokens only, never N x N
                maps = maps.select(vis.nonzero()[:, 1].reshape(b, -1))
        g = loc = None
        if views:
            g, loc = attention_views(maps, views, num_k, kd_T, enc.patch_embed.grid_size[0],
                                     pairing)
        return TeacherOutput(features=feats, attn_global=g, attn_local=loc)
