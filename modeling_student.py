"""The MMKD student (Sec. 3 of the paper), read in the order of the method:

1. the tube-masked clip's visible tokens go through the ViT encoder (``encoder``);
2. its last block's features and top-k attention outputs (global, per slice) are projected
   to the teacher's width (``projector``) for the MM-hint, MM-relation and MM-hidden terms;
3. optionally a light VideoMAE decoder (``decoder``) predicts the hidden tubelets' pixels.

State-dict keys (``encoder.*``, ``encoder_to_decoder.*``, ``mask_token``, ``decoder.*``) are
VideoMAE's ``PretrainVisionTransformer`` keys, plus ``projector.*``.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Mlp, trunc_normal_

from modeling_encoder import Block, VideoViTEncoder, init_weights, position_table
from modeling_teacher import attention_views


@dataclass
class StudentOutput:
    """What the losses read; attention and feature outputs are in the teacher's width.

    Attributes:
        features: ``[B, N_vis, D_t]`` projected last-block features (None without a teacher).
        attn_global: ``[B, N_vis, D_t]`` or None; attn_local: ``[B, N_vis, T', D_t]`` or None.
        pixels: ``[B, N_hidden, tubelet * patch * patch * 3]`` or None (no decoder).
    """
    features: Optional[torch.Tensor] = None
    attn_global: Optional[torch.Tensor] = None
    attn_local: Optional[torch.Tensor] = None
    pixels: Optional[torch.Tensor] = None


class Projector(nn.Module):
    """Student -> teacher width maps (METHOD.md, "a trainable projector"): an MLP
    ``D_s -> 2 D_s -> D_t`` (ReLU) for features and one Linear ``D_s -> D_t`` per attention
    view. Identity maps when the widths are equal."""

    def __init__(self, dim_s, dim_t, views=("global", "local")):
        super().__init__()
        same = dim_s == dim_t
        self.feat = nn.Identity() if same else Mlp(dim_s, 2 * dim_s, dim_t, act_layer=nn.ReLU)
        self.attn = nn.ModuleDict({v: nn.Identity() if same else nn.Linear(dim_s, dim_t)
                                   for v in views})


class PixelDecoder(nn.Module):
    """VideoMAE's decoder: blocks over [visible, mask tokens], norm, and a linear head that
    predicts ``tubelet * patch * patch * 3`` pixels per hidden token."""

    def __init__(self, num_patches, out_dim, embed_dim=384, depth=4, num_heads=6, mlp_ratio=4.0,
                 qkv_bias=True, drop_path_rate=0.0):
        super().__init__()
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias,
                                          drop_path=dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, x, num_hidden):
        """``x [B, N_vis + N_hidden, D_dec]`` (hidden last) -> ``[B, N_hidden, out_dim]``."""
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -num_hidden:]))


class PretrainVisionTransformer(nn.Module):
    """Student for MMKD distillation and VideoMAE pre-training.

    Args:
        encoder_kwargs: arguments of :class:`VideoViTEncoder` (sizes, drop_path, ...); its
            ``pos_embed`` (the fixed table) is the decoder's table too.
        decoder_depth: pixel-decoder blocks (``--decoder_depth``); 0 = no decoder.
        decoder_embed_dim, decoder_num_heads: decoder sizes.
        teacher_dim: teacher width ``D_t``; None = no distillation outputs (VideoMAE mode).
        views: MM-hidden views to compute, subset of ``('global', 'local')``.
        num_k, kd_T: top-k entries and temperature of MM-hidden (``--num_k``, ``--kd_T``).
    """

    def __init__(self, encoder_kwargs, decoder_depth=4, decoder_embed_dim=384,
                 decoder_num_heads=6, teacher_dim=None, views=("global", "local"), num_k=10,
                 kd_T=1.0):
        super().__init__()
        # the final norm feeds only the pixel decoder; without one it would get no gradient
        # (which DDP rejects) and the distillation reads the last block before any norm
        self.encoder = VideoViTEncoder(**{"final_norm": decoder_depth > 0, **encoder_kwargs})
        pe = self.encoder.patch_embed
        self.teacher_dim, self.views = teacher_dim, tuple(views) if teacher_dim else ()
        self.num_k, self.kd_T = num_k, kd_T
        if teacher_dim:
            self.projector = Projector(self.encoder.embed_dim, teacher_dim, self.views)
        self.decoder_depth = decoder_depth
        if decoder_depth > 0:
            self.encoder_to_decoder = nn.Linear(self.encoder.embed_dim, decoder_embed_dim, bias=False)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
            self._set_decoder_table(self.encoder.pos_embed_type)
            out_dim = 3 * pe.tubelet_size * pe.patch_size ** 2
            self.decoder = PixelDecoder(pe.num_patches, out_dim, decoder_embed_dim, decoder_depth,
                                        decoder_num_heads,
                                        drop_path_rate=encoder_kwargs.get("drop_path_rate", 0.0))
            self.decoder.apply(init_weights)
            self.encoder_to_decoder.apply(init_weights)
            trunc_normal_(self.mask_token, std=0.02)
        if teacher_dim:
            self.projector.apply(init_weights)

    @property
    def patch_embed(self):
        return self.encoder.patch_embed

    @property
    def pos_embed_type(self):
        return self.encoder.pos_embed_type

    def set_position_table(self, kind):
        """Use the fixed table ``kind`` in the encoder and the pixel decoder."""
        self.encoder.set_position_table(kind)
        if self.decoder_depth > 0:
            self._set_decoder_table(kind)

    def _set_decoder_table(self, kind):
        table = position_table(kind, self.patch_embed.grid_size, self.mask_token.shape[-1])
        self.register_buffer("decoder_pos_embed", table.to(self.mask_token.device),
                             persistent=False)

    def no_weight_decay(self):
        return {"encoder.pos_embed", "mask_token"}

    def get_num_layers(self):
        return self.encoder.get_num_layers()

    def set_grad_checkpointing(self, enable=True):
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, x, bool_masked_pos):
        """``x [B, 3, T, H, W]``, ``bool_masked_pos [B, N]`` -> :class:`StudentOutput`."""
        out = self.encoder.forward_features(x, bool_masked_pos,
                                            maps_from=(-1,) if self.views else ())
        z = out.tokens  # [B, N_vis, D_s], no final norm
        res = StudentOutput()
        if self.teacher_dim:
            res.features = self.projector.feat(z)  # [B, N_vis, D_t]
            if self.views:
                maps = out.maps[len(self.encoder.blocks) - 1]
                g, loc = attention_views(maps, self.views, self.num_k, self.kd_T,
                                         self.patch_embed.grid_size[0])
                res.attn_global = self.projector.attn["global"](g) if g is not None else None
                res.attn_local = self.projector.attn["local"](loc) if loc is not None else None
        if self.decoder_depth > 0:
            res.pixels = self._decode(self.encoder.norm(z), bool_masked_pos)
        return res

    def _decode(self, z, bool_masked_pos):
        """Pixels of the hidden tubelets from the normed visible tokens ``z [B, N_vis, D_s]``."""
        x = self.encoder_to_decoder(z)  # [B, N_vis, D_dec]
        b, n_vis, d = x.shape
        pos = self.decoder_pos_embed.to(x.dtype).expand(b, -1, -1)  # [B, N, D_dec]
        pos_vis = pos[~bool_masked_pos].reshape(b, -1, d)
        pos_hid = pos[bool_masked_pos].reshape(b, -1, d)
        x = torch.cat([x + pos_vis, self.mask_token.to(x.dtype) + pos_hid], dim=1)
        return self.decoder(x, pos_hid.shape[1])
