"""Training curves of a run: every numeric key of its ``log.json`` against the epoch, and
optionally every tensorboard scalar against the optimizer step.

    python tools/plot_curves.py output/log.json curves/
    python tools/plot_curves.py output/ curves/               # output/log.json + event files below
    python tools/plot_curves.py output/log.json curves/ --tb output/tb

``log.json`` holds one JSON object per line, one line per epoch, as written by
``run_mmkd_pretraining.py`` / ``run_mae_pretraining.py`` / ``run_class_finetuning.py``
(``{"epoch": 0, "train_loss": ..., "train_hint": ..., "val_acc1": ...}``). Written to
``OUT_DIR``:

- ``<key>.png`` for every numeric key but ``epoch`` (losses, lr, throughput, accuracy, ...);
  a key missing from some lines (e.g. validation every few epochs) is drawn where present; a
  resumed run that logged an epoch twice keeps the last line of that epoch;
- ``loss_terms.png``: all loss terms of the log in one figure (log scale when positive);
- ``steps/<tag>.png`` for every tensorboard scalar (``train/loss``, ``train/lr``, ...), the
  raw per-step values with a running mean over them.
"""
import argparse
import json
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LOSS_TERMS = ("loss", "hint", "relation", "global", "local", "pixel")
DESCRIPTIONS = {
    "loss": "loss (the optimised total)",
    "hint": "MM-hint loss (unweighted)",
    "relation": "MM-relation loss (unweighted)",
    "global": "MM-hidden global loss (unweighted)",
    "local": "MM-hidden local loss (unweighted)",
    "pixel": "pixel reconstruction loss (unweighted)",
    "lr": "learning rate (largest of the parameter groups)",
    "clips_per_s": "throughput (clips / s)",
    "data_time": "data-loading wait per step (s)",
    "step_time": "compute per step (s)",
    "grad_norm": "gradient norm (before clipping)",
    "skipped_videos": "corrupted videos skipped",
    "clips": "clips seen",
    "acc1": "Top-1 accuracy (%)",
    "acc5": "Top-5 accuracy (%)",
    "n_parameters": "trainable parameters",
}
SPLITS = {"train": "training", "val": "validation", "test": "test"}
DPI = 100


def describe(key):
    """A readable title for a log key: ``'train_hint'`` -> ``'training: MM-hint loss
    (unweighted)'``; unknown keys as they are."""
    split, _, rest = key.partition("_")
    if split in SPLITS and rest:
        return f"{SPLITS[split]}: {DESCRIPTIONS.get(rest, rest)}"
    return DESCRIPTIONS.get(key, key)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_log(path):
    """The records of a ``log.json``, one per epoch (the last line wins for a repeated epoch),
    in epoch order. Lines without ``epoch`` get their line order.

    Raises:
        ValueError: a line that is not a JSON object (file and line number named), or no line.
    """
    by_epoch = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {lineno}: not a JSON object")
            by_epoch[record.get("epoch", len(by_epoch))] = record
    if not by_epoch:
        raise ValueError(f"{path} has no records")
    return [by_epoch[e] for e in sorted(by_epoch)]


def numeric_series(records):
    """``{key: (epochs, values)}`` for every numeric key but ``epoch``, in first-seen order."""
    series = {}
    for i, r in enumerate(records):
        epoch = r.get("epoch", i)
        for k, v in r.items():
            if k != "epoch" and is_number(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(epoch)
                ys.append(float(v))
    return series


def safe_name(key):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "value"


def save(fig, path):
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_key(key, xs, ys, out_dir, xlabel="epoch"):
    """One key against the epoch, ``<out_dir>/<key>.png``."""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, ms=3, lw=1.5)
    finite = [y for y in ys if math.isfinite(y)]
    note = f" (constant {finite[0]:.4g})" if finite and min(finite) == max(finite) else ""
    ax.set_title(f"{describe(key)}{note}\n[{key}]", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if xlabel == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, os.path.join(out_dir, f"{safe_name(key)}.png"))


