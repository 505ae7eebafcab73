"""The MMKD distillation losses, MVD's feature losses and the VideoMAE pixel loss.

MMKD: Li et al., "Mask Again: Masked Knowledge Distillation for Masked Video Modeling",
ACM MM 2023, Sec. 3. ``../shared/docs/METHOD.md`` of this project states every term; the
equation numbers below refer to its list "The MMKD objective":

1. MM-hint: MSE on the ``num_f`` tokens with the largest teacher-feature L1 norm.
2. MM-relation: KL between the teacher's and student's token-similarity distributions over
   the selected tokens of the whole batch.
3. MM-hidden: MSE between top-``num_k`` attention outputs, over all keys (global) and per
   temporal slice (local).

Two modes (``--reference_losses``; README, "The method, as implemented", compares them term
by term). The default is the method as described, with MM-relation on the raw student
tokens as the paper and the public code do. The reference mode computes what the public
code (xiaojieli0903/MaskAgain, ``loops_mlp.py`` / ``loops.py``) computes, so that its numbers
can be reproduced: MM-hint over all visible tokens with the unselected ones zeroed *before*
the feature projector, times ``N / num_f`` (:func:`hint_loss_reference`), and the local
view's values paired as its ``VTop`` pairs them (``pairing='reference'``). Both modes use
the same :class:`Projector`-style maps (student-side, and the optional trainable
teacher-side Linear), which :func:`mmkd_loss` applies; ``tests/test_losses.py`` checks both
modes against the public code's own float64 outputs (``tests/data/mmkd_reference``).

MVD (Wang et al., CVPR 2023, Sec. 3.2; METHOD.md, "MVD exactly"): the student's feature
decoders predict the image and video teachers' features at the hidden positions, each term
an L1, L2 or SmoothL1 loss (:func:`feature_loss`), optionally on LayerNorm-ed targets.
:func:`mmkd_loss` weighs every term of the three objectives (:class:`LossWeights`), so they
combine in one run.

Everything here computes in float32 at least, whatever the autocast dtype of the inputs
(autocast is switched off inside, or it would run the matmuls in bf16/fp16; float64 inputs
stay float64): the relation term divides cosine similarities near 1 by a temperature of
0.05, where bf16's rounding alone moved the loss by 4 % in ``tests/test_optimised_paths.py``,
and its large negative diagonal needs the range.
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


def _full(x):
    """``x`` in float32, or float64 when it already is (the reference fixtures' precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


TOPK_IMPLS = ("scatter", "dense")
# How the local view pairs attention weights with values: 'slice' = the keys' own values
# (the method); 'reference' = the public code's VTop reshape (slice index innermost).
PAIRINGS = ("slice", "reference")
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
    logits, v = _full(logits), _full(v)
    out = _topk_probs(logits, num_k, kd_T, impl) @ v  # [B, h, N, hd]
    return rearrange(out, "b h n d -> b n (h d)")


@float32
def topk_attention_local(logits, v, num_k, num_slices, kd_T=1.0, impl=None, pairing="slice"):
    """MM-hidden, local view (METHOD.md item 3): top-k attention within each temporal slice.

    Keys are split into ``num_slices`` contiguous groups (frame-major token order with tube
    masking keeps the same count of visible keys per slice). In every group the row is
    soft-maxed, cut to its top ``num_k`` and renormalised, then multiplied by values.

    Args:
        logits: ``[B, h, N, N]`` with ``N`` divisible by ``num_slices``.
        v: ``[B, h, N, hd]``.
        num_k: entries kept per row and slice; must be <= N / num_slices.
        num_slices: temporal slices ``T'`` (``model.patch_embed.grid_size[0]``).
        impl: as in :func:`topk_attention_global`.
        pairing: ``'slice'`` (the method): the weight of key ``j`` of slice ``t`` (token
            ``t * n + j``, ``n = N / T'``) multiplies that token's value. ``'reference'``:
            the public code's ``VTop`` (``distiller_zoo/VTop.py``), which reshapes the values
            ``(B, h, n, T', hd)`` with the slice index innermost, so that weight multiplies
            the value of token ``j * T' + t``, in general a token of another slice.
    Returns:
        ``[B, N, num_slices, h * hd]``: one output per (query, slice).
    Raises:
        ValueError: unknown ``impl`` or ``pairing``.
    """
    impl = _check_impl(impl)
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    logits = rearrange(_full(logits), "b h q (s n) -> b h q s n", s=num_slices)
    values = "b h (s n) d -> b h s n d" if pairing == "slice" else "b h (n s) d -> b h s n d"
    vs = rearrange(_full(v), values, s=num_slices)
    p = _topk_probs(logits, num_k, kd_T, impl)  # [B, h, N, S, n]
    out = torch.einsum("bhqsn,bhsnd->bqshd", p, vs)
    return rearrange(out, "b q s h d -> b q s (h d)")


def select_salient_tokens(feat_t, num_f):
    """Indices ``[B, num_f]`` of the tokens with the largest teacher-feature L1 norm
    (MM-hint's "mask again", METHOD.md item 1). ``feat_t``: ``[B, N, D_t]``. Exactly
    ``num_f`` per clip (the public code keeps every token >= the ``num_f``-th norm, the
    same set unless norms tie)."""
    return _full(feat_t).abs().sum(-1).topk(num_f, dim=-1).indices


def gather_tokens(x, idx):
    """``x [B, N, D]``, ``idx [B, k]`` -> ``[B, k, D]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def hint_loss(sel_s, sel_t):
    """MM-hint (METHOD.md item 1): MSE over the selected tokens, mean over
    ``B * num_f * D_t`` elements.
    ``sel_s``: projected student ``[B, num_f, D_t]``; ``sel_t``: teacher ``[B, num_f, D_t]``."""
    return F.mse_loss(_full(sel_s), _full(sel_t))


def hint_loss_reference(tokens_s, feat_t, idx, feat_map):
    """MM-hint as the public code computes it (``loops_mlp.py`` lines 157-160): the
    unselected tokens of student and teacher are zeroed, *then* the feature projector maps
    all ``N`` student tokens, and the MSE over ``B * N * D_t`` elements is scaled by
    ``N / num_f``. Because the projector has biases, every unselected token adds
    ``|feat_map(0)|^2``; with an identity map this equals :func:`hint_loss`.

    Args:
        tokens_s: raw student tokens ``[B, N, D_s]``; feat_t: teacher tokens ``[B, N, D_t]``.
        idx: selected tokens ``[B, num_f]`` (:func:`select_salient_tokens`).
        feat_map: the feature projector ``D_s -> D_t`` (a callable).
    """
    keep = torch.zeros_like(tokens_s[..., :1]).scatter_(1, idx.unsqueeze(-1), 1.0)  # [B, N, 1]
    n, num_f = tokens_s.shape[1], idx.shape[1]
    return F.mse_loss(_full(feat_map(tokens_s * keep)), _full(feat_t * keep.to(feat_t.dtype))) \
        * (n / num_f)


@float32
def relation_loss(sel_s, sel_t, temperature_s=0.1, temperature_t=0.05):
    """MM-relation (METHOD.md item 2).

    The ``M = B * num_f`` selected tokens of the batch are L2-normalised; the cosine
    similarity matrices ``G [M, M]`` get a large negative diagonal (a token is not its own
    neighbour); the loss is ``KL(softmax(G_t / tau_t) || softmax(G_s / tau_s))`` summed over
    all rows and divided by ``M``.

    Args:
        sel_s: ``[B, num_f, D_s]`` raw student tokens (before any projector, as the paper
            and the public code: the term does not train the projector, and the two
            similarity matrices need no common width); sel_t: ``[B, num_f, D_t]`` teacher
            tokens. The order of the selected tokens does not matter.
    """
    s = F.normalize(_full(sel_s).flatten(0, 1), dim=-1)  # [M, D]
    t = F.normalize(_full(sel_t).flatten(0, 1), dim=-1)
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


# MVD's --distill_loss_func / --video_distill_loss_func choices (its torch.nn losses, mean)
FEATURE_LOSSES = {"L1": F.l1_loss, "L2": F.mse_loss, "SmoothL1": F.smooth_l1_loss}


@float32
def feature_loss(pred, target, func="SmoothL1", norm_target=False):
    """One of MVD's feature terms: ``func(pred, LN(target))``, mean over every element.

    Args:
        pred: ``[B, N_hidden, D]`` a feature decoder's predictions; target: ``[B, N_hidden, D]``
            the teacher's features at the same hidden positions.
        func: ``'L1'``, ``'L2'`` (MSE) or ``'SmoothL1'`` (beta 1), as torch.nn's losses.
        norm_target: LayerNorm of each target token without affine parameters, eps 1e-6
            (MVD's ``--norm_feature``).
    Raises:
        ValueError: unknown ``func``.
    """
    if func not in FEATURE_LOSSES:
        raise ValueError(f"feature loss must be one of {sorted(FEATURE_LOSSES)}, got {func!r}")
    target = _full(target)
    if norm_target:
        target = F.layer_norm(target, target.shape[-1:], eps=1e-6)
    return FEATURE_LOSSES[func](_full(pred), target)


@dataclass(frozen=True)
class FeatureLoss:
    """How one MVD feature term is computed (:func:`feature_loss`): ``func`` and
    ``norm_target``."""
    func: str = "SmoothL1"
    norm_target: bool = False

    def __call__(self, pred, target):
        return feature_loss(pred, target, self.func, self.norm_target)


@dataclass
class LossWeights:
    """Weights of ``L = gamma L_hint + beta (beta_kd1 L_global + beta_kd2 L_local)
    + alpha L_relation + pixel_loss_weight L_pixel`` (METHOD.md item 4)
    ``+ w_img L_img_feat + w_vid L_vid_feat`` (MVD's ``--image_teacher_loss_weight``,
    ``--video_teacher_loss_weight``). A term whose weight is zero is not computed."""
    hint: float = 0.0
    relation: float = 0.0
    global_: float = 0.0
    local: float = 0.0
    pixel: float = 0.0
    img_feat: float = 0.0
    vid_feat: float = 0.0

    @classmethod
    def from_args(cls, distill, gamma, alpha, beta, beta_kd1, beta_kd2, pixel_loss_weight,
                  use_teacher=True, img_feat=0.0, vid_feat=0.0):
        """Weights for ``--distill`` (``hybrid|hinTop|VTop|onlymse``) and the weight flags
        (MVD's two as ``img_feat``, ``vid_feat``).

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
                   pixel=pixel_loss_weight, img_feat=img_feat, vid_feat=vid_feat)

    def uses_mmkd(self):
        """Whether any MMKD term is on (the student then returns its tokens and maps)."""
        return any(w > 0 for w in (self.hint, self.relation, self.global_, self.local))

    def views(self):
        """Attention views whose outputs must be computed."""
        return tuple(v for v, w in (("global", self.global_), ("local", self.local)) if w > 0)


def _identity(x):
    return x


def mmkd_loss(student, teacher, weights, pixel_target=None, temperature_s=0.1,
              temperature_t=0.05, num_f=10, reference=False, feature_losses=None):
    """Combine the terms of MMKD, MVD and VideoMAE's pixel term into one objective.

    The student's and teacher's outputs come raw (in their own widths); the maps into the
    teacher's width are the student's ``projector`` (``StudentOutput.projector``, None =
    identity): ``feat`` for MM-hint, ``attn[view]`` for the student's attention outputs and
    the optional trainable teacher-side ``attn_t[view]`` for the teacher's. MM-relation
    compares raw tokens. ``reference`` selects MM-hint's form, the only term whose formula
    the mode changes here (:func:`hint_loss` or :func:`hint_loss_reference`); the local
    view's value pairing is chosen where the attention outputs are computed.

    Args:
        student: a ``StudentOutput`` (``tokens [B, N_vis, D_s]``, ``attn_global``,
            ``attn_local``, ``pixels``, ``img_feat``, ``vid_feat``, ``projector``); teacher: a
            ``TeacherOutput`` (MVD's targets ``img_feat``, ``vid_feat`` at the hidden
            positions), or None.
        weights: :class:`LossWeights`.
        pixel_target: ``[B, N_hidden, P]`` when ``weights.pixel > 0``.
        reference: MM-hint as the public code computes it.
        feature_losses: ``{'img_feat': FeatureLoss, 'vid_feat': FeatureLoss}`` for MVD's
            terms; a missing entry is ``FeatureLoss()`` (SmoothL1, raw targets).
    Returns:
        ``(total, terms)``: scalar loss and ``{name: unweighted scalar}`` for each term used.
    """
    proj = getattr(student, "projector", None)
    feat_map = proj.feat if proj is not None else _identity
    terms = {}
    if weights.hint > 0 or weights.relation > 0:
        idx = select_salient_tokens(teacher.features, num_f)  # [B, num_f]
        sel_s, sel_t = gather_tokens(student.tokens, idx), gather_tokens(teacher.features, idx)
        if weights.hint > 0:
            terms["hint"] = (hint_loss_reference(student.tokens, teacher.features, idx, feat_map)
                             if reference else hint_loss(feat_map(sel_s), sel_t))
        if weights.relation > 0:
            terms["relation"] = relation_loss(sel_s, sel_t, temperature_s, temperature_t)
    for view in weights.views():
        s_map, t_map = proj.attn_maps(view) if proj is not None else (_identity, _identity)
        terms[view] = F.mse_loss(_full(s_map(getattr(student, f"attn_{view}"))),
                                 _full(t_map(getattr(teacher, f"attn_{view}"))))
    if weights.pixel > 0:
        terms["pixel"] = F.mse_loss(_full(student.pixels), _full(pixel_target))
    for name in ("img_feat", "vid_feat"):
        if getattr(weights, name) > 0:
            loss = (feature_losses or {}).get(name, FeatureLoss())
            terms[name] = loss(getattr(student, name), getattr(teacher, name))
    scale = {"hint": weights.hint, "relation": weights.relation, "global": weights.global_,
             "local": weights.local, "pixel": weights.pixel, "img_feat": weights.img_feat,
             "vid_feat": weights.vid_feat}
    total = sum(scale[k] * v for k, v in terms.items())
    return total, terms
