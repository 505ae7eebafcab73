"""Fine-tuning and evaluation of the video classifier (VideoMAE, Tong et al. 2022, Sec. 4;
the protocol MMKD Sec. 4.1 and MVD use unchanged).

- :func:`train_one_epoch`: supervised steps with repeated augmentation (the ``num_sample``
  copies of a clip flattened into the batch), timm Mixup/CutMix, gradient accumulation and a
  per-update timm lr schedule; the update itself is a :class:`TorchStep` (autocast, GradScaler,
  clipping, DDP) or a :class:`DeepSpeedStep` (``--enable_deepspeed``: the engine does all that).
  A model with an auxiliary head (TPN) adds its weighted loss (:func:`classification_loss`),
  logged as its own term ``loss_aux`` beside ``loss_cls``.
- :func:`evaluate`: single-view validation (one centred clip and crop per video), Top-1/Top-5.
- :func:`multiview_test`: every test view (``test_num_segment`` clips x ``test_num_crop``
  crops) scored once, the softmax probabilities of a video's views averaged, then Top-1, Top-5
  and mean per-class accuracy over videos. Scores are gathered as tensors from every process
  (no per-rank text files), and views are de-duplicated by ``(video, view)``, so the result is
  exact whatever the number of processes. Optionally a horizontally flipped pass of every
  view is averaged in (``flip``; TPN's Kinetics test). A CNN scores its views fully
  convolutionally (``modeling_tpn.ClsHead``), so its test views may be larger than its
  training crops (``--fcn_test``).

Accuracies are percentages. Top-5 means top-``min(5, C)`` when the head has ``C < 5`` classes
(so it is 100 for ``C <= 5``); the summary records the ``k`` used.
"""
import csv
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from distributed import all_reduce_sum, every_rank, get_rank, is_main_process
from engine_for_pretraining import NonFiniteLossError, autocast_context, backward_step
from logger import Averager, epoch_summary

__all__ = ["DeepSpeedStep", "NonFiniteLossError", "TorchStep", "average_views",
           "classification_loss", "evaluate", "flatten_repeated", "mix_clips", "multiview_metrics",
           "multiview_test", "score_views", "summarize_views", "topk_correct", "train_one_epoch",
           "write_predictions"]


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def flatten_repeated(videos, labels):
    """Repeated augmentation (Hoffer et al. 2020; VideoMAE ``num_sample``): the ``S`` augmented
    copies of each clip become separate batch entries.

    Args:
        videos: ``[B, 3, T, H, W]`` or ``[B, S, 3, T, H, W]``.
        labels: ``[B]`` int64.
    Returns:
        ``([B*S, 3, T, H, W], [B*S])``; copy ``s`` of clip ``b`` is row ``b*S + s``.
    """
    if videos.ndim == 6:
        return videos.flatten(0, 1), labels.repeat_interleave(videos.shape[1])
    return videos, labels


def mix_clips(mixup_fn, videos, labels):
    """timm Mixup/CutMix on clips: one CutMix box in ``H x W`` shared by all frames.

    timm's ``Mixup`` cuts ``x[:, :, y0:y1, x0:x1]``, which on a ``[B, 3, T, H, W]`` clip would
    cut a ``T x H`` box (what the VideoMAE code does); viewing the clip as
    ``[B, 3T, H, W]`` makes the box spatial. An odd batch (a corrupted clip was dropped) loses
    its last clip, since timm pairs clip ``i`` with clip ``B-1-i``.

    Args:
        mixup_fn: ``timm.data.Mixup``.
        videos: ``[B, 3, T, H, W]`` float; labels: ``[B]`` int64.
    Returns:
        ``(videos [B', 3, T, H, W], soft targets [B', num_classes])`` with ``B' = B - B % 2``
        (may be 0).
    """
    even = videos.shape[0] - videos.shape[0] % 2
    videos, labels = videos[:even].contiguous(), labels[:even]
    if even == 0:
        return videos, labels.new_zeros((0, mixup_fn.num_classes), dtype=torch.float32)
    mixed, targets = mixup_fn(videos.flatten(1, 2), labels)  # [B, 3T, H, W], in place
    return mixed.view_as(videos), targets


