"""Re-encode a video data set for fast loading: short side ``--short_side`` (default 320, the
usual Kinetics preparation of VideoMAE / MVD), H.264 with a keyframe every ``--gop`` frames
and x264's ``fastdecode`` tuning, same frames and frame rate, no audio.

Why: decoding, not augmentation, bounds a loader worker (``benchmarks/README.md``). A clip of
16 frames 4 apart needs every frame from the keyframe before its first frame to its last; with
the 250-frame GOPs of web video that is up to ~300 frames decoded for 16 used, each at the
source's full size. A short GOP bounds the frames decoded before the clip (``gop - 1``), and a
320 px short side makes each of them cheap.

    python tools/prepare_videos.py --src /data/k400/videos --dst /data/k400/videos_320 \\
        --anno /data/k400/train.csv --out_anno /data/k400/train_320.csv --workers 16

Every video under ``--src`` (or only those an ``--anno`` list names, its paths relative to
``--src``) is written to the same relative path under ``--dst`` with the extension ``.mp4``
(``b.avi`` beside a ``b.mp4`` becomes ``b.avi.mp4``);
``--out_anno`` is ``--anno`` with those paths. Videos already converted are skipped (re-run
after an interruption: each file is written under a temporary name and renamed when done). A
video that cannot be decoded is reported and left out (of ``--out_anno`` too), never a crash.
The frame count is kept, so frame indices (``--sampling_rate``) mean the same as before.
"""
import argparse
import contextlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

import av

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.video_io import VIDEO_EXTENSIONS, read_annotation, scaled_size  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser("prepare videos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--src", required=True, help="directory of the source videos")
    a("--dst", required=True, help="output directory (same relative paths, .mp4)")
    a("--anno", default=None, help="only the videos of this 'path label' list (paths under --src)")
    a("--out_anno", default=None, help="write --anno with the new paths here")
    a("--short_side", type=int, default=320, help="scale down to this short side (px); "
      "smaller videos keep their size")
    a("--gop", type=int, default=16, help="frames between keyframes")
    a("--crf", type=int, default=23, help="x264 constant rate factor (lower = better, larger)")
    a("--preset", default="veryfast", help="x264 preset")
    a("--tune", default="fastdecode", choices=["fastdecode", "none"],
      help="x264 fastdecode (CAVLC, no deblocking): measured ~1.7x faster to decode than "
           "'none' on the bundled clips at 0.3-0.7 dB lower PSNR and ~10 %% larger files")
    a("--workers", type=int, default=1, help="videos encoded in parallel")
    return p


def encode_video(src, dst, short_side=320, gop=16, crf=23, preset="veryfast", tune="fastdecode"):
    """Re-encode ``src`` to H.264 ``dst`` (mp4) at short side ``short_side``.

    Frames are scaled with FFmpeg's swscale (bicubic) in the YUV -> YUV 4:2:0 conversion, and
    written one for one with constant frame rate (the source's average rate), so frame ``i``
    of ``dst`` is frame ``i`` of ``src``. ``dst`` appears only when complete (atomic rename).

    Returns:
        ``(frames written, (width, height))``.
    Raises:
        ValueError: bad ``short_side`` / ``gop``.
        av.error.FFmpegError, OSError: ``src`` cannot be opened or decoded (``dst`` not written).
    """
    if short_side < 2 or gop < 1:
        raise ValueError(f"--short_side must be >= 2 and --gop >= 1, got {short_side}, {gop}")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".part"
    n = 0
    try:
        with av.open(src) as inp, av.open(tmp, "w", format="mp4") as out:
            stream_in = inp.streams.video[0]
            rate = stream_in.average_rate or stream_in.guessed_rate or Fraction(25)
            w, h = scaled_size(stream_in.codec_context.width, stream_in.codec_context.height,
                               short_side)
            w, h = w - w % 2, h - h % 2  # 4:2:0 needs even sides
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            options = {"crf": str(crf), "preset": preset, "g": str(gop),
                       "keyint_min": str(gop), "sc_threshold": "0"}  # fixed GOP, no scene cuts
            if tune != "none":
                options["tune"] = tune
            stream.options = options
            for frame in inp.decode(stream_in):
                small = frame.reformat(width=w, height=h, format="yuv420p",
                                       interpolation="BICUBIC")
                small.pts, small.time_base = n, 1 / rate
                out.mux(stream.encode(small))
                n += 1
            out.mux(stream.encode(None))
        if n == 0:
            raise ValueError(f"{src}: no frames decoded")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n, (w, h)


def _job(job):
    src, dst, kw = job
    if os.path.exists(dst):
        return src, dst, "exists", None
    try:
        n, size = encode_video(src, dst, **kw)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        return src, dst, "failed", str(e).splitlines()[0][:300]
    return src, dst, "done", f"{n} frames, {size[0]}x{size[1]}"


def list_videos(src):
    """Sorted relative paths of every video file under ``src``."""
    found = []
    for root, _, files in os.walk(src):
        found += [os.path.relpath(os.path.join(root, f), src) for f in files
                  if f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def new_paths(rels):
    """Output paths: ``a/b.avi`` -> ``a/b.mp4``; where that would clash with another source
    (``b.avi`` next to ``b.mp4``), the non-mp4 one keeps its extension: ``a/b.avi.mp4``."""
    out = [os.path.splitext(r)[0] + ".mp4" for r in rels]
    clash = {t for t in out if out.count(t) > 1}
    return [r + ".mp4" if t in clash and not r.lower().endswith(".mp4") else t
            for r, t in zip(rels, out)]


def main(args):
    if not os.path.isdir(args.src):
        sys.exit(f"error: --src {args.src} is not a directory")
    if args.out_anno and not args.anno:
        sys.exit("error: --out_anno needs --anno")
    if "libx264" not in av.codecs_available:
        sys.exit(f"error: this PyAV ({av.__version__}) was built without the libx264 encoder; "
                 "install PyAV's binary wheel (pip install av), which includes it")
    try:  # (path, label) of the annotation list, or every video under --src
        samples = read_annotation(args.anno, args.src) if args.anno else None
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    rels = [os.path.relpath(p, args.src) for p, _ in samples] if samples else list_videos(args.src)
    targets = new_paths(rels)
    kw = dict(short_side=args.short_side, gop=args.gop, crf=args.crf, preset=args.preset,
              tune=args.tune)
    jobs = [(os.path.join(args.src, r), os.path.join(args.dst, t), kw)
            for r, t in zip(rels, targets)]
    failed = set()
    pool = ProcessPoolExecutor(args.workers) if args.workers > 1 else contextlib.nullcontext()
    with pool:
        results = (pool.map if args.workers > 1 else map)(_job, jobs)  # in input order
        for i, (src, dst, status, info) in enumerate(results, 1):
            print(f"[{i}/{len(jobs)}] {status}: {src} -> {dst}" + (f" ({info})" if info else ""))
            if status == "failed":
                failed.add(src)
    if args.out_anno:
        with open(args.out_anno, "w") as out:
            kept = 0
            for (path, label), target in zip(samples, targets):
                if path not in failed:
                    out.write(f"{target} {label}\n")
                    kept += 1
        print(f"wrote {args.out_anno}: {kept} videos (paths relative to {args.dst})")
    print(f"{len(jobs) - len(failed)} of {len(jobs)} videos in {args.dst}; {len(failed)} could "
          f"not be decoded and were left out")
    return failed


if __name__ == "__main__":
    main(get_args_parser().parse_args())
