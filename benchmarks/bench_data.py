"""Decoded + augmented clips/s per data loader worker on the bundled real clips.

One worker = one process with one torch thread and one decoding thread, so the figures
are what each ``--num_workers`` worker delivers. Three pipelines, each in two modes on the
same videos and random draws:

- ``pretrain``: ``VideoMAEPretrainDataset`` (dense sampling 16x4, multi-scale crop, tube mask);
- ``finetune``: ``VideoClsDataset`` train mode (random resized crop, flip,
  RandAugment ``rand-m7-n4-mstd0.5-inc1``, random erasing 0.25: METHOD.md's recipe);
- ``test``: ``VideoClsDataset`` test mode, ``test_num_segment x 3`` views per video, read in
  order as the test loader does (views/s).

``baseline`` decodes full-size frames and resizes them in the transform (one decode per
test view); ``optimised`` lets the decoder scale the frames to the short side the crops need
(``scale_on_decode``) and reuses one decode for the 3 crops of a test clip
(``reuse_decode``). With ``--prepare``, a third mode, ``prepared``, runs the optimised
loader on copies of the videos re-encoded once by ``tools/prepare_videos.py`` (320 px short
side, keyframe every 16 frames, ``fastdecode``), timed in the same turns as the other two.
Each video is loaded once before timing (its first load also checks the last frame, see
``datasets/guard.py``); the clip ``corrupted_h264.mp4`` is left out.

    python benchmarks/bench_data.py --prepare          # 16x224, 3 timed passes, 3 modes
    python benchmarks/bench_data.py --small            # 8 frames, 2 passes, < 1 min
    python benchmarks/bench_data.py --videos /data/k400/val --limit 50 --loader_workers 4
"""
import os
import random
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

from common import ROOT, arg_parser
from datasets import VideoClsDataset, VideoMAEPretrainDataset, collate_skip_none
from masking_generator import TubeMaskingGenerator
from tools.prepare_videos import encode_video, list_videos, new_paths


def annotation(names, tmp, file_name):
    path = os.path.join(tmp, file_name)
    with open(path, "w") as f:
        f.writelines(f"{n} 0\n" for n in names)
    return path


def prepare(videos, names, tmp):
    """Re-encode ``names`` into ``tmp/prepared`` (same order); returns (dir, new names, s)."""
    out, targets = os.path.join(tmp, "prepared"), new_paths(names)
    t = time.perf_counter()
    for name, target in zip(names, targets):
        encode_video(os.path.join(videos, name), os.path.join(out, target))
    return out, targets, time.perf_counter() - t