def classification_loss(criterion, output, targets):
    """The training loss of a classifier's output.

    Args:
        criterion: loss of ``(logits [B, C] float32, targets)``.
        output: logits ``[B, C]``, or (a model with an auxiliary head in training, e.g.
            ``modeling_tpn.AuxOutput``) an object with ``logits``, ``aux_logits`` and
            ``aux_weight``: TPN's deep supervision, Sec. 3.3.
    Returns:
        ``(loss, terms)``: ``criterion(logits)`` and ``{}``; with an auxiliary head
        ``loss_cls + loss_aux`` and ``{"loss_cls": criterion(logits), "loss_aux": aux_weight
        x criterion(aux_logits)}`` (the same criterion and targets for both).
    """
    if not hasattr(output, "aux_logits"):
        return criterion(output.float(), targets), {}
    loss_cls = criterion(output.logits.float(), targets)
    loss_aux = output.aux_weight * criterion(output.aux_logits.float(), targets)
    return loss_cls + loss_aux, {"loss_cls": loss_cls, "loss_aux": loss_aux}


class TorchStep:
    """One micro-batch in plain PyTorch: forward and loss under autocast, backward of
    ``loss / update_freq`` (DDP ``no_sync`` while accumulating) and, on the last micro-batch of
    an update, unscale (fp16), clip, step and zero (``engine_for_pretraining.backward_step``).

    Args:
        model: the (possibly DDP-wrapped) classifier; optimizer: its optimizer.
        loss_scaler: ``torch.amp.GradScaler`` (fp16) or None; amp_dtype: autocast dtype or None.
        clip_grad: max gradient norm or None; update_freq: micro-batches per update.
    """

    def __init__(self, model, optimizer, *, loss_scaler=None, amp_dtype=None, clip_grad=None,
                 update_freq=1):
        self.model, self.optimizer, self.loss_scaler = model, optimizer, loss_scaler
        self.amp_dtype, self.clip_grad, self.update_freq = amp_dtype, clip_grad, update_freq
        self.eval_kwargs = dict(amp_dtype=amp_dtype)  # for evaluate / multiview_test

    def loss(self, criterion, videos, targets):
        """``(loss, terms)`` of :func:`classification_loss`, under autocast."""
        with autocast_context(videos.device, self.amp_dtype):
            return classification_loss(criterion, self.model(videos), targets)

    def is_boundary(self, i):
        """Whether micro-batch ``i`` of the epoch ends an update."""
        return (i + 1) % self.update_freq == 0

    def __call__(self, loss, boundary):
        """Backward (and the update at a boundary); returns the gradient norm or None."""
        return backward_step(self.model, self.optimizer, loss, boundary,
                             update_freq=self.update_freq, loss_scaler=self.loss_scaler,
                             clip_grad=self.clip_grad)


class DeepSpeedStep:
    """One micro-batch through a DeepSpeed engine: inputs cast to the engine's dtype
    (``deepspeed_utils.input_dtype``), ``engine.backward(loss)`` and ``engine.step()``; loss
    scaling, accumulation, clipping and zeroing happen inside the engine."""

    def __init__(self, engine, dtype=torch.float32):
        self.model, self.dtype = engine, dtype
        self.eval_kwargs = dict(dtype=dtype)  # the engine's model is held in this dtype

    def loss(self, criterion, videos, targets):
        return classification_loss(criterion, self.model(videos.to(self.dtype)), targets)

    def is_boundary(self, i):
        return self.model.is_gradient_accumulation_boundary()

    def __call__(self, loss, boundary):
        self.model.backward(loss)
        self.model.step()
        norm = self.model.get_global_grad_norm() if boundary else None
        return None if norm is None else float(norm)


