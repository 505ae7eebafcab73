"""Optimisation set-up shared by pre-training and fine-tuning: the flags, the lr scaled by
the effective batch, the timm optimizer (layer decay, fused AdamW on CUDA; ``--opt sgd`` is
timm's SGD with Nesterov momentum), the per-update warm-up + cosine schedule or the
multi-step one (``--sched multistep``, TPN's recipe), and the autocast / loss-scaler choice.

The lr rule is VideoMAE's: ``--lr``, ``--min_lr`` and ``--warmup_lr`` are per 256 clips and
scale linearly with ``batch_size x processes x update_freq`` (Goyal et al. 2017).
"""
import argparse

import torch
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

import distributed as du
import recipes


def add_optim_args(parser, *, lr, min_lr, warmup_epochs, opt_betas=None):
    """The optimisation flags, with the defaults that differ between the scripts."""
    a = parser.add_argument
    a("--opt", default="adamw", help="timm optimizer name")
    a("--opt_eps", type=float, default=1e-8)
    a("--opt_betas", type=float, nargs=2, default=opt_betas, help="default: the optimizer's")
    a("--momentum", type=float, default=0.9)
    a("--clip_grad", type=float, default=None, help="max grad norm (None = no clipping)")
    a("--weight_decay", type=float, default=0.05)
    a("--lr", type=float, default=lr, help="lr per 256 clips (scaled by total batch / 256)")
    a("--warmup_lr", type=float, default=1e-6, help="warm-up start lr per 256 clips")
    a("--min_lr", type=float, default=min_lr, help="final lr per 256 clips")
    a("--warmup_epochs", type=int, default=warmup_epochs)
    a("--warmup_steps", type=int, default=-1, help="warm-up updates (overrides --warmup_epochs)")
    a("--sched", default="cosine", choices=["cosine", "multistep"],
      help="lr schedule after the warm-up: cosine to --min_lr, or x --decay_rate at each of "
           "--decay_milestones")
    a("--decay_milestones", type=int, nargs="+", default=[75, 125],
      help="multistep: the epochs from which the lr is multiplied by --decay_rate once more")
    a("--decay_rate", type=float, default=0.1, help="multistep: lr factor per milestone")
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
      help="autocast: on CUDA auto = bf16 where supported, else fp16 + loss scaling; on a CPU "
           "auto = float32 and bf16 is opt-in (fast on CPUs with AVX512-BF16 or AMX)")
    a("--compile", action=argparse.BooleanOptionalAction, default=False,
      help="torch.compile every transformer block (state-dict keys unchanged); the first "
           "steps are slow while it compiles")
    a("--fused_opt", action=argparse.BooleanOptionalAction, default=True,
      help="fused (single-kernel) AdamW/Adam on CUDA; ignored on CPU and for other --opt")


def scale_lrs(args, clips_per_item=1):
    """Set ``args.world_size``, ``args.total_batch_size`` (per process x ``clips_per_item``
    x processes x accumulation: pre-training's ``--num_sample`` clips of one decode count;
    VideoMAE V2's code counts the videos only, see MODEL_ZOO.md) and
    ``args.{lr,min_lr,warmup_lr}_scaled`` (x total batch / 256); with ``--recipe``, prints and
    records the differences from it (``recipes.report_drift``)."""
    args.world_size = du.get_world_size()
    args.total_batch_size = args.batch_size * clips_per_item * args.world_size * args.update_freq
    scale = args.total_batch_size / 256
    args.lr_scaled, args.min_lr_scaled, args.warmup_lr_scaled = (
        args.lr * scale, args.min_lr * scale, args.warmup_lr * scale)
    recipes.report_drift(args)  # --recipe: the resolved settings against the published row


def fused_kwargs(args):
    """``{"fused": True}`` for AdamW/Adam on CUDA with ``--fused_opt`` (one kernel per
    parameter group), else ``{}``."""
    fused = (getattr(args, "fused_opt", False) and torch.device(args.device).type == "cuda"
             and args.opt.lower() in ("adamw", "adam"))
    return {"fused": True} if fused else {}


def build_optimizer(model, args, layer_decay=None, filter_bias_and_bn=True):
    """timm optimizer over ``model``'s trainable parameters at ``args.lr_scaled``, no weight
    decay on biases, norms and ``model.no_weight_decay()`` (unless ``filter_bias_and_bn`` is
    False: weight decay on every parameter, as mmcv's SGD of the CNN recipes), optional
    layer-wise lr decay (``layer_decay < 1``), and ``fused=True`` for AdamW/Adam on CUDA
    (``--fused_opt``)."""
    kwargs = dict(optimizer_kwargs(args), lr=args.lr_scaled, **fused_kwargs(args))
    kwargs["layer_decay"] = layer_decay if layer_decay is not None and layer_decay < 1.0 else None
    return create_optimizer_v2(model, filter_bias_and_bn=filter_bias_and_bn, **kwargs)