def build(kind, anno, videos, args, optimised):
    common_kw = dict(scale_on_decode=optimised)
    if kind == "pretrain":
        grid = (args.num_frames // 2, args.input_size // 16, args.input_size // 16)
        return VideoMAEPretrainDataset(anno, videos, args.num_frames, args.sampling_rate,
                                       args.input_size, TubeMaskingGenerator(grid, 0.9),
                                       num_sample=args.num_sample, **common_kw)
    if kind == "finetune":
        return VideoClsDataset(anno, videos, "train", nb_classes=1, num_frames=args.num_frames,
                               sampling_rate=args.sampling_rate, input_size=args.input_size,
                               num_sample=args.num_sample, auto_augment="rand-m7-n4-mstd0.5-inc1",
                               reprob=0.25, **common_kw)
    return VideoClsDataset(anno, videos, "test", nb_classes=1, num_frames=args.num_frames,
                           sampling_rate=args.sampling_rate, input_size=args.input_size,
                           short_side_size=args.input_size, test_num_segment=args.test_num_segment,
                           test_num_crop=3, reuse_decode=optimised, **common_kw)


def per_video_items(ds, kind):
    """Item indices grouped by video (test: all views of a video, in order)."""
    per = len(ds) // len(ds.samples)
    return [list(range(v * per, (v + 1) * per)) for v in range(len(ds.samples))]


def time_datasets(datasets, groups, passes):
    """Per mode: ``(items/s, {video row: seconds per item})``. Each video is timed ``passes``
    times in every mode, the modes taking turns video by video (so a change in the load of a
    shared machine hits them alike), with the same random draws in both; a video counts
    with its fastest pass, and items/s = items / the sum of those times."""
    for ds in datasets.values():  # warm pass: first loads also check the last frame
        for g in groups:
            ds[g[0]]
    best = {mode: {} for mode in datasets}
    for _ in range(passes):
        for v, g in enumerate(groups):
            for mode, ds in datasets.items():
                random.seed(v)  # the same augmentation draws in both modes (RandAugment
                np.random.seed(v)  # draws from Python's and numpy's RNGs, the rest from torch's)
                torch.manual_seed(v)
                t = time.perf_counter()
                for i in g:
                    assert ds[i] is not None
                dt = (time.perf_counter() - t) / len(g)
                best[mode][v] = min(best[mode].get(v, dt), dt)
    n = sum(len(g) for g in groups)
    return {mode: (n / sum(per[v] * len(g) for v, g in enumerate(groups)), per)
            for mode, per in best.items()}


def loader_throughput(ds, workers, epochs, persistent, batch_size):
    """Clips/s of a DataLoader over ``epochs`` epochs (worker start-up included)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                         shuffle=True, collate_fn=collate_skip_none,
                                         pin_memory=torch.cuda.is_available(),
                                         persistent_workers=persistent)
    t, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch.get("index", []))
    return n / (time.perf_counter() - t)


def main(argv=None):
    p = arg_parser(__doc__.splitlines()[0])
    a = p.add_argument
    a("--videos", default=os.path.join(ROOT, "tests", "data", "videos"))
    a("--limit", type=int, default=None, help="at most this many videos")
    a("--pipelines", nargs="+", default=["pretrain", "finetune", "test"],
      choices=["pretrain", "finetune", "test"])
    a("--num_frames", type=int, default=None)
    a("--sampling_rate", type=int, default=4)
    a("--input_size", type=int, default=224)
    a("--num_sample", type=int, default=1, help="clips per decode (repeated augmentation)")
    a("--test_num_segment", type=int, default=None, help="default 5 (--small: 2)")
    a("--passes", type=int, default=None, help="timed passes over the videos (default 3)")
    a("--loader_workers", type=int, default=0,
      help="also time a DataLoader with this many workers, persistent or not (0 = skip)")
    a("--small", "--cpu-smoke", dest="small", action="store_true",
      help="8 frames, 2 timed passes, 2 test clips: under a minute on a CPU")
    a("--prepare", action="store_true",
      help="also time the optimised loader on the videos re-encoded by tools/prepare_videos.py")
    a("--tmp", default=None, help="directory for the annotation files and re-encoded videos "
      "(default: a temp dir)")
    args = p.parse_args(argv)
    args.num_frames = args.num_frames or (8 if args.small else 16)
    args.test_num_segment = args.test_num_segment or (2 if args.small else 5)
    passes = args.passes or (2 if args.small else 3)
    torch.set_num_threads(1)  # as in a data loader worker
    tmp = args.tmp or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    names = [n for n in list_videos(args.videos) if "corrupted" not in n][:args.limit]
    sources = {"baseline": (annotation(names, tmp, "bench_data.csv"), args.videos)}
    sources["optimised"] = sources["baseline"]
    if args.prepare:
        out, targets, secs = prepare(args.videos, names, tmp)
        sources["prepared"] = (annotation(targets, tmp, "bench_data_prepared.csv"), out)
        print(f"re-encoded {len(names)} videos with tools/prepare_videos.py in {secs:.1f} s")
    print(f"data pipelines, one worker (1 torch thread; decord 1 thread, PyAV FFmpeg's default): "
          f"{len(names)} videos "
          f"from {args.videos}, {args.num_frames}x{args.sampling_rate} frames, {args.input_size} "
          f"px, num_sample {args.num_sample}; {passes} timed passes after a warm one, modes taking "
          f"turns, each video's fastest pass counted; per video: ms per item "
          f"{' -> '.join(sources)} (speed-up over the baseline)")
    results = {}
    for kind in args.pipelines:
        datasets = {mode: build(kind, anno, root, args, mode != "baseline")
                    for mode, (anno, root) in sources.items()}
        timed = time_datasets(datasets, per_video_items(datasets["baseline"], kind), passes)
        rates = {mode: r for mode, (r, _) in timed.items()}
        per = {mode: p for mode, (_, p) in timed.items()}
        unit = "views/s" if kind == "test" else "clips/s"
        ratio = rates["optimised"] / rates["baseline"]
        results[kind] = (rates["baseline"], rates["optimised"], ratio)
        line = (f"{kind:>8}: baseline {rates['baseline']:7.2f} {unit} | optimised "
                f"{rates['optimised']:7.2f} {unit} | ratio {ratio:.2f}x")
        if args.prepare:
            results[kind] += (rates["prepared"], rates["prepared"] / rates["baseline"])
            line += (f" | prepared {rates['prepared']:7.2f} {unit} | ratio "
                     f"{rates['prepared'] / rates['baseline']:.2f}x")
        print(line)
        for v, name in enumerate(names):
            ms = " -> ".join(f"{per[mode][v] * 1e3:8.1f}" for mode in per)
            gains = ", ".join(f"{per['baseline'][v] / per[mode][v]:.2f}x" for mode in per
                              if mode != "baseline")
            print(f"{'':>10}{name:<42} {ms} ms/item ({gains})")
    if args.loader_workers:
        ds = build("pretrain", *sources["prepared" if args.prepare else "optimised"], args, True)
        for persistent in (False, True):
            rate = loader_throughput(ds, args.loader_workers, 2, persistent, 2)
            print(f"DataLoader pretrain, {args.loader_workers} workers, persistent_workers="
                  f"{persistent}: {rate:.2f} clips/s over 2 epochs (start-up included)")
    return results


if __name__ == "__main__":
    main()
