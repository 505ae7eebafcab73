"""The MMKD student (Sec. 3 of the paper), read in the order of the method:

1. the tube-masked clip's visible tokens go through the ViT encoder (``encoder``);
2. its last block's tokens and top-k attention outputs (global, per slice) are returned
   raw, with the trainable maps into the teacher's width (``projector``) that the MM-hint and
   MM-hidden terms apply (``losses.mmkd_loss``; MM-relation compares raw tokens);
3. optionally a light VideoMAE decoder (``decoder``) predicts the hidden tubelets' pixels.

State-dict keys (``encoder.*``, ``encoder_to_decoder.*``, ``mask_token``, ``decoder.*``) are
VideoMAE's ``PretrainVisionTransformer`` keys, plus ``projector.*``.

Initialisation is VideoMAE's for its pre-training model (``modeling_pretrain.py``):
``xavier_uniform_`` Linear weights with zero biases and LayerNorms at (1, 0) in encoder and
decoder (:func:`modeling_encoder.init_pretrain_weights`), PyTorch's default for the
tubelet-embedding Conv3d and for ``encoder_to_decoder`` (which VideoMAE never re-initialises),
and ``mask_token`` truncated normal (std 0.02, cut at +-0.02). The projector keeps PyTorch's
default initialisation, as the public MMKD code (its ``models/util.py`` modules).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Mlp, trunc_normal_

from modeling_encoder import Block, VideoViTEncoder, init_pretrain_weights, position_table
from modeling_teacher import attention_views


@dataclass
class StudentOutput:
    """What the losses read: raw outputs in the student's width, and the maps into the
    teacher's width that the losses apply.

    Attributes:
        tokens: ``[B, N_vis, D_s]`` last-block tokens, no final norm (None without a teacher).
        attn_global: ``[B, N_vis, h * hd]`` or None; attn_local: ``[B, N_vis, T', h * hd]``
            or None: top-k attention outputs, heads concatenated, before any projector.
        pixels: ``[B, N_hidden, tubelet * patch * patch * 3]`` or None (no decoder).
        projector: the student's :class:`Projector` (None = identity maps).
    """
    tokens: Optional[torch.Tensor] = None
    attn_global: Optional[torch.Tensor] = None
    attn_local: Optional[torch.Tensor] = None
    pixels: Optional[torch.Tensor] = None
    projector: Optional[nn.Module] = None


class Projector(nn.Module):
    """Trainable maps into the teacher's width (METHOD.md, "a trainable projector"; the
    public code's ``models/util.py`` ``Mlp`` and ``Linear``), applied by
    ``losses.mmkd_loss``:

    - ``feat``: MLP ``D_s -> 2 D_s -> D_t`` (ReLU) on student tokens, for MM-hint;
    - ``attn[view]``: Linear ``D_s -> D_t`` on the student's attention outputs of each
      MM-hidden view (``'global'``, ``'local'``);
    - ``attn_t[view]`` (``teacher_side=True``): a trainable Linear ``D_t -> D_t`` on the
      *teacher's* attention outputs, as the public ViT-S recipe has (``run_kd.py``,
      ``Align_valuesum_t`` / ``Align_valuesum1_t``). It belongs to the student: it gets
      gradients, is in the optimizer and in the student's checkpoint; the teacher's encoder
      stays frozen. Its target moves during training.

    The student-side maps are identities when the widths are equal. Every Linear keeps
    PyTorch's default initialisation (kaiming-uniform weights, non-zero biases), as the
    public code's projectors.
    """

    def __init__(self, dim_s, dim_t, views=("global", "local"), teacher_side=False):
        super().__init__()
        same = dim_s == dim_t
        self.feat = nn.Identity() if same else Mlp(dim_s, 2 * dim_s, dim_t, act_layer=nn.ReLU)
        self.attn = nn.ModuleDict({v: nn.Identity() if same else nn.Linear(dim_s, dim_t)
                                   for v in views})
        self.attn_t = (nn.ModuleDict({v: nn.Linear(dim_t, dim_t) for v in views})
                       if teacher_side else None)

    def attn_maps(self, view):
        """``(student map, teacher map)`` of MM-hidden ``view``; the teacher's is the identity
        without a teacher-side Linear."""
        return self.attn[view], self.attn_t[view] if self.attn_t is not None else nn.Identity()


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
        teacher_proj: add the trainable teacher-side Linear to the projector
            (``--teacher_proj``).
        pairing: value pairing of the local view, ``'slice'`` or ``'reference'``
            (``losses.topk_attention_local``); the teacher must use the same.
    """

    def __init__(self, encoder_kwargs, decoder_depth=4, decoder_embed_dim=384,
                 decoder_num_heads=6, teacher_dim=None, views=("global", "local"), num_k=10,
                 kd_T=1.0, teacher_proj=False, pairing="slice"):
        super().__init__()
        # the final norm feeds only the pixel decoder; without one it would get no gradient
        # (which DDP rejects) and the distillation reads the last block before any norm
        self.encoder = VideoViTEncoder(**{"final_norm": decoder_depth > 0, **encoder_kwargs})
        pe = self.encoder.patch_embed
        self.teacher_dim, self.views = teacher_dim, tuple(views) if teacher_dim else ()
        self.num_k, self.kd_T, self.pairing = num_k, kd_T, pairing
        if teacher_dim:
            self.projector = Projector(self.encoder.embed_dim, teacher_dim, self.views,
                                       teacher_side=teacher_proj)
        self.decoder_depth = decoder_depth
        if decoder_depth > 0:
            self.encoder_to_decoder = nn.Linear(self.encoder.embed_dim, decoder_embed_dim, bias=False)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
            self._set_decoder_table(self.encoder.pos_embed_type)
            out_dim = 3 * pe.tubelet_size * pe.patch_size ** 2
            self.decoder = PixelDecoder(pe.num_patches, out_dim, decoder_embed_dim, decoder_depth,
                                        decoder_num_heads,
                                        drop_path_rate=encoder_kwargs.get("drop_path_rate", 0.0))
            self.decoder.apply(init_pretrain_weights)
            trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)  # VideoMAE cuts at +-std

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
            res.tokens, res.projector = z, self.projector
            if self.views:
                maps = out.maps[len(self.encoder.blocks) - 1]
                res.attn_global, res.attn_local = attention_views(
                    maps, self.views, self.num_k, self.kd_T, self.patch_embed.grid_size[0],
                    self.pairing)
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
