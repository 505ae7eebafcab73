"""One epoch of MMKD distillation, MVD distillation or VideoMAE pixel pre-training (any mix).

Each step: the frozen teacher (MMKD's, or MVD's image and video teachers,
``modeling_teacher.Teachers``) encodes the clip once (no gradients), the student encodes it,
:func:`losses.mmkd_loss` combines the terms, and the optimizer steps every ``update_freq``
micro-batches with per-step lr and weight-decay schedules.
"""
import contextlib
import math
import time

import torch
from tqdm import tqdm

from distributed import every_rank, is_main_process
from logger import Averager, epoch_summary
from losses import mmkd_loss, pixel_targets


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops before stepping on it."""


def autocast_context(device, amp_dtype):
    """Autocast to ``amp_dtype`` on ``device`` (CUDA: bf16 or fp16; CPU: bf16), nothing when
    ``amp_dtype`` is None. ``optim_factory.amp_setup`` decides which dtype a run uses."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)


def cosine_value(step, total_steps, base, final, warmup_steps=0, warmup_start=0.0):
    """Linear warm-up from ``warmup_start`` then half-cosine from ``base`` to ``final``."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * min(1.0, t)))


def forward_losses(student, teacher, videos, mask, *, weights, device, amp_dtype=None,
                   teacher_autocast=True, num_k=10, num_f=10, kd_T=1.0, temperature_s=0.1,
                   temperature_t=0.05, normalize_target=True, mean=None, std=None,
                   reference=False, feature_losses=None):
    """The forward half of one step: teacher targets (once, no gradients), pixel targets,
    student outputs and :func:`losses.mmkd_loss`; returns ``(loss, terms)``.

    Args:
        videos: ``[B, 3, T, H, W]`` on ``device``; mask: bool ``[B, N]``, True = hidden.
        amp_dtype: autocast dtype (None = float32), for teacher and student alike:
            the teacher runs in bf16 too, which is where most of its time goes.
        teacher_autocast: False runs the teacher in float32 outside autocast, as the
            reference code does (benchmarks' baseline).
        reference: MM-hint as the public code computes it (``--reference_losses``); the
            teacher's local view pairs values as the student's ``pairing`` says.
        feature_losses: MVD's terms' :class:`losses.FeatureLoss` by name (``mmkd_loss``).
    """
    raw = getattr(student, "module", student)
    pe = raw.patch_embed
    views = weights.views()
    t_out = None
    if teacher is not None:
        with autocast_context(device, amp_dtype if teacher_autocast else None):
            t_out = teacher(videos, mask, views, num_k, kd_T, getattr(raw, "pairing", "slice"))
    with autocast_context(device, amp_dtype):
        target = None
        if weights.pixel > 0:
            target = pixel_targets(videos, mask, pe.tubelet_size, pe.patch_size, mean, std,
                                   normalize_target)
        s_out = student(videos, mask)
        return mmkd_loss(s_out, t_out, weights, target, temperature_s, temperature_t, num_f,
                         reference, feature_losses)


def backward_step(model, optimizer, loss, boundary, *, update_freq=1, loss_scaler=None,
                  clip_grad=None):
    """Backward of ``loss / update_freq`` (DDP ``no_sync`` until the last micro-batch of an
    update) and, at an update ``boundary``, :func:`optimizer_update`. Returns the gradient
    norm at a boundary, else None."""
    no_sync = not boundary and hasattr(model, "no_sync")
    with model.no_sync() if no_sync else contextlib.nullcontext():
        scaled = loss / update_freq
        (loss_scaler.scale(scaled) if loss_scaler else scaled).backward()
    if not boundary:
        return None
    return float(optimizer_update(getattr(model, "module", model), optimizer, loss_scaler,
                                  clip_grad))


def host_values(loss, terms):
    """``(loss, {name: value})`` as Python floats with one device-to-host copy per step."""
    vals = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
    vals = vals.tolist()
    return vals[0], dict(zip(terms, vals[1:]))


def optimizer_update(model, optimizer, loss_scaler=None, clip_grad=None):
    """Unscale (fp16), clip, step and zero the gradients of ``model``'s trainable
    parameters; returns the gradient norm before clipping."""
    if loss_scaler:
        loss_scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    if loss_scaler:
        loss_scaler.step(optimizer)
        loss_scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def flatten_samples(videos, mask):
    """Repeated sampling (VideoMAE V2's ``--num_sample``, as MAE-ST): the ``S`` clips cropped
    and masked from one decoded window become separate batch rows.

    Args:
        videos: ``[B, 3, T, H, W]`` or ``[B, S, 3, T, H, W]``.
        mask: bool ``[B, N]`` / ``[B, S, N]`` (or with the token grid's dims for ``N``).
    Returns:
        ``(videos [B*S, 3, T, H, W], mask [B*S, N])``; clip ``s`` of video ``b`` is row
        ``b*S + s``.
    """
    if videos.ndim == 6:
        return videos.flatten(0, 1), mask.flatten(0, 1).flatten(1)
    return videos, mask.flatten(1)


def train_one_epoch(student, teacher, data_loader, optimizer, device, epoch, *, weights,
                    lr_scheduler, wd_schedule, steps_per_epoch, loss_scaler=None,
                    amp_dtype=None, clip_grad=None, update_freq=1, num_k=10, num_f=10, kd_T=1.0,
                    temperature_s=0.1, temperature_t=0.05, normalize_target=True,
                    mean=None, std=None, logger=None, reference=False, feature_losses=None,
                    run_state=None):
    """Train ``student`` for one epoch; returns the epoch's mean metrics.

    Args:
        student: a (possibly DDP-wrapped) ``PretrainVisionTransformer``.
        teacher: frozen ``Teacher`` (MMKD), ``Teachers`` (MVD) or None (pixel-only
            VideoMAE pre-training).
        data_loader: yields dicts with ``video [B, 3, T, H, W]``, ``bool_masked_pos [B, N]``
            (or ``[B, S, ...]`` with ``--num_sample S``: :func:`flatten_samples`) and
            ``num_skipped`` (corrupted clips dropped from the batch).
        weights: :class:`losses.LossWeights`.
        lr_scheduler: timm scheduler stepped per optimizer update (``step_update``).
        wd_schedule: callable ``update -> weight decay`` for the groups that decay.
        steps_per_epoch: optimizer updates per epoch (for the global step).
        loss_scaler: ``torch.amp.GradScaler`` for fp16, or None.
        reference: MM-hint as the public code computes it (:func:`forward_losses`).
        feature_losses: MVD's terms' :class:`losses.FeatureLoss` by name.
        run_state: ``run_state.RunState``: where a resumed epoch continues, and its
            ``after_update`` after every update (timed saves, stopping on a signal).
    Raises:
        NonFiniteLossError: naming the step and the term that is not finite.
    """
    student.train()
    start, avg, skipped, seen = (run_state.epoch_start(epoch) if run_state is not None
                                 else (0, Averager(), 0, 0))
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(data_loader, desc=f"epoch {epoch}", disable=not is_main_process(),
               dynamic_ncols=True, leave=True, mininterval=1.0, initial=start,
               total=start + len(data_loader))
    t_end = time.perf_counter()
    for i, batch in enumerate(bar, start):
        t_start = time.perf_counter()
        t_data = t_start - t_end
        skipped += int(batch.get("num_skipped", 0))
        if not every_rank("video" in batch, device):  # a batch of only corrupted clips
            t_end = time.perf_counter()
            continue
        update = epoch * steps_per_epoch + i // update_freq
        if i % update_freq == 0:
            lr_scheduler.step_update(update)
            wd = wd_schedule(update)
            for g in optimizer.param_groups:
                if g["weight_decay"] > 0:
                    g["weight_decay"] = wd
        videos, mask = flatten_samples(batch["video"], batch["bool_masked_pos"])
        videos = videos.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True).bool()
        loss, terms = forward_losses(student, teacher, videos, mask, weights=weights,
                                     device=device, amp_dtype=amp_dtype, num_k=num_k, num_f=num_f,
                                     kd_T=kd_T, temperature_s=temperature_s,
                                     temperature_t=temperature_t,
                                     normalize_target=normalize_target, mean=mean, std=std,
                                     reference=reference, feature_losses=feature_losses)
        loss_value, values = host_values(loss, terms)
        for k, v in values.items():
            if not math.isfinite(v):
                raise NonFiniteLossError(f"loss term '{k}' is {v} at epoch {epoch}, step {i} "
                                         f"(global update {update}); stopping without a step")
        boundary = (i + 1) % update_freq == 0
        grad_norm = backward_step(student, optimizer, loss, boundary, update_freq=update_freq,
                                  loss_scaler=loss_scaler, clip_grad=clip_grad)
        if torch.device(device).type == "cuda":  # honest step times
            torch.cuda.synchronize()
        t_step = time.perf_counter() - t_start  # compute only; data_time is the loader's share
        n = videos.shape[0]
        seen += n
        lr = max(g["lr"] for g in optimizer.param_groups)
        step_metrics = dict(loss=loss_value, **values, lr=lr, clips_per_s=n / (t_data + t_step),
                            data_time=t_data, step_time=t_step)
        if grad_norm is not None:
            step_metrics["grad_norm"] = grad_norm
        avg.update(step_metrics, n)
        if logger is not None and boundary:
            logger.scalars(step_metrics, update, "train")
        if run_state is not None and boundary:
            run_state.after_update(epoch, i, avg, skipped, seen)
        bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in step_metrics.items()
                                     if k not in ("step_time",)), refresh=False)
        t_end = time.perf_counter()
    bar.close()
    return epoch_summary(avg, skipped, seen, device)

