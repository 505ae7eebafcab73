"""The MMKD distillation losses and the VideoMAE pixel loss.

MMKD: Li et al., "Mask Again: Masked Knowledge Distillation for Masked Video Modeling",
ACM MM 2023, Sec. 3. ``../shared/docs/METHOD.md`` of this project states every term; the
equation numbers below refer to its list "The MMKD objective":

1. MM-hint: MSE on the ``num_f`` tokens with the largest teacher-feature L1 norm.
2. MM-relation: KL between the teacher's and student's token-similarity distributions over
   the selected tokens of the whole batch.
3. MM-hidden: MSE between top-``num_k`` attention outputs, over all keys (global) and per
   temporal slice (local).

Everything here computes in float32 whatever the autocast dtype of the inputs (autocast is
switched off inside, or it would run the matmuls in bf16/fp16): the relation term divides
cosine similarities near 1 by a temperature of 0.05, where bf16's rounding alone moved the
loss by 4 % in ``tests/test_optimised_paths.py``, and its large negative diagonal needs the range.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

DISTILL_VIEWS = {  # --distill -> attention views of MM-hidden (hint and relation always on)
    "hybrid": ("global", "local"),
    "hinTop": ("global",),
    "VTop": ("local",),
    "onlymse": (),
}


def float32(fn):
    """Run ``fn`` with autocast off on CPU and CUDA, so its matmuls stay in float32."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)
    return wrapper


TOPK_IMPLS = ("scatter", "dense")
# What ``impl=None`` means in the top-k attention functions (the student and the teacher call
# them without ``impl``); benchmarks set "dense" to time the reference computation.
DEFAULT_TOPK_IMPL = "scatter"