def train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, *, lr_scheduler,
                    steps_per_epoch, mixup_fn=None, loss_scaler=None, amp_dtype=None,
                    clip_grad=None, update_freq=1, logger=None, step=None, run_state=None):
    """Fine-tune ``model`` for one epoch of ``steps_per_epoch`` optimizer updates.

    Args:
        model: (possibly DDP-wrapped) classifier, ``[B, 3, T, H, W] -> [B, C]``, or the
            DeepSpeed engine of ``step``.
        criterion: loss of ``(logits [B, C], targets)``; targets are soft ``[B, C]`` with
            ``mixup_fn`` (``SoftTargetCrossEntropy``), class indices ``[B]`` otherwise.
        data_loader: yields ``collate_skip_none`` dicts: ``video [B, 3, T, H, W]`` or
            ``[B, S, 3, T, H, W]`` (repeated augmentation), ``label [B]``, ``num_skipped``.
        optimizer: the optimizer whose ``param_groups`` the schedule sets (logged lr).
        lr_scheduler: timm scheduler, ``step_update(global_update)`` before every update.
        steps_per_epoch: optimizer updates per epoch; the first
            ``steps_per_epoch * update_freq`` micro-batches are used.
        mixup_fn: ``timm.data.Mixup`` or None.
        loss_scaler, amp_dtype, clip_grad: for the default ``step`` (see :class:`TorchStep`).
        update_freq: micro-batches per update.
        logger: :class:`logger.RunLogger` for per-update scalars, or None.
        step: :class:`TorchStep` or :class:`DeepSpeedStep`; default
            ``TorchStep(model, optimizer, ...)`` of the arguments above.
        run_state: ``run_state.RunState``: where a resumed epoch continues, and its
            ``after_update`` after every update (timed saves, stopping on a signal).
    Returns:
        dict of epoch means over processes (``loss``, ``lr``, ``grad_norm``, ``clips_per_s``,
        ``data_time``, ``step_time``; ``loss_cls`` and ``loss_aux`` for a model with an
        auxiliary head) plus totals ``clips`` and ``skipped_videos``.
    Raises:
        NonFiniteLossError: the loss is NaN/inf (names epoch and step); no step is taken on it.
    """
    step = step or TorchStep(model, optimizer, loss_scaler=loss_scaler, amp_dtype=amp_dtype,
                             clip_grad=clip_grad, update_freq=update_freq)
    model.train()
    start, avg, skipped, seen = (run_state.epoch_start(epoch) if run_state is not None
                                 else (0, Averager(), 0, 0))
    optimizer.zero_grad(set_to_none=True)
    num_batches = steps_per_epoch * update_freq
    bar = tqdm(data_loader, total=num_batches, desc=f"epoch {epoch}", leave=True, initial=start,
               disable=not is_main_process(), dynamic_ncols=True, mininterval=1.0)
    t_end = time.perf_counter()
    for i, batch in enumerate(bar, start):
        if i >= num_batches:
            break
        t_start = time.perf_counter()
        t_data = t_start - t_end
        skipped += int(batch.get("num_skipped", 0))
        update = epoch * steps_per_epoch + i // update_freq
        videos = None
        if "video" in batch:
            videos, labels = flatten_repeated(batch["video"].to(device, non_blocking=True),
                                              batch["label"].to(device, non_blocking=True))
            targets = labels
            if mixup_fn is not None:  # may drop an odd last clip, leaving none
                videos, targets = mix_clips(mixup_fn, videos, labels)
        # every rank skips together when one has no clip left (only corrupted ones, or one
        # clip dropped by Mixup), so none waits alone in DDP's gradient all-reduce
        if not every_rank(videos is not None and videos.shape[0] > 0, device):
            t_end = time.perf_counter()
            continue
        loss, terms = step.loss(criterion, videos, targets)
        values = torch.stack([loss, *terms.values()]).detach().tolist()  # one host sync
        loss_value = values[0]
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {i} (global "
                                     f"update {update}); stopping without a step")
        boundary = step.is_boundary(i)
        if boundary:
            lr_scheduler.step_update(update)
        step_metrics = dict(loss=loss_value, **dict(zip(terms, values[1:])))
        grad_norm = step(loss, boundary)
        if grad_norm is not None:
            step_metrics["grad_norm"] = grad_norm
        if torch.device(device).type == "cuda":  # honest step times
            torch.cuda.synchronize()
        t_step = time.perf_counter() - t_start  # compute only; data_time is the loader's share
        n = videos.shape[0]
        seen += n
        step_metrics.update(lr=max(g["lr"] for g in optimizer.param_groups),
                            clips_per_s=n / (t_data + t_step), data_time=t_data, step_time=t_step)
        avg.update(step_metrics, n)
        if logger is not None and boundary:
            logger.scalars(step_metrics, update, "train")
        if run_state is not None and boundary:
            run_state.after_update(epoch, i, avg, skipped, seen)
        bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in step_metrics.items()),
                            refresh=False)
        t_end = time.perf_counter()
    bar.close()
    return epoch_summary(avg, skipped, seen, device)


