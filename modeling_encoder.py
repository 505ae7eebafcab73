"""The one ViT video encoder shared by the student, the teacher and the classifier.

VideoMAE's backbone (Tong et al. 2022, Sec. 3.3; Dosovitskiy et al. 2021 for the ViT):
a tubelet embedding (Conv3d, kernel = stride = ``(tubelet_size, patch, patch)``), a fixed
position table (VideoMAE's 1-D sinusoid table of "Attention is all you need", Sec. 3.5, or
MVD's 3-D sin-cos table: ``pos_embed`` / ``--pos_embed``), pre-norm blocks with
a q-bias and a v-bias but no k-bias, LayerNorm eps 1e-6, no class token. Tokens are ordered
frame-major ``(t, h, w)``, so the tokens of one temporal slice are contiguous.

Attention has two paths: the fused ``scaled_dot_product_attention`` (default) and an
explicit one that also returns the queries, keys and values (the pre-softmax logits on
demand), used only by the blocks whose maps a loss reads (MMKD Sec. 3.3, the masked
attention distillation). Even there the block's output comes from the fused kernel
(``fused_attn=True``): the logits are computed for the loss, but no softmax matrix is kept
for the backward. ``fused_attn=False``
(:func:`set_fused_attn`) restores the reference computation, ``softmax(q k^T) v`` written
out in every block, for benchmarks and equivalence tests.
"""
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

from pos_embed import position_table


def select_tokens(x, positions):
    """The rows of ``x [B, N, D]`` where ``positions [B, N]`` (bool, the same count in every
    clip: the hidden tokens of a mask, or ``~mask`` the visible ones), in token order:
    ``[B, n, D]``."""
    b, _, d = x.shape
    return x[positions].reshape(b, -1, d)