def build_lr_scheduler(optimizer, args, steps_per_epoch):
    """Per-update schedule: linear warm-up from ``warmup_lr`` over ``--warmup_steps`` (or
    ``--warmup_epochs``) updates, then (``--sched cosine``) cosine to ``min_lr`` at the last
    update, or (``--sched multistep``) the lr times ``decay_rate ** k`` from the first update
    of the epoch of the ``k``-th of ``--decay_milestones`` on (mmcv's ``step`` policy of the
    TPN recipe: with milestones 75, 125 epochs 0-74 train at the full lr, 75-124 at 0.1x).
    Returns ``(timm scheduler, warm-up updates, total updates)``."""
    total = steps_per_epoch * args.epochs
    warmup = args.warmup_steps if args.warmup_steps >= 0 else args.warmup_epochs * steps_per_epoch
    warmup = min(warmup, total - 1)
    if getattr(args, "sched", "cosine") == "multistep":
        # timm counts milestone m from update m - 1 (it compares t + 1): + 1 makes an epoch
        # milestone start at that epoch's first update
        scheduler = MultiStepLRScheduler(
            optimizer, decay_t=sorted(m * steps_per_epoch + 1 for m in args.decay_milestones),
            decay_rate=args.decay_rate, warmup_t=warmup, warmup_lr_init=args.warmup_lr_scaled,
            warmup_prefix=False, t_in_epochs=False)
        return scheduler, warmup, total
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup),
                                  lr_min=args.min_lr_scaled, warmup_t=warmup,
                                  warmup_lr_init=args.warmup_lr_scaled, warmup_prefix=True,
                                  t_in_epochs=False)
    return scheduler, warmup, total


def cpu_has_native_bf16():
    """Whether oneDNN has bf16 dot-product kernels on this CPU (AVX512-BF16 or AMX); without
    them CPU bf16 autocast still runs, but slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_setup(args):
    """``(autocast dtype or None, GradScaler or None)`` for ``--amp`` on this device.

    CUDA: ``auto`` = bf16 where supported, else fp16 with a GradScaler. CPU: float32 unless
    ``--amp bf16`` (CPU results then stay comparable across machines by default).

    Raises:
        ValueError: ``--amp fp16`` on a CPU (CPU fp16 matmuls are slow and need loss scaling).
    """
    if args.amp == "none":
        return None, None
    if torch.device(args.device).type != "cuda":
        if args.amp == "fp16":
            raise ValueError(f"--amp fp16 needs a CUDA device (--device is {args.device}); "
                             "use --amp bf16 or --amp none on a CPU")
        if args.amp == "auto" and cpu_has_native_bf16():
            print("note: this CPU computes bf16 natively; --amp bf16 runs the models ~3x "
                  "faster (float32 by default on a CPU)")
        return (torch.bfloat16 if args.amp == "bf16" else None), None
    bf16 = args.amp == "bf16" or (args.amp == "auto" and torch.cuda.is_bf16_supported())
    return (torch.bfloat16, None) if bf16 else (torch.float16, torch.amp.GradScaler("cuda"))


def load_optimizer_state(optimizer, state, source):
    """Load a saved optimizer ``state`` into ``optimizer``, also when its parameter groups
    come in another order: timm's groups are ``[no decay, decay]``, MVD's and VideoMAE's
    ``get_parameter_groups`` saves ``[decay, no decay]``. Groups are matched by (decays or
    not, number of parameters); within a group both list the parameters in the model's
    ``named_parameters`` order, so each state follows its parameter.

    Raises:
        ValueError: one line naming ``source`` when the groups cannot be matched.
    """
    def signature(groups):
        return [(g["weight_decay"] > 0, len(g["params"])) for g in groups]

    ours, saved = signature(optimizer.param_groups), signature(state["param_groups"])
    if saved != ours:
        order = sorted(range(len(saved)), key=lambda i: saved[i])
        want = sorted(range(len(ours)), key=lambda i: ours[i])
        if sorted(saved) != sorted(ours):
            raise ValueError(f"{source}: its optimizer state has parameter groups (decay, size) "
                             f"{saved}, this run's optimizer {ours}; the model or "
                             f"--weight_decay differs from the run that saved it")
        groups = [None] * len(ours)
        for i, j in zip(want, order):
            groups[i] = state["param_groups"][j]
        state = dict(state, param_groups=groups)
    optimizer.load_state_dict(state)