# ---------------------------------------------------------------------------------------------
# metrics on tensors (pure)
# ---------------------------------------------------------------------------------------------

def topk_correct(scores, labels, k):
    """Whether each label is among the ``min(k, C)`` highest scores.

    Args:
        scores: ``[N, C]`` logits or probabilities; labels: ``[N]`` int64.
        k: requested ``k``; clipped to ``C`` (Top-5 of a 3-class head is Top-3 = always True).
    Returns:
        bool ``[N]``.
    """
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # [N, k]
    return (top == labels[:, None]).any(dim=1)


def average_views(video_index, view, probs):
    """Average the view probabilities of each video, counting each ``(video, view)`` once.

    Args:
        video_index: ``[M]`` int64, the video each scored view belongs to.
        view: ``[M]`` int64, the view number within its video.
        probs: ``[M, C]`` softmax probabilities of the views.
    Returns:
        ``(videos [V] sorted unique video indices, mean_probs [V, C] float64,
        num_views [V] int64)``. A ``(video, view)`` pair scored more than once (e.g. by a
        padding sampler) contributes only its first row.
    """
    if video_index.numel() == 0:
        none = video_index.new_zeros(0)
        return none, torch.zeros((0, probs.shape[1]), dtype=torch.float64), none
    pairs, inverse = torch.unique(torch.stack([video_index, view], dim=1), dim=0,
                                  return_inverse=True)  # [P, 2], [M]
    positions = torch.arange(inverse.numel())
    first = torch.full((pairs.shape[0],), inverse.numel()).scatter_reduce(
        0, inverse, positions, reduce="amin")  # [P] first row of every pair
    kept_video, kept_probs = video_index[first], probs[first].double()
    videos, slot = torch.unique(kept_video, return_inverse=True)  # [V], [P]
    sums = torch.zeros(videos.numel(), probs.shape[1], dtype=torch.float64)
    sums.index_add_(0, slot, kept_probs)
    num_views = torch.bincount(slot, minlength=videos.numel())
    return videos, sums / num_views[:, None], num_views