def run_block(block, x, *args, checkpoint=False):
    """``block(x, *args)``, recomputed in the backward instead of keeping its activations when
    ``checkpoint`` (``--use_checkpoint``) and gradients are on."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, *args, use_reentrant=False)
    return block(x, *args)


class PatchEmbed(nn.Module):
    """Tubelet embedding: ``[B, C, T, H, W] -> [B, N, D]`` with ``N = T/t * H/p * W/p``.

    ``tubelet_size``, ``patch_size`` and ``grid_size = (T', H', W')`` are the one place the
    rest of the code reads the token geometry from.

    Raises:
        ValueError: ``num_frames`` not divisible by ``tubelet_size`` or ``img_size`` by
            ``patch_size`` (named after the ``--num_frames`` / ``--input_size`` flags).
    """

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2,
                 in_chans=3, embed_dim=768):
        super().__init__()
        if num_frames % tubelet_size:
            raise ValueError(f"--num_frames {num_frames} must be divisible by the tubelet size "
                             f"{tubelet_size}")
        if img_size % patch_size:
            raise ValueError(f"--input_size {img_size} must be divisible by the patch size "
                             f"{patch_size}")
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size,
                          img_size // patch_size)
        self.num_patches = int(np.prod(self.grid_size))
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, x):
        b, c, t, h, w = x.shape
        if (t, h, w) != (self.num_frames, self.img_size, self.img_size):
            raise ValueError(f"clip of {t}x{h}x{w} (frames x height x width) does not match the "
                             f"model's {self.num_frames}x{self.img_size}x{self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


@dataclass
class AttnMaps:
    """Returned beside a block's output when its maps are asked for: the queries, keys and
    values, from which the pre-softmax logits are formed on first use.

    Keeping ``q`` and ``k`` rather than the ``[N, N]`` logits lets :meth:`select` restrict
    the maps to a subset of tokens (the MVD-style teacher that sees the whole clip keeps
    only the student's visible tokens) without ever forming the full matrix.

    Attributes:
        q, k, v: ``[B, heads, N, head_dim]`` (``q`` before scaling).
        scale: ``head_dim ** -0.5``.
    """
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float

    @functools.cached_property
    def logits(self):
        """``[B, heads, N, N]`` pre-softmax ``q k^T * scale``, computed once."""
        return (self.q * self.scale) @ self.k.transpose(-2, -1)

    def select(self, idx):
        """The maps of tokens ``idx [B, n]`` (int positions) among themselves: queries, keys
        and values gathered, so ``select(idx).logits`` is ``[B, heads, n, n]``."""
        b, h, _, hd = self.q.shape
        index = idx.reshape(b, 1, -1, 1).expand(-1, h, -1, hd)
        return AttnMaps(q=self.q.gather(2, index), k=self.k.gather(2, index),
                        v=self.v.gather(2, index), scale=self.scale)


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases, no k bias (VideoMAE / BEiT).

    ``fused_attn`` (attribute, default True): compute the output with
    ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels), also when the maps
    are returned; False = the explicit ``softmax(q k^T * scale) v`` of the reference code.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.fused_attn = True
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, return_maps=False):
        """``x [B, N, D] -> [B, N, D]``; with ``return_maps`` also an :class:`AttnMaps`."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, h, N, hd]
        drop = self.attn_drop if self.training else 0.0
        maps = AttnMaps(q=q, k=k, v=v, scale=self.scale) if return_maps else None
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # [B, h, N, hd]
        else:  # the reference computation, N x N matrix kept for the backward
            logits = maps.logits if return_maps else (q * self.scale) @ k.transpose(-2, -1)
            out = F.dropout(logits.softmax(dim=-1), drop, self.training) @ v
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        return (out, maps) if return_maps else out

    def cross(self, queries, x):
        """Cross-attention with this module's weights: queries from ``queries [B, Q, D]``,
        keys and values from ``x [B, N, D]`` (the rows of ``qkv`` and the biases split as in
        :meth:`forward`); returns ``[B, Q, D]``. V-JEPA's attentive probe (Bardes et al.
        2024, Sec. 4) pools the frozen encoder's tokens with it (``probes.AttentiveProbe``)."""
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        q = F.linear(queries, w_q, self.q_bias)
        k, v = F.linear(x, w_k), F.linear(x, w_v, self.v_bias)
        heads = [t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                 for t in (q, k, v)]  # [B, h, Q or N, hd]
        out = F.scaled_dot_product_attention(*heads, dropout_p=self.attn_drop if self.training
                                             else 0.0)  # [B, h, Q, hd]
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


def set_fused_attn(model, enable=True):
    """Switch every :class:`Attention` in ``model`` to the fused (True) or the explicit,
    reference (False) computation of its output; returns ``model``."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = enable
    return model


def compile_blocks(model, **compile_kwargs):
    """``torch.compile`` every transformer :class:`Block` of ``model`` in place
    (``nn.Module.compile``), so parameter names and state-dict keys stay unchanged and the
    data-dependent masking between blocks (boolean indexing) stays in eager mode.
    Returns the number of blocks compiled."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for blk in blocks:
        blk.compile(**compile_kwargs)
    return len(blocks)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, then the same with the MLP."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x, return_maps=False):
        if return_maps:
            y, maps = self.attn(self.norm1(x), return_maps=True)
        else:
            y, maps = self.attn(self.norm1(x)), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, maps) if return_maps else x


@dataclass
class EncoderOutput:
    """Output of :meth:`VideoViTEncoder.forward_features`.

    Attributes:
        tokens: ``[B, N_vis, D]`` output of the last block, before the final norm.
        maps: block index -> :class:`AttnMaps` for the blocks asked for.
    """
    tokens: torch.Tensor
    maps: dict = field(default_factory=dict)


def init_pretrain_weights(module):
    """VideoMAE's initialisation of its pre-training models (``modeling_pretrain.py``,
    encoder and decoder ``_init_weights``): ``xavier_uniform_`` Linear weights, zero biases,
    LayerNorm weight 1 and bias 0. Other modules (the tubelet-embedding Conv3d) keep
    PyTorch's default, as there. Use with ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_finetune_weights(module):
    """VideoMAE's initialisation of its fine-tuning model (``modeling_finetune.py``
    ``_init_weights``, timm's ViT): truncated normal (std 0.02) Linear weights, zero biases,
    LayerNorm weight 1 and bias 0; the Conv3d keeps PyTorch's default. Use with
    ``module.apply``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


WEIGHT_INITS = {"pretrain": init_pretrain_weights, "finetune": init_finetune_weights}


class VideoViTEncoder(nn.Module):
    """ViT video encoder over the visible tokens of a clip.

    Args:
        img_size (int): input height = width in pixels (``--input_size``), default 224.
        patch_size (int): spatial patch in pixels, default 16.
        num_frames (int): frames per clip (``--num_frames``), default 16.
        tubelet_size (int): frames per token, default 2.
        embed_dim, depth, num_heads, mlp_ratio: the usual ViT sizes.
        qkv_bias (bool): learn q and v biases.
        drop_rate, attn_drop_rate (float): dropout in blocks / on attention.
        drop_path_rate (float): stochastic depth, linearly increasing over blocks.
        final_norm (bool): keep a final LayerNorm ``norm`` (False for the teacher and for
            mean-pooling classifiers, which use ``fc_norm`` instead).
        use_checkpoint (bool): activation checkpointing of every block.
        pos_embed (str): the fixed position table, a ``pos_embed.POS_EMBED_TABLES`` key
            (``--pos_embed``): ``'sincos_1d'`` (VideoMAE, default) or ``'sincos_3d'`` (MVD).
            ``pos_embed_type`` says which one the model uses (``'learned'`` once a checkpoint's
            learned table is installed, see ``weights.load_pretrained``).
        weight_init (str): ``'pretrain'`` (:func:`init_pretrain_weights`, xavier-uniform:
            VideoMAE's pre-training student and teacher) or ``'finetune'``
            (:func:`init_finetune_weights`, truncated normal 0.02: the classifier).

    State-dict keys (``patch_embed.*``, ``blocks.i.*``, ``norm.*``) are VideoMAE's.
    """

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, in_chans=3,
                 embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, final_norm=True,
                 use_checkpoint=False, pos_embed="sincos_1d", weight_init="pretrain"):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.patch_embed = PatchEmbed(img_size, patch_size, num_frames, tubelet_size, in_chans,
                                      embed_dim)
        self.set_position_table(pos_embed)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate,
                                          attn_drop_rate, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.use_checkpoint = use_checkpoint
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {sorted(WEIGHT_INITS)}, "
                             f"got {weight_init!r}")
        self.apply(WEIGHT_INITS[weight_init])

    def set_position_table(self, kind):
        """Use the fixed table ``kind`` (``pos_embed.POS_EMBED_TABLES``) for this grid and width.
        A buffer that follows ``.to(device)`` but stays out of checkpoints (VideoMAE's and
        MVD's fine-tuned files do not store it either)."""
        old = getattr(self, "pos_embed", None)
        table = position_table(kind, self.patch_embed.grid_size, self.embed_dim)
        self.register_buffer("pos_embed", table if old is None else table.to(old.device),
                             persistent=False)
        self.pos_embed_type = kind

    def set_grad_checkpointing(self, enable=True):
        self.use_checkpoint = enable

    def get_num_layers(self):
        return len(self.blocks)

    def no_weight_decay(self):
        return {"pos_embed"}

    def forward_features(self, x, bool_masked_pos=None, maps_from=()):
        """Encode the visible tokens of ``x``.

        Args:
            x: ``[B, 3, T, H, W]`` normalised clip.
            bool_masked_pos: ``[B, N]`` bool, True = hidden; every clip must hide the same
                number of tokens. ``None`` encodes all ``N`` tokens.
            maps_from: indices of blocks (negative allowed) whose :class:`AttnMaps` (queries,
                keys, values; logits on first use) to return.
        Returns:
            :class:`EncoderOutput` with ``tokens [B, N_vis, D]`` (no final norm).
        """
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)  # [B, N, D]
        if bool_masked_pos is not None:
            x = select_tokens(x, ~bool_masked_pos)  # [B, N_vis, D]
        want = {i % len(self.blocks) for i in maps_from}
        maps = {}
        for i, blk in enumerate(self.blocks):
            if i in want:
                x, maps[i] = self._run(blk, x, True)
            else:
                x = self._run(blk, x, False)
        return EncoderOutput(tokens=x, maps=maps)

    def _run(self, blk, x, return_maps):
        return run_block(blk, x, return_maps, checkpoint=self.use_checkpoint and self.training)