def _topk_softmax(logits, num_k, kd_T):
    """Softmax of ``logits / kd_T`` over the last dim, keeping only the top ``num_k`` entries
    of each row and renormalising them to sum 1 (equal to a softmax over those entries).

    The plain, reference-shaped computation (``impl='dense'``): a boolean keep-mask, a
    masked copy and a softmax, all of the logits' full size."""
    idx = logits.topk(num_k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    return (logits / kd_T).masked_fill(~keep, float("-inf")).softmax(dim=-1)


def _topk_weights(logits, num_k, kd_T):
    """``(p [..., k], idx [..., k])``: softmax of the top ``num_k`` logits of each row over
    those ``k`` only (the renormalised top-k of the full softmax, without computing it)."""
    vals, idx = logits.topk(num_k, dim=-1)  # [..., k]
    return (vals / kd_T).softmax(dim=-1), idx


def _topk_probs(logits, num_k, kd_T, impl):
    """The renormalised top-k attention matrix, the shape of ``logits``: ``'dense'`` as in the
    reference; ``'scatter'`` puts the ``k`` weights into one zero matrix (one buffer of the
    logits' size instead of four, and only ``[..., k]`` tensors saved for the backward)."""
    if impl == "dense":
        return _topk_softmax(logits, num_k, kd_T)
    p, idx = _topk_weights(logits, num_k, kd_T)
    return torch.zeros_like(logits).scatter(-1, idx, p)


def _check_impl(impl):
    impl = DEFAULT_TOPK_IMPL if impl is None else impl
    if impl not in TOPK_IMPLS:
        raise ValueError(f"impl must be one of {TOPK_IMPLS}, got {impl!r}")
    return impl


@float32
def topk_attention_global(logits, v, num_k, kd_T=1.0, impl=None):
    """MM-hidden, global view (METHOD.md item 3): ``O = topk_renorm(softmax(A / kd_T)) V``.

    Args:
        logits: ``[B, h, N, N]`` pre-softmax attention logits.
        v: ``[B, h, N, hd]`` values.
        num_k: entries kept per row (``--num_k``); must be <= N.
        kd_T: softmax temperature (``--kd_T``).
        impl: ``None`` = ``DEFAULT_TOPK_IMPL``: ``'scatter'`` (top-k on the logits, softmax
            over the ``k`` values, scattered into one ``[N, N]`` matrix times ``V``),
            or ``'dense'`` (the reference's masked full softmax). Both are equal up to float
            rounding; ``benchmarks/bench_topk.py`` compares their time and memory.
    Returns:
        ``[B, N, h * hd]``, heads merged.
    """
    impl = _check_impl(impl)
    logits, v = logits.float(), v.float()
    out = _topk_probs(logits, num_k, kd_T, impl) @ v  # [B, h, N, hd]
    return rearrange(out, "b h n d -> b n (h d)")


@float32
def topk_attention_local(logits, v, num_k, num_slices, kd_T=1.0, impl=None):
    """MM-hidden, local view (METHOD.md item 3): top-k attention within each temporal slice.

    Keys are split into ``num_slices`` contiguous groups (frame-major token order with tube
    masking keeps the same count of visible keys per slice). In every group the row is
    soft-maxed, cut to its top ``num_k`` and renormalised, then multiplied by the values of
    that same slice. (The public reference code pairs the weights of slice ``s`` with the
    values of another slice through a reshape with the slice index innermost; this is the
    slice-consistent version.)

    Args:
        logits: ``[B, h, N, N]`` with ``N`` divisible by ``num_slices``.
        v: ``[B, h, N, hd]``.
        num_k: entries kept per row and slice; must be <= N / num_slices.
        num_slices: temporal slices ``T'`` (``model.patch_embed.grid_size[0]``).
        impl: as in :func:`topk_attention_global`.
    Returns:
        ``[B, N, num_slices, h * hd]``: one output per (query, slice).
    """
    impl = _check_impl(impl)
    logits = rearrange(logits.float(), "b h q (s n) -> b h q s n", s=num_slices)
    vs = rearrange(v.float(), "b h (s n) d -> b h s n d", s=num_slices)
    p = _topk_probs(logits, num_k, kd_T, impl)  # [B, h, N, S, n]
    out = torch.einsum("bhqsn,bhsnd->bqshd", p, vs)
    return rearrange(out, "b q s h d -> b q s (h d)")


def select_salient_tokens(feat_t, num_f):
    """Indices ``[B, num_f]`` of the tokens with the largest teacher-feature L1 norm
    (MM-hint's "mask again", METHOD.md item 1). ``feat_t``: ``[B, N, D_t]``."""
    return feat_t.float().abs().sum(-1).topk(num_f, dim=-1).indices


def gather_tokens(x, idx):
    """``x [B, N, D]``, ``idx [B, k]`` -> ``[B, k, D]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def hint_loss(sel_s, sel_t):
    """MM-hint: MSE over the selected tokens, mean over ``B * num_f * D_t`` elements.
    ``sel_s``: projected student ``[B, num_f, D_t]``; ``sel_t``: teacher ``[B, num_f, D_t]``."""
    return F.mse_loss(sel_s.float(), sel_t.float())


@float32
def relation_loss(sel_s, sel_t, temperature_s=0.1, temperature_t=0.05):
    """MM-relation (METHOD.md item 2).

    The ``M = B * num_f`` selected tokens of the batch are L2-normalised; the cosine
    similarity matrices ``G [M, M]`` get a large negative diagonal (a token is not its own
    neighbour); the loss is ``KL(softmax(G_t / tau_t) || softmax(G_s / tau_s))`` summed over
    all rows and divided by ``M``.

    Args:
        sel_s: ``[B, num_f, D_s']`` student tokens; sel_t: ``[B, num_f, D_t]`` teacher tokens.
    """
    s = F.normalize(sel_s.float().flatten(0, 1), dim=-1)  # [M, D]
    t = F.normalize(sel_t.float().flatten(0, 1), dim=-1)
    g_s, g_t = s @ s.T, t @ t.T  # [M, M]: the only M x M buffers, besides the log-softmaxes
    g_s.diagonal().fill_(-1e4)  # in place, no [M, M] identity mask; no gradient on the diagonal
    g_t.diagonal().fill_(-1e4)
    kl = F.kl_div((g_s / temperature_s).log_softmax(-1), (g_t / temperature_t).log_softmax(-1),
                  log_target=True, reduction="sum")
    return kl / s.shape[0]


def pixel_targets(videos, bool_masked_pos, tubelet_size, patch_size, mean, std, normalize=True):
    """VideoMAE's regression target: the hidden tubelets' pixels, per-patch normalised.

    Args:
        videos: ``[B, 3, T, H, W]`` clip normalised with ``mean``/``std`` (per channel).
        bool_masked_pos: ``[B, N]``, True = hidden.
        normalize: subtract each channel-patch's mean and divide by its (unbiased) std over
            the ``tubelet * patch * patch`` pixels (VideoMAE ``--normlize_target``).
    Returns:
        ``[B, N_hidden, tubelet * patch * patch * 3]`` (pixel order ``(p0 p1 p2 c)``).
    """
    mean = torch.as_tensor(mean, device=videos.device, dtype=torch.float32)[None, :, None, None, None]
    std = torch.as_tensor(std, device=videos.device, dtype=torch.float32)[None, :, None, None, None]
    x = videos.float() * std + mean  # back to [0, 1] pixels
    x = rearrange(x, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                  p0=tubelet_size, p1=patch_size, p2=patch_size)
    if normalize:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    x = rearrange(x, "b n p c -> b n (p c)")
    b = x.shape[0]
    return x[bool_masked_pos].reshape(b, -1, x.shape[-1])


@dataclass
class LossWeights:
    """Weights of ``L = gamma L_hint + beta (beta_kd1 L_global + beta_kd2 L_local)
    + alpha L_relation + pixel_loss_weight L_pixel`` (METHOD.md item 4). A term whose weight
    is zero is not computed."""
    hint: float = 0.0
    relation: float = 0.0
    global_: float = 0.0
    local: float = 0.0
    pixel: float = 0.0

    @classmethod
    def from_args(cls, distill, gamma, alpha, beta, beta_kd1, beta_kd2, pixel_loss_weight,
                  use_teacher=True):
        """Weights for ``--distill`` (``hybrid|hinTop|VTop|onlymse``) and the weight flags.

        Raises:
            ValueError: unknown ``--distill``.
        """
        if distill not in DISTILL_VIEWS:
            raise ValueError(f"--distill must be one of {sorted(DISTILL_VIEWS)}, got {distill!r}")
        if not use_teacher:
            return cls(pixel=pixel_loss_weight)
        views = DISTILL_VIEWS[distill]
        return cls(hint=gamma, relation=alpha,
                   global_=beta * beta_kd1 if "global" in views else 0.0,
                   local=beta * beta_kd2 if "local" in views else 0.0,
                   pixel=pixel_loss_weight)

    def views(self):
        """Attention views whose outputs must be computed."""
        return tuple(v for v, w in (("global", self.global_), ("local", self.local)) if w > 0)


def mmkd_loss(student, teacher, weights, pixel_target=None, temperature_s=0.1,
              temperature_t=0.05, num_f=10):
    """Combine the terms of MMKD (and VideoMAE's pixel term) into one objective.

    Args:
        student: a ``StudentOutput`` (projected ``features [B, N_vis, D_t]``, ``attn_global``,
            ``attn_local``, ``pixels``); teacher: a ``TeacherOutput``, or None.
        weights: :class:`LossWeights`.
        pixel_target: ``[B, N_hidden, P]`` when ``weights.pixel > 0``.
    Returns:
        ``(total, terms)``: scalar loss and ``{name: unweighted scalar}`` for each term used.
    """
    terms = {}
    if weights.hint > 0 or weights.relation > 0:
        idx = select_salient_tokens(teacher.features, num_f)  # [B, num_f]
        sel_s, sel_t = gather_tokens(student.features, idx), gather_tokens(teacher.features, idx)
        if weights.hint > 0:
            terms["hint"] = hint_loss(sel_s, sel_t)
        if weights.relation > 0:
            terms["relation"] = relation_loss(sel_s, sel_t, temperature_s, temperature_t)
    if weights.global_ > 0:
        terms["global"] = F.mse_loss(student.attn_global.float(), teacher.attn_global.float())
    if weights.local > 0:
        terms["local"] = F.mse_loss(student.attn_local.float(), teacher.attn_local.float())
    if weights.pixel > 0:
        terms["pixel"] = F.mse_loss(student.pixels.float(), pixel_target.float())
    scale = {"hint": weights.hint, "relation": weights.relation, "global": weights.global_,
             "local": weights.local, "pixel": weights.pixel}
    total = sum(scale[k] * v for k, v in terms.items())
    return total, terms