def multiview_metrics(mean_probs, labels, k=5):
    """Video-level Top-1, Top-k and mean per-class accuracy (all in percent).

    Args:
        mean_probs: ``[V, C]`` view-averaged probabilities; labels: ``[V]`` int64.
        k: the second top-k (5; clipped to ``C``).
    Returns:
        dict ``top1``, ``top5`` (Top-``min(k, C)``), ``topk_used``, ``mean_class_acc``
        (Top-1 accuracy of each class, averaged over the classes that have test videos),
        ``num_videos``.
    """
    v, c = mean_probs.shape
    if v == 0:
        return dict(top1=float("nan"), top5=float("nan"), topk_used=min(k, c),
                    mean_class_acc=float("nan"), num_videos=0)
    hit1 = topk_correct(mean_probs, labels, 1).double()
    hitk = topk_correct(mean_probs, labels, k).double()
    per_class_hits = torch.zeros(c, dtype=torch.float64).index_add_(0, labels, hit1)
    per_class_count = torch.bincount(labels, minlength=c).double()
    present = per_class_count > 0
    mean_class = (per_class_hits[present] / per_class_count[present]).mean()
    return dict(top1=100 * hit1.mean().item(), top5=100 * hitk.mean().item(),
                topk_used=min(k, c), mean_class_acc=100 * mean_class.item(), num_videos=v)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, data_loader, device, *, amp_dtype=None, dtype=None, distributed=False):
    """Single-view validation: cross-entropy, Top-1 and Top-5 (percent) over the clips.

    Args:
        model: classifier (unwrapped); data_loader: ``collate_skip_none`` batches with
            ``video [B, 3, T, H, W]`` and ``label [B]``.
        amp_dtype: autocast dtype or None; dtype: input dtype (a DeepSpeed engine's model
            dtype) or None (as loaded).
        distributed: the loader's sampler shards the set without padding (each clip on one
            process); sums are then reduced over processes, so the result is exact.
    Returns:
        dict ``loss``, ``acc1``, ``acc5``, ``num_videos``, ``skipped_videos``.
    """
    model.eval()
    totals = dict(loss=0.0, acc1=0.0, acc5=0.0, n=0, skipped=0)
    for batch in tqdm(data_loader, desc="val", leave=False, disable=not is_main_process()):
        totals["skipped"] += int(batch.get("num_skipped", 0))
        if "video" not in batch:
            continue
        videos, labels = batch["video"].to(device=device, dtype=dtype), batch["label"].to(device)
        with autocast_context(device, amp_dtype):
            logits = model(videos).float()
        totals["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        totals["acc1"] += topk_correct(logits, labels, 1).sum().item()
        totals["acc5"] += topk_correct(logits, labels, 5).sum().item()
        totals["n"] += labels.numel()
    if distributed:
        totals = {k: all_reduce_sum(v, device) for k, v in totals.items()}
    n = max(totals["n"], 1)
    return dict(loss=totals["loss"] / n, acc1=100 * totals["acc1"] / n,
                acc5=100 * totals["acc5"] / n, num_videos=int(totals["n"]),
                skipped_videos=int(totals["skipped"]))


@torch.no_grad()
def score_views(model, data_loader, device, *, amp_dtype=None, dtype=None, flip=False):
    """Softmax probabilities of every test view this process sees.

    Args:
        data_loader: test-mode batches (``video``, ``label``, ``video_id``, ``index``, ``view``).
        amp_dtype, dtype: as in :func:`evaluate`.
        flip: a view's probabilities are the mean of those of the view and of its
            horizontally flipped copy (the same as counting the flipped copy as one more
            view of the video).
    Returns:
        dict ``video_index [M]``, ``view [M]``, ``label [M]`` (int64), ``probs [M, C]``
        (float32, CPU), ``video_ids`` (``{video_index: video_id}``), ``skipped`` (views whose
        video could not be decoded).
    """
    model.eval()
    rows = dict(video_index=[], view=[], label=[], probs=[])
    video_ids, skipped = {}, 0
    for batch in tqdm(data_loader, desc="test", leave=False, disable=not is_main_process()):
        skipped += int(batch.get("num_skipped", 0))
        if "video" not in batch:
            continue
        videos = batch["video"].to(device=device, dtype=dtype)  # [B, 3, T, H, W]
        with autocast_context(device, amp_dtype):
            probs = model(videos).float().softmax(dim=1)  # [B, C]
            if flip:
                probs = (probs + model(videos.flip(-1)).float().softmax(dim=1)) / 2
        rows["probs"].append(probs.cpu())
        for key in ("video_index", "view", "label"):
            rows[key].append(batch["index" if key == "video_index" else key].long())
        video_ids.update(zip(batch["index"].tolist(), batch["video_id"]))
    c = getattr(model, "num_classes", 0)
    out = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in rows.items()}
    if not rows["probs"]:
        out["probs"] = torch.zeros(0, c)
    return dict(out, video_ids=video_ids, skipped=skipped)


def _gather_scores(scores):
    """All processes' :func:`score_views` results merged on rank 0 (None on the others);
    the process's own result when not distributed. Rank 0 receives every view's
    probabilities (``M x C`` float32: about 0.5 GB for the full Kinetics-400 test at 5x3
    views), which keeps the de-duplication by ``(video, view)`` exact."""
    if not (dist.is_available() and dist.is_initialized()):
        return scores
    parts = [None] * dist.get_world_size() if get_rank() == 0 else None
    dist.gather_object(scores, parts, dst=0)
    if get_rank() != 0:
        return None
    keys = ("video_index", "view", "label", "probs")
    merged = {k: torch.cat([p[k] for p in parts]) for k in keys}
    merged["video_ids"] = {i: v for p in parts for i, v in p["video_ids"].items()}
    merged["skipped"] = sum(p["skipped"] for p in parts)
    return merged