def loss_keys(series):
    return [k for k in series if k.partition("_")[2] in LOSS_TERMS or k in LOSS_TERMS]


def plot_loss_terms(series, out_dir):
    """Every loss term of the log in one figure; None when the log has none."""
    keys = loss_keys(series)
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for k in keys:
        xs, ys = series[k]
        ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, ms=3,
                lw=1.8 if k.endswith("_loss") else 1.2,
                label=f"{k}: {DESCRIPTIONS.get(k.partition('_')[2], '')}")
    values = [y for k in keys for y in series[k][1] if math.isfinite(y)]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title("Loss terms against epoch (terms unweighted; 'loss' = the optimised weighted "
                 "total)", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, os.path.join(out_dir, "loss_terms.png"))


def event_dirs(root):
    """Directories under ``root`` holding tensorboard event files."""
    return sorted({d for d, _, files in os.walk(root)
                   if any(f.startswith("events.out.tfevents") for f in files)})


def read_tensorboard(root):
    """``{tag: (steps, values)}`` of every scalar under ``root``; a step logged twice (a
    resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    merged = {}
    for d in event_dirs(root):
        acc = EventAccumulator(d, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                merged.setdefault(tag, {})[e.step] = e.value
    return {tag: (sorted(v), [v[s] for s in sorted(v)]) for tag, v in merged.items()}


def running_mean(ys, window):
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(ys, dtype=float), 0, 0.0))  # c[i] = sum(ys[:i])
    end = np.arange(1, len(ys) + 1)
    start = np.maximum(end - window, 0)
    return (c[end] - c[start]) / (end - start)


def plot_step_tag(tag, steps, values, out_dir):
    """A per-step scalar, raw and smoothed, ``<out_dir>/<tag>.png``."""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    window = max(1, len(values) // 25)
    ax.plot(steps, values, lw=0.8, alpha=0.4, label="per step")
    if window > 1:
        ax.plot(steps, running_mean(values, window), lw=1.8, label=f"running mean of {window}")
        ax.legend(fontsize=8)
    split, _, name = tag.partition("/")
    ax.set_title(f"{SPLITS.get(split, split)}: {DESCRIPTIONS.get(name, name)}\n[{tag}]",
                 fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    return save(fig, os.path.join(out_dir, f"{safe_name(tag)}.png"))


def plot_log(path, out_dir):
    series = numeric_series(read_log(path))
    files = [plot_key(k, xs, ys, out_dir) for k, (xs, ys) in series.items()]
    combined = plot_loss_terms(series, out_dir)
    return files + ([combined] if combined else [])


def plot_tensorboard(root, out_dir):
    scalars = read_tensorboard(root)
    step_dir = os.path.join(out_dir, "steps")
    os.makedirs(step_dir, exist_ok=True)
    return [plot_step_tag(tag, s, v, step_dir) for tag, (s, v) in scalars.items()]


def resolve_inputs(path, tb):
    """``(log.json path or None, tensorboard root or None)`` from the arguments.

    Raises:
        FileNotFoundError: nothing to plot at ``path``.
    """
    if os.path.isdir(path):
        log = os.path.join(path, "log.json")
        log = log if os.path.isfile(log) else None
        tb = tb or (path if event_dirs(path) else None)
        if log is None and tb is None:
            raise FileNotFoundError(f"{path} holds neither a log.json nor tensorboard event files")
        return log, tb
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    return path, tb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="a log.json, or a run directory (its log.json and event files)")
    p.add_argument("out_dir", help="where the PNGs go")
    p.add_argument("--tb", default=None, help="directory with tensorboard event files")
    args = p.parse_args(argv)
    try:
        log, tb = resolve_inputs(args.log, args.tb)
        if tb is not None and not event_dirs(tb):
            raise FileNotFoundError(f"--tb {tb}: no tensorboard event files there")
        os.makedirs(args.out_dir, exist_ok=True)
        files = plot_log(log, args.out_dir) if log else []
        files += plot_tensorboard(tb, args.out_dir) if tb else []
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {len(files)} plots to {args.out_dir}")
    return files


if __name__ == "__main__":
    main()
