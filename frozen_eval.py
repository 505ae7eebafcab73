"""Frozen-feature evaluation: the features of every view of a frozen encoder, gathered over
processes and cached on disk, scored by the k-NN and linear probes (``probes.py``) as the
multi-view test scores a classifier; and the online k-NN of pre-training (:class:`OnlineKNN`).

Views are the fine-tuning test's (``VideoClsDataset`` in test mode: ``test_num_segment``
clips x ``test_num_crop`` crops of the short-side-resized frames, the data set's sampling),
each given to one process (``ShardSampler``), gathered to every process and de-duplicated by
``(video, view)``, so the result does not depend on the number of processes.
"""
import hashlib
import json
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import save_checkpoint
from datasets import VideoClsDataset, read_annotation
from datasets.collate import collate_skip_none
from distributed import broadcast_from_main, get_rank, get_world_size, is_dist, is_main_process
from engine_for_finetuning import multiview_metrics
from engine_for_pretraining import autocast_context
from extract_features import FeatureEncoder
from probes import KNN_K, KNN_T, knn_scores

VIEW_KEYS = ("video_index", "view", "label", "features")


def file_digest(path):
    """SHA-256 (hex) of a file, or of a directory's files (relative names and contents, in
    sorted order: DeepSpeed and Hugging Face checkpoints); ``"random"`` for an empty path
    (a randomly initialised encoder). Raises FileNotFoundError for a missing path."""
    if not path:
        return "random"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for name in files:
        if os.path.isdir(path):
            h.update(os.path.relpath(name, path).encode() + b"\0")
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def shard_loader(dataset, batch_size, num_workers=0):
    """Loader of the items ``rank, rank + world, ...`` of ``dataset`` in order (each view on
    exactly one process, no padding), ``collate_skip_none`` batches."""
    from run_class_finetuning import ShardSampler
    return torch.utils.data.DataLoader(
        dataset, sampler=ShardSampler(len(dataset), get_rank(), get_world_size()),
        batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_none)


@torch.no_grad()
def view_features(encoder, loader, device, *, tokens=False, amp_dtype=None, desc="features"):
    """Features of every view this process's ``loader`` gives.

    Args:
        encoder: :class:`extract_features.FeatureEncoder` (``x -> (tokens, pooled)``).
        loader: test-mode batches (``video``, ``label``, ``video_id``, ``index``, ``view``).
        tokens: keep the tokens ``[N, D]`` of every view instead of the pooled ``[D]``.
    Returns:
        dict ``video_index [M]``, ``view [M]``, ``label [M]`` (int64), ``features [M, D]`` or
        ``[M, N, D]`` (float32, CPU), ``video_ids`` (``{video_index: video_id}``), ``skipped``
        (views whose video could not be decoded).
    """
    encoder.eval().to(device)
    rows = {k: [] for k in VIEW_KEYS}
    video_ids, skipped = {}, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
        skipped += int(batch.get("num_skipped", 0))
        if "video" not in batch:
            continue
        with autocast_context(device, amp_dtype):
            tok, pooled = encoder(batch["video"].to(device))
        rows["features"].append((tok if tokens else pooled).float().cpu())
        rows["video_index"].append(batch["index"].long())
        rows["view"].append(batch["view"].long())
        rows["label"].append(batch["label"].long())
        video_ids.update(zip(batch["index"].tolist(), batch["video_id"]))
    out = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in rows.items()}
    return dict(out, video_ids=video_ids, skipped=skipped)


def gather_views(part):
    """Every process's :func:`view_features` merged on every process: rows sorted by
    ``(video_index, view)``, each pair once. ``part`` itself (sorted) when not distributed."""
    parts = [part]
    if is_dist():
        parts = [None] * get_world_size()
        dist.all_gather_object(parts, part)
    rows = [p for p in parts if p["features"].numel()] or parts[:1]  # a rank may have none
    merged = {k: torch.cat([p[k] for p in rows]) for k in VIEW_KEYS}
    key = merged["video_index"] * (int(merged["view"].max()) + 1 if merged["view"].numel() else 1) \
        + merged["view"]
    uniq, inverse = torch.unique(key, return_inverse=True)  # sorted
    first = torch.full((uniq.numel(),), key.numel()).scatter_reduce(
        0, inverse, torch.arange(key.numel()), reduce="amin")
    merged = {k: v[first] for k, v in merged.items()}
    merged["video_ids"] = {i: v for p in parts for i, v in p["video_ids"].items()}
    merged["skipped"] = sum(p["skipped"] for p in parts)
    return merged


def cached_features(cache_file, compute):
    """The gathered view features in ``cache_file`` when it exists, else ``compute()``
    (every process), written there atomically by rank 0. Returns ``(features, hit)``."""
    # rank 0 decides, so every process takes the same path (the computing one gathers)
    if cache_file and broadcast_from_main(os.path.isfile(cache_file)):
        return torch.load(cache_file, weights_only=True), True
    merged = compute()
    if cache_file and is_main_process():
        save_checkpoint(cache_file, merged)
    if is_dist():
        dist.barrier()
    return merged, False


def cache_name(**parts):
    """File name ``<sha256[:24]>.pt`` of a feature set: the checkpoint's digest, the list's
    digest and the protocol (clip geometry, sampling, views, model, tokens or pooled)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24] + ".pt"


def per_video(views):
    """``(video_index [V], mean feature [V, D], label [V])``: the views of each video averaged
    (a k-NN bank entry per training video)."""
    videos, slot = torch.unique(views["video_index"], return_inverse=True)
    feats = torch.zeros(videos.numel(), *views["features"].shape[1:], dtype=torch.float64)
    feats.index_add_(0, slot, views["features"].double())
    feats /= torch.bincount(slot, minlength=videos.numel()).view(-1, *[1] * (feats.ndim - 1))
    labels = torch.zeros(videos.numel(), dtype=torch.long).scatter_(0, slot, views["label"])
    return videos, feats.float(), labels


def scored(views, probs):
    """``views`` with its features replaced by per-view class probabilities ``[M, C]``: the
    input of ``engine_for_finetuning.summarize_views``."""
    return dict({k: v for k, v in views.items() if k != "features"}, probs=probs)


# ---------------------------------------------------------------------------------------------
# online k-NN during pre-training
# ---------------------------------------------------------------------------------------------

def add_knn_args(parser):
    """The online k-NN's flags (the three pre-training scripts)."""
    a = parser.add_argument
    a("--knn_eval_freq", type=int, default=0,
      help="every this many epochs (epochs N-1, 2N-1, ...), a k-NN evaluation of the "
      "student encoder's features (k=20, T=0.07) on --knn_val_list with --knn_train_list as "
      "the bank; knn_top1/knn_top5 go to log.json and tensorboard; 0 = off")
    a("--knn_train_list", default="", help="k-NN bank: 'path label' list (under --data_root)")
    a("--knn_val_list", default="", help="k-NN queries: 'path label' list (under --data_root)")


class OnlineKNN:
    """k-NN Top-1 / Top-5 of the pre-training encoder's pooled features (one centred clip,
    centre crop of the ``input_size`` short side per video, the clip geometry of the run):
    ``knn_val_list`` queried against ``knn_train_list``, at the end of epochs ``epoch`` with
    ``(epoch + 1) % knn_eval_freq == 0`` (so a resumed run keeps the schedule).

    Decoding the videos is most of the cost, so the decoded clips (this process's share) are
    kept in memory after the first evaluation when they fit in :attr:`KEEP_BYTES`; later
    evaluations then only run the encoder.

    Use :meth:`from_args` (None when ``--knn_eval_freq`` is 0) and call the instance,
    ``knn(model, epoch, step, logger)``, at the end of every epoch (it times the epochs).
    """
    KEEP_BYTES = 1 << 30  # 1 GiB: about 110 clips of 16 x 224 x 224 float32

    def __init__(self, train_list, val_list, *, data_root="", freq=1, num_frames=16,
                 sampling_rate=4, input_size=224, batch_size=8, device="cpu"):
        lists = {"--knn_train_list": train_list, "--knn_val_list": val_list}
        for flag, path in lists.items():
            if not path:
                raise ValueError(f"--knn_eval_freq {freq} needs {flag}")
        labels = [lab for p in lists.values() for _, lab in read_annotation(p, data_root)]
        self.num_classes = max(labels) + 1
        self.sets = {name: VideoClsDataset(
            path, data_root, "test", nb_classes=self.num_classes, num_frames=num_frames,
            sampling_rate=sampling_rate, input_size=input_size, short_side_size=input_size,
            test_num_segment=1, test_num_crop=1) for name, path in zip(("train", "val"),
                                                                       lists.values())}
        self.freq, self.batch_size, self.device = freq, batch_size, device
        clip_bytes = 3 * num_frames * input_size ** 2 * 4
        self.keep = sum(len(d) for d in self.sets.values()) * clip_bytes <= self.KEEP_BYTES \
            * get_world_size()
        self.kept = {}  # list name -> this process's decoded batches
        self.last = time.perf_counter()  # end of the previous call: the epoch's duration

    @classmethod
    def from_args(cls, args):
        """From ``--knn_*`` and the run's clip flags; None when ``--knn_eval_freq`` is 0.
        Raises ValueError / FileNotFoundError for a missing or bad list."""
        if not getattr(args, "knn_eval_freq", 0):
            return None
        return cls(args.knn_train_list, args.knn_val_list, data_root=args.data_root,
                   freq=args.knn_eval_freq, num_frames=args.num_frames,
                   sampling_rate=args.sampling_rate, input_size=args.input_size,
                   batch_size=args.batch_size, device=args.device)

    def evaluate(self, model):
        """``{knn_top1, knn_top5, knn_videos}`` (percent; Top-5 is Top-min(5, C)) of ``model``
        (a pre-training model with ``.encoder``, or an encoder), the same on every process."""
        was_training = model.training
        encoder = FeatureEncoder(model).eval()
        try:
            views = {name: gather_views(view_features(
                encoder, self._batches(name), self.device, desc=f"k-NN {name}"))
                for name in self.sets}
        finally:
            model.train(was_training)
        _, bank, bank_labels = per_video(views["train"])
        _, queries, labels = per_video(views["val"])
        probs = knn_scores(bank, bank_labels, queries, self.num_classes)
        m = multiview_metrics(probs, labels)
        return dict(knn_top1=m["top1"], knn_top5=m["top5"], knn_videos=m["num_videos"])

    def _batches(self, name):
        """This process's batches of list ``name``: decoded now, or kept from the first time."""
        if name in self.kept:
            return self.kept[name]
        loader = shard_loader(self.sets[name], self.batch_size)
        if not self.keep:
            return loader
        self.kept[name] = list(loader)
        return self.kept[name]

    def __call__(self, model, epoch, step=None, logger=None):
        """At the end of ``epoch``: :meth:`evaluate` when the schedule asks for it (printed
        with its cost, sent to ``logger``'s tensorboard at ``step``), else ``{}``."""
        start = time.perf_counter()
        epoch_time, self.last = start - self.last, start
        if (epoch + 1) % self.freq:
            return {}
        result = self.evaluate(model)
        cost = time.perf_counter() - start
        if logger is not None:
            logger.scalars({k: result[k] for k in ("knn_top1", "knn_top5")},
                           epoch if step is None else step, "knn")
        print(f"epoch {epoch}: k-NN (k={KNN_K}, T={KNN_T}) of {result['knn_videos']} videos: "
              f"top-1 {result['knn_top1']:.2f} | top-5 {result['knn_top5']:.2f} | took "
              f"{cost:.1f}s = {100 * cost / max(epoch_time, 1e-9):.1f}% of the epoch's "
              f"{epoch_time:.1f}s", flush=True)
        self.last = time.perf_counter()
        return dict(result, knn_seconds=cost)