def write_predictions(path, video_ids, labels, mean_probs, num_views, k=5):
    """CSV of the video-level predictions, one row per video.

    Columns: ``video_id, label, num_views, pred_1..pred_k, score_1..score_k`` (classes by
    decreasing view-averaged probability, ``k`` clipped to the number of classes).
    """
    k = min(k, mean_probs.shape[1])
    top = mean_probs.topk(k, dim=1) if mean_probs.shape[0] else None
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "label", "num_views"] + [f"pred_{j + 1}" for j in range(k)]
                   + [f"score_{j + 1}" for j in range(k)])
        for r, vid in enumerate(video_ids):
            w.writerow([vid, int(labels[r]), int(num_views[r])] + top.indices[r].tolist()
                       + [f"{s:.6f}" for s in top.values[r].tolist()])


def summarize_views(merged, *, output_dir="", views_per_video=None,
                    summary_file="test_summary.json", extra=None):
    """Video-level results of every process's scored views (rank 0's :func:`_gather_scores`
    result, or any dict of the same keys): views averaged per video (:func:`average_views`),
    :func:`multiview_metrics`, and with ``output_dir`` ``predictions.csv``
    (:func:`write_predictions`) and the summary (``summary_file``) written there.

    Args:
        merged: dict ``video_index [M]``, ``view [M]``, ``label [M]``, ``probs [M, C]``,
            ``video_ids`` ``{video_index: id}``, ``skipped`` (views not decoded).
        views_per_video: recorded in the summary.
        extra: more summary entries (``eval_protocol.test_record``: the protocol, the videos
            listed and found, the list's fingerprint).
    Returns:
        the summary dict: :func:`multiview_metrics` plus ``num_views`` (distinct views
        scored), ``skipped_views``, ``views_per_video`` and ``extra``.
    """
    videos, mean_probs, num_views = average_views(merged["video_index"], merged["view"],
                                                  merged["probs"])
    label_of = dict(zip(merged["video_index"].tolist(), merged["label"].tolist()))
    labels = torch.tensor([label_of[v] for v in videos.tolist()], dtype=torch.long)
    summary = multiview_metrics(mean_probs, labels)
    summary.update(num_views=int(num_views.sum()), skipped_views=int(merged["skipped"]),
                   views_per_video=views_per_video, **(extra or {}))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        ids = [merged["video_ids"][v] for v in videos.tolist()]
        write_predictions(os.path.join(output_dir, "predictions.csv"), ids, labels,
                          mean_probs, num_views)
        with open(os.path.join(output_dir, summary_file), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def multiview_test(model, data_loader, device, *, amp_dtype=None, dtype=None, output_dir="",
                   views_per_video=None, flip=False, summary_file="test_summary.json",
                   extra=None):
    """The multi-view test: score every view, gather, average per video, report.

    Args:
        model: classifier (unwrapped); data_loader: test-mode loader whose sampler gives each
            view to exactly one process (duplicates would be dropped anyway).
        amp_dtype, dtype: as in :func:`evaluate`; flip: as in :func:`score_views`.
        output_dir, views_per_video, summary_file, extra: as in :func:`summarize_views`
            (rank 0 writes ``predictions.csv`` and ``test_summary.json``).
    Returns:
        the summary dict of :func:`summarize_views` on every process.
    """
    merged = _gather_scores(score_views(model, data_loader, device, amp_dtype=amp_dtype,
                                         dtype=dtype, flip=flip))
    summary = None
    if merged is not None:
        summary = summarize_views(merged, output_dir=output_dir, views_per_video=views_per_video,
                                  summary_file=summary_file, extra=extra)
    if dist.is_available() and dist.is_initialized():
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary
