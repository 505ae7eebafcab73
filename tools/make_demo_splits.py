"""Make a tiny labelled fine-tuning set from a few clips, to show the fine-tuning pipeline
learning on real video (a demo, not a benchmark).

Each source clip is one class. Its first ``train_frac`` (60%) of frames give the training
segments (``num_train`` overlapping windows, each half of that part long), the remaining 40%
give ``num_test`` non-overlapping test segments, so no test frame is ever seen in training.
Our annotation format labels whole videos (``path label``), so every segment is written as a
new short video: decoded with PyAV, resized to ``short_side`` (even sides), re-encoded with
H.264 (``libx264``, yuv420p, CRF 18) at the source frame rate.

Output (``out_dir``): ``videos/c<label>_<clip>_train<j>.mp4``, ``..._test<j>.mp4``,
``train.csv``, ``val.csv`` (= ``test.csv``: the demo has no separate validation videos),
``test.csv`` (paths relative to ``out_dir``: pass ``--data_root out_dir``), ``classes.csv``
(``label file name``) and ``manifest.json`` (source frame range of every segment).

    python tools/make_demo_splits.py tests/data/videos/arm_wrestling_demo.mp4 \
        tests/data/videos/kinetics_clip_test.mp4 ... --out_dir demo_output/finetune_splits
"""
import argparse
import json
import os
import sys
import warnings
from fractions import Fraction

import numpy as np


def segment_ranges(num_frames, train_frac=0.6, num_train=4, num_test=2):
    """Frame ranges ``[start, end)`` of the training and test segments of one clip.

    Training: ``num_train`` windows of ``ceil(split / 2)`` frames at evenly spaced starts in
    ``[0, split)``, ``split = floor(train_frac * num_frames)``; test: ``[split, num_frames)``
    cut into ``num_test`` equal consecutive windows.

    Returns:
        ``(train, test)``: lists of ``(start, end)`` int pairs.
    Raises:
        ValueError: too few frames for non-empty segments, or ``train_frac`` outside (0, 1).
    """
    if not 0 < train_frac < 1:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    split = int(np.floor(train_frac * num_frames))
    if split < num_train or num_frames - split < num_test:
        raise ValueError(f"{num_frames} frames are too few for {num_train} training and "
                         f"{num_test} test segments")
    length = -(-split // 2)
    starts = np.floor(np.linspace(0, split - length, num_train)).astype(int)
    train = [(int(s), int(s) + length) for s in starts]
    bounds = split + np.floor(np.linspace(0, num_frames - split, num_test + 1)).astype(int)
    test = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return train, test


def _even_size(height, width, short_side):
    """``(height, width)`` with the short side ``short_side``, both rounded to even numbers."""
    scale = short_side / min(height, width)
    return (max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2))


def decode_resized(path, short_side=128):
    """All frames of a video, resized while decoding.

    Returns:
        ``(frames uint8 [N, h, w, 3], fps: Fraction)``.
    Raises:
        ValueError: the file cannot be opened or decoded, or has no video frames.
    """
    import av
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(1000)
            h, w = _even_size(stream.codec_context.height, stream.codec_context.width, short_side)
            frames = [f.to_ndarray(format="rgb24", width=w, height=h)
                      for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot decode {path}: {e}") from None
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return np.stack(frames), fps


def write_clip(path, frames, fps):
    """Encode ``frames`` uint8 ``[N, h, w, 3]`` (even ``h``, ``w``) as H.264 mp4 at ``fps``."""
    import av
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # one encoder thread: x264's threaded encode gave other bits from run to run, and the
        # demo's fine-tuning numbers must repeat to the bit
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_splits(clips, out_dir, short_side=128, num_train=4, num_test=2, train_frac=0.6):
    """Write the demo data set (see the module docstring) for ``clips`` into ``out_dir``.

    Args:
        clips: source video paths; class ``i`` is ``clips[i]`` (clips that cannot be decoded
            are skipped with a warning and take no label).
        out_dir: output directory (created).
        short_side, num_train, num_test, train_frac: see :func:`segment_ranges`.
    Returns:
        the manifest: list of dicts ``path`` (relative to ``out_dir``), ``split``, ``label``,
        ``source``, ``start``, ``end`` (source frame range ``[start, end)``).
    Raises:
        ValueError: fewer than 2 usable clips, or a clip too short for its segments.
    """
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    manifest, classes = [], []
    for src in clips:
        try:
            frames, fps = decode_resized(src, short_side)
        except ValueError as e:
            warnings.warn(f"skipping {src}: {e}", RuntimeWarning, stacklevel=2)
            continue
        name = os.path.basename(src)
        stem = f"c{len(classes)}_{os.path.splitext(name)[0]}"  # unique even for a.avi + a.mp4
        train, test = segment_ranges(len(frames), train_frac, num_train, num_test)
        for split, ranges in (("train", train), ("test", test)):
            for j, (start, end) in enumerate(ranges):
                rel = os.path.join("videos", f"{stem}_{split}{j}.mp4")
                write_clip(os.path.join(out_dir, rel), frames[start:end], fps)
                manifest.append(dict(path=rel, split=split, label=len(classes), source=src,
                                     start=start, end=end))
        classes.append(name)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 decodable clips (classes), got {len(classes)}")
    _write_lists(out_dir, manifest, classes)
    return manifest


def _write_lists(out_dir, manifest, classes):
    """``train.csv``, ``val.csv``, ``test.csv``, ``classes.csv`` and ``manifest.json``."""
    for split, files in (("train", ("train.csv",)), ("test", ("val.csv", "test.csv"))):
        lines = "".join(f"{m['path']} {m['label']}\n" for m in manifest if m["split"] == split)
        for name in files:
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(lines)
    with open(os.path.join(out_dir, "classes.csv"), "w") as f:
        f.write("".join(f"{i} {c}\n" for i, c in enumerate(classes)))
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("clips", nargs="+", help="source videos, one class each")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--short_side", type=int, default=128)
    p.add_argument("--num_train", type=int, default=4, help="training segments per clip")
    p.add_argument("--num_test", type=int, default=2, help="test segments per clip")
    p.add_argument("--train_frac", type=float, default=0.6, help="part of each clip for training")
    args = p.parse_args(argv)
    try:
        manifest = make_demo_splits(args.clips, args.out_dir, args.short_side, args.num_train,
                                    args.num_test, args.train_frac)
    except ValueError as e:
        sys.exit(f"error: {e}")
    counts = {s: sum(m["split"] == s for m in manifest) for s in ("train", "test")}
    print(f"wrote {counts['train']} training and {counts['test']} test segments of "
          f"{len({m['label'] for m in manifest})} classes to {args.out_dir} (use --data_path "
          f"{args.out_dir} --data_root {args.out_dir})")


if __name__ == "__main__":
    main()
