"""The student of MMKD (Sec. 3 of the paper), VideoMAE and MVD, read in the order of the method:

1. the tube-masked clip's visible tokens go through the ViT encoder (``encoder``);
2. MMKD: its last block's tokens and top-k attention outputs (global, per slice) are
   returned raw, with the trainable maps into the teacher's width (``projector``) that the
   MM-hint and MM-hidden terms apply (``losses.mmkd_loss``; MM-relation compares raw tokens);
3. decoders (one :class:`Decoder` class) read the encoder's normed visible tokens plus mask
   tokens and predict something at the hidden positions: VideoMAE's pixel decoder
   (``decoder``) the hidden tubelets' pixels, MVD's feature decoders (``decoder_img``,
   ``decoder_vid``; Wang et al., CVPR 2023, Sec. 3.2) the image and video teachers' features.

State-dict keys (``encoder.*``, ``encoder_to_decoder.*``, ``mask_token``, ``decoder.*``) are
VideoMAE's ``PretrainVisionTransformer`` keys, plus ``projector.*`` and MVD's
``down_{img,vid}.*``, ``mask_token_{img,vid}``, ``decoder_{img,vid}.*``. MVD's own
pre-training files, whose encoder keys have no ``encoder.`` prefix and which store the fixed
tables, load strictly through ``weights.vit_checkpoint_filter``.

Initialisation is VideoMAE's for its pre-training model (``modeling_pretrain.py``):
``xavier_uniform_`` Linear weights with zero biases and LayerNorms at (1, 0) in encoder and
decoders (:func:`modeling_encoder.init_pretrain_weights`), PyTorch's default for the
tubelet-embedding Conv3d and for ``encoder_to_decoder`` (which VideoMAE never re-initialises;
MVD's ``down_*`` are xavier-initialised), and the mask tokens truncated normal (std 0.02, cut
at +-0.02). The projector keeps PyTorch's default initialisation, as the public MMKD code
(its ``models/util.py`` modules).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Mlp, trunc_normal_

from modeling_encoder import Block, VideoViTEncoder, init_pretrain_weights, run_block, select_tokens
from modeling_teacher import attention_views
from pos_embed import position_table


@dataclass
class StudentOutput:
    """What the losses read: raw outputs in the student's width, and the maps into the
    teacher's width that the losses apply.

    Attributes:
        tokens: ``[B, N_vis, D_s]`` last-block tokens, no final norm (None without a teacher).
        attn_global: ``[B, N_vis, h * hd]`` or None; attn_local: ``[B, N_vis, T', h * hd]``
            or None: top-k attention outputs, heads concatenated, before any projector.
        pixels: ``[B, N_hidden, tubelet * patch * patch * 3]`` or None (no pixel decoder).
        img_feat, vid_feat: ``[B, N_hidden, D_img]``, ``[B, N_hidden, D_vid]`` or None: MVD's
            predictions of the image and video teachers' features at the hidden positions.
        projector: the student's :class:`Projector` (None = identity maps).
    """
    tokens: Optional[torch.Tensor] = None
    attn_global: Optional[torch.Tensor] = None
    attn_local: Optional[torch.Tensor] = None
    pixels: Optional[torch.Tensor] = None
    img_feat: Optional[torch.Tensor] = None
    vid_feat: Optional[torch.Tensor] = None
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


class Decoder(nn.Module):
    """The decoder of masked modelling, one class for all of them: blocks over
    ``[visible, mask tokens]``, a norm, and a linear head giving ``out_dim`` values per hidden
    token. VideoMAE's pixel decoder (``out_dim = tubelet * patch * patch * 3``) and MVD's
    feature decoders (``out_dim`` = a teacher's width) are instances; the student holds each
    one's input map, mask token and position table (:data:`DECODER_PARTS`).

    ``use_checkpoint``: recompute each block in the backward (activation checkpointing), as
    VideoMAE's and MVD's decoders do under ``--use_checkpoint``.
    """

    def __init__(self, out_dim, embed_dim=384, depth=4, num_heads=6, mlp_ratio=4.0,
                 qkv_bias=True, drop_path_rate=0.0, use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias,
                                          drop_path=dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, x, num_hidden):
        """``x [B, N_vis + N_hidden, D_dec]`` (hidden last) -> ``[B, N_hidden, out_dim]``."""
        for blk in self.blocks:
            x = run_block(blk, x, checkpoint=self.use_checkpoint and self.training)
        return self.head(self.norm(x[:, -num_hidden:]))


# Each decoder's parts as attributes of the student: (input map, mask token, position-table
# buffer, decoder). VideoMAE's names for the pixel decoder, MVD's for the feature decoders, so
# that both projects' pre-training checkpoints load as they are. The key is the
# ``StudentOutput`` field the decoder fills.
DECODER_PARTS = {
    "pixels": ("encoder_to_decoder", "mask_token", "decoder_pos_embed", "decoder"),
    "img_feat": ("down_img", "mask_token_img", "pos_embed_img", "decoder_img"),
    "vid_feat": ("down_vid", "mask_token_vid", "pos_embed_vid", "decoder_vid"),
}


class PretrainVisionTransformer(nn.Module):
    """Student for MMKD distillation, VideoMAE pre-training and MVD distillation.

    Args:
        encoder_kwargs: arguments of :class:`VideoViTEncoder` (sizes, drop_path,
            ``use_checkpoint``, which the decoders follow too, ...); its
            ``pos_embed`` (the fixed table) is every decoder's table too.
        decoder_depth: pixel-decoder blocks (``--decoder_depth``); 0 = no pixel decoder.
        decoder_embed_dim, decoder_num_heads: pixel-decoder sizes.
        teacher_dim: teacher width ``D_t``; None = no MMKD outputs.
        views: MM-hidden views to compute, subset of ``('global', 'local')``.
        num_k, kd_T: top-k entries and temperature of MM-hidden (``--num_k``, ``--kd_T``).
        teacher_proj: add the trainable teacher-side Linear to the projector
            (``--teacher_proj``).
        pairing: value pairing of the local view, ``'slice'`` or ``'reference'``
            (``losses.topk_attention_local``); the teacher must use the same.
        feature_dims: MVD's feature decoders, ``{'img_feat': D_img, 'vid_feat': D_vid}`` (either
            or both; the image and the video teacher's widths, ``--distillation_target_dim``,
            ``--video_distillation_target_dim``); None = none.
        feat_decoder_depth: their blocks (MVD's ``--decoder_depth``, 2 in its scripts).
        feat_decoder_embed_dim, feat_decoder_num_heads: their width and heads; None = the
            encoder's (``--feat_decoder_embed_dim``, ``--feat_decoder_num_heads``).

    MVD's feature decoders (Wang et al., CVPR 2023, Sec. 3.2; METHOD.md, "MVD exactly") read
    the encoder's normed visible tokens through ``down_{img,vid}`` (a Linear with bias, xavier
    initialised like every Linear of MVD's student) and predict the teachers' features at the
    hidden positions; the pixel decoder's ``encoder_to_decoder`` has no bias and PyTorch's
    initialisation (VideoMAE's). ``no_weight_decay`` names ``mask_token`` only, as VideoMAE
    and MVD do, so MVD's ``mask_token_{img,vid}`` are decayed as there.
    """

    def __init__(self, encoder_kwargs, decoder_depth=4, decoder_embed_dim=384,
                 decoder_num_heads=6, teacher_dim=None, views=("global", "local"), num_k=10,
                 kd_T=1.0, teacher_proj=False, pairing="slice", feature_dims=None,
                 feat_decoder_depth=2, feat_decoder_embed_dim=None, feat_decoder_num_heads=None):
        super().__init__()
        feature_dims = dict(feature_dims or {})
        unknown = set(feature_dims) - {"img_feat", "vid_feat"}
        if unknown:
            raise ValueError(f"feature_dims names unknown feature decoders {sorted(unknown)}; "
                             f"expected 'img_feat' and/or 'vid_feat'")
        # the final norm feeds only the decoders; without one it would get no gradient
        # (which DDP rejects) and the distillation reads the last block before any norm
        has_decoder = decoder_depth > 0 or bool(feature_dims)
        self.encoder = VideoViTEncoder(**{"final_norm": has_decoder, **encoder_kwargs})
        pe, width = self.encoder.patch_embed, self.encoder.embed_dim
        self.teacher_dim, self.views = teacher_dim, tuple(views) if teacher_dim else ()
        self.num_k, self.kd_T, self.pairing = num_k, kd_T, pairing
        if teacher_dim:
            self.projector = Projector(width, teacher_dim, self.views, teacher_side=teacher_proj)
        self.decoder_depth = decoder_depth
        drop_path = encoder_kwargs.get("drop_path_rate", 0.0)
        self.decoders = []  # StudentOutput fields the decoders fill, in order
        if decoder_depth > 0:
            self._add_decoder("pixels", 3 * pe.tubelet_size * pe.patch_size ** 2,
                              decoder_embed_dim, decoder_depth, decoder_num_heads, drop_path)
        for name in ("img_feat", "vid_feat"):  # MVD's order: its parameters' order too
            if name in feature_dims:
                self._add_decoder(name, feature_dims[name], feat_decoder_embed_dim or width,
                                  feat_decoder_depth, feat_decoder_num_heads or
                                  self.encoder.num_heads, drop_path)
        self._set_decoder_tables(self.encoder.pos_embed_type)

    def _add_decoder(self, name, out_dim, embed_dim, depth, num_heads, drop_path_rate):
        """The input map, mask token and :class:`Decoder` of ``name`` (:data:`DECODER_PARTS`)."""
        map_name, token_name, _, decoder_name = DECODER_PARTS[name]
        feature = name != "pixels"
        in_map = nn.Linear(self.encoder.embed_dim, embed_dim, bias=feature)
        if feature:
            init_pretrain_weights(in_map)
        setattr(self, map_name, in_map)
        token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(token, std=0.02, a=-0.02, b=0.02)  # VideoMAE and MVD cut at +-std
        setattr(self, token_name, token)
        decoder = Decoder(out_dim, embed_dim, depth, num_heads, drop_path_rate=drop_path_rate,
                          use_checkpoint=self.encoder.use_checkpoint)
        decoder.apply(init_pretrain_weights)
        setattr(self, decoder_name, decoder)
        self.decoders.append(name)

    @property
    def patch_embed(self):
        return self.encoder.patch_embed

    @property
    def pos_embed_type(self):
        return self.encoder.pos_embed_type

    def set_position_table(self, kind):
        """Use the fixed table ``kind`` in the encoder and every decoder."""
        self.encoder.set_position_table(kind)
        self._set_decoder_tables(kind)

    def _set_decoder_tables(self, kind):
        for name in self.decoders:
            _, token_name, table_name, _ = DECODER_PARTS[name]
            token = getattr(self, token_name)
            table = position_table(kind, self.patch_embed.grid_size, token.shape[-1])
            self.register_buffer(table_name, table.to(token.device), persistent=False)

    def no_weight_decay(self):
        return {"encoder.pos_embed", "mask_token"}

    def get_num_layers(self):
        return self.encoder.get_num_layers()

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing of the encoder's and every decoder's blocks."""
        self.encoder.set_grad_checkpointing(enable)
        for name in self.decoders:
            getattr(self, DECODER_PARTS[name][3]).use_checkpoint = enable

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
        if self.decoders:
            z = self.encoder.norm(z)
            for name in self.decoders:
                setattr(res, name, self._decode(name, z, bool_masked_pos))
        return res

    def _decode(self, name, z, bool_masked_pos):
        """Decoder ``name``'s predictions for the hidden tokens from the normed visible tokens
        ``z [B, N_vis, D_s]``: ``[visible + pos_vis, mask_token + pos_hidden]`` through it."""
        map_name, token_name, table_name, decoder_name = DECODER_PARTS[name]
        x = getattr(self, map_name)(z)  # [B, N_vis, D_dec]
        pos = getattr(self, table_name).to(x.dtype).expand(x.shape[0], -1, -1)  # [B, N, D_dec]
        pos_vis = select_tokens(pos, ~bool_masked_pos)
        pos_hid = select_tokens(pos, bool_masked_pos)
        x = torch.cat([x + pos_vis, getattr(self, token_name).to(x.dtype) + pos_hid], dim=1)
        return getattr(self, decoder_name)(x, pos_hid.shape[1])
