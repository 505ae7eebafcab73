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

With ``--reference_repo DIR`` (a checkout of xiaojieli0903/MaskAgain or MCG-NJU/VideoMAE), a
further mode, ``public``, runs that repository's own pre-training and fine-tuning loaders
(``reference_loaders.py``; imported from ``DIR``, nothing copied), in the same turns.
``--num_sample 1 2 4`` repeats the pre-training and fine-tuning pipelines for each number of
clips per decode (repeated sampling / augmentation); figures are clips/s, counting every clip
(the public pre-training loader has no repeated sampling: one decode per clip at any ``S``).
``--stages`` adds a per-stage breakdown of the optimised loaders (decode, crop, resize,
RandAugment, normalise, erasing, mask; ms per clip), ``--decoders`` times decord, PyAV and,
where installed, torchcodec on the pre-training windows and checks their frames against
PyAV's sequential decode.

    python benchmarks/bench_data.py --prepare          # 16x224, 3 timed passes, 3 modes
    python benchmarks/bench_data.py --small            # 8 frames, 2 passes, < 1 min
    python benchmarks/bench_data.py --videos /data/k400/val --limit 50 --loader_workers 4
    python benchmarks/bench_data.py --reference_repo ~/src/MaskAgain --num_sample 1 2 4 \
        --pipelines pretrain finetune --stages --decoders
"""
import functools
import os
import random
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

import reference_loaders
from common import ROOT, arg_parser
from datasets import VideoClsDataset, VideoMAEPretrainDataset, collate_skip_none
from masking_generator import TubeMaskingGenerator
from tools.prepare_videos import encode_video, list_videos, new_paths


CLOCK = time.perf_counter  # --clock cpu: time.process_time


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


def build(kind, anno, videos, args, optimised, num_sample=1):
    common_kw = dict(scale_on_decode=optimised)
    if kind == "pretrain":
        grid = (args.num_frames // 2, args.input_size // 16, args.input_size // 16)
        return VideoMAEPretrainDataset(anno, videos, args.num_frames, args.sampling_rate,
                                       args.input_size, TubeMaskingGenerator(grid, 0.9),
                                       num_sample=num_sample, **common_kw)
    if kind == "finetune":
        return VideoClsDataset(anno, videos, "train", nb_classes=1, num_frames=args.num_frames,
                               sampling_rate=args.sampling_rate, input_size=args.input_size,
                               num_sample=num_sample, auto_augment="rand-m7-n4-mstd0.5-inc1",
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
                t = CLOCK()
                for i in g:
                    assert ds[i] is not None
                dt = (CLOCK() - t) / len(g)
                best[mode][v] = min(best[mode].get(v, dt), dt)
    n = sum(len(g) for g in groups)
    return {mode: (n * clips_per_item(datasets[mode]) / sum(per[v] * len(g)
                                                            for v, g in enumerate(groups)), per)
            for mode, per in best.items()}


def clips_per_item(ds):
    """Clips an item holds: ``num_sample`` in training (repeated sampling), else 1."""
    if hasattr(ds, "clips_per_item"):
        return ds.clips_per_item
    return ds.num_sample if getattr(ds, "mode", "train") == "train" else 1


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


def stage_times(kind, path, args, num_sample, seed):
    """Seconds per stage of one item of the optimised ``kind`` loader on ``path`` (the same
    operations as ``PretrainTransform`` / ``FinetuneTrainTransform``, timed one by one; crop
    and resize are torchvision's ``resized_crop`` taken apart): decode once, the rest for
    each of the ``num_sample`` clips."""
    from datasets.sampling import dense_sample_indices, global_rngs_from
    from datasets.transforms import (FinetuneTrainTransform, PretrainTransform,
                                     multi_scale_crop_box, normalize, to_tchw)
    from datasets.video_io import load_frames
    from torchvision.transforms import RandomResizedCrop
    import torchvision.transforms.v2.functional as F

    rng = np.random.default_rng(seed)
    times = dict.fromkeys(("decode", "to tensor", "crop", "resize", "flip", "RandAugment",
                           "normalise", "erasing", "mask"), 0.0)
    clock = [CLOCK()]

    def lap(stage):
        now = CLOCK()
        times[stage] += now - clock[0]
        clock[0] = now

    size = [args.input_size] * 2
    if kind == "pretrain":
        tr = PretrainTransform(args.input_size)
        mask = TubeMaskingGenerator((args.num_frames // 2, args.input_size // 16,
                                     args.input_size // 16), 0.9)
        clock[0] = CLOCK()
        frames = load_frames(path, lambda n, fps: dense_sample_indices(
            n, args.num_frames, args.sampling_rate, rng), short_side=tr.decode_short_side)
        lap("decode")
        for _ in range(num_sample):
            clip = to_tchw(frames)
            lap("to tensor")
            top, left, h, w = multi_scale_crop_box(clip.shape[-2], clip.shape[-1],
                                                   args.input_size, rng)
            clip = clip[..., top:top + h, left:left + w]
            lap("crop")
            clip = F.resize(clip, size, antialias=True)
            lap("resize")
            normalize(clip)
            lap("normalise")
            mask(rng)
            lap("mask")
        return times
    tr = FinetuneTrainTransform(args.input_size, auto_augment="rand-m7-n4-mstd0.5-inc1",
                                reprob=0.25)
    clock[0] = CLOCK()
    frames = load_frames(path, lambda n, fps: dense_sample_indices(
        n, args.num_frames, args.sampling_rate, rng))
    lap("decode")
    with global_rngs_from(rng):
        for _ in range(num_sample):
            clip = to_tchw(frames)
            lap("to tensor")
            top, left, h, w = RandomResizedCrop.get_params(clip, tr.scale, tr.ratio)
            clip = clip[..., top:top + h, left:left + w]
            lap("crop")
            clip = F.resize(clip, size, antialias=True)
            lap("resize")
            if torch.rand(()) < 0.5:
                clip = clip.flip(-1)
            lap("flip")
            clip = tr.rand_augment(clip)
            lap("RandAugment")
            clip = normalize(clip)
            lap("normalise")
            tr.erase(clip.transpose(0, 1))
            lap("erasing")
    return times


def print_stages(kind, names, videos, args, num_sample, passes):
    """ms per clip of each stage, over the videos (each stage's fastest pass per video)."""
    best = [{} for _ in names]
    for p in range(passes + 1):  # the first pass warms up
        for v, name in enumerate(names):
            t = stage_times(kind, os.path.join(videos, name), args, num_sample, seed=v)
            if p:
                best[v] = {k: min(x, best[v].get(k, x)) for k, x in t.items()}
    total = {k: sum(b[k] for b in best) / (len(names) * num_sample) for k in best[0]}
    shown = {k: x for k, x in total.items() if x > 0 or k == "crop"}
    whole = sum(shown.values())
    parts = ", ".join(f"{k} {x * 1e3:.2f} ({100 * x / whole:.0f} %)" for k, x in shown.items())
    print(f"{kind:>8} stages, optimised, num_sample {num_sample} (ms per clip, share): {parts}; "
          f"sum {whole * 1e3:.1f} ms = {1 / whole:.2f} clips/s")


def decoder_times(names, videos, args, passes):
    """Per video: ms to decode one pre-training window (``num_frames x sampling_rate``,
    full size, opening the file included) with decord, PyAV (sequential, the reference for
    the frames) and torchcodec where installed (exact seeking, one FFmpeg thread), and
    whether each backend's frames equal PyAV's."""
    from datasets.sampling import dense_sample_indices
    from datasets.video_io import _pyav_frames, decord
    backends = {"pyav": lambda p, idx: _pyav_frames(p, lambda n, fps: idx(n), -1, -1, False)[0]}
    if decord is not None:
        def _decord(p, idx):
            reader = decord.VideoReader(p, num_threads=1)
            return reader.get_batch(idx(len(reader))).asnumpy()
        backends["decord"] = _decord
    try:
        from torchcodec.decoders import VideoDecoder

        def _torchcodec(p, idx):
            dec = VideoDecoder(p, num_ffmpeg_threads=1, seek_mode="exact",
                               dimension_order="NHWC")
            return dec.get_frames_at(idx(dec.metadata.num_frames).tolist()).data.numpy()
        VideoDecoder(os.path.join(videos, names[0]))  # FFmpeg's shared libraries present?
        backends["torchcodec"] = _torchcodec
    except (ImportError, OSError, RuntimeError) as e:
        print(f"decoders: torchcodec not usable here ({type(e).__name__}: "
              f"{str(e).splitlines()[0][:120]})")
    print(f"decoders: one {args.num_frames}x{args.sampling_rate} window per video, full size, "
          f"open + decode, fastest of {passes} passes; = / != : frames equal to PyAV's or not")
    totals = dict.fromkeys(backends, 0.0)
    for v, name in enumerate(names):
        path, best, same = os.path.join(videos, name), {}, {}
        for p in range(passes + 1):  # pass 0 warms up (and checks the frames)
            def idx(n):
                return dense_sample_indices(n, args.num_frames, args.sampling_rate,
                                            np.random.default_rng(p))
            order = list(backends) if p == 0 else list(backends)[p % len(backends):] + \
                list(backends)[:p % len(backends)]  # each backend first in some pass
            for b in order:
                t = CLOCK()
                frames = backends[b](path, idx)
                if p == 0:
                    if b == "pyav":
                        truth = frames
                    else:
                        same[b] = frames.shape == truth.shape and np.array_equal(frames, truth)
                else:
                    best[b] = min(best.get(b, 1e9), CLOCK() - t)
        for b in backends:
            totals[b] += best[b]
        print(f"{'':>10}{name:<42} " + " | ".join(
            f"{b} {best[b] * 1e3:7.1f} ms {'' if b == 'pyav' else '=' if same[b] else '!='}"
            for b in backends))
    print("decoders, all videos: " + " | ".join(f"{b} {t * 1e3:.0f} ms" for b, t in totals.items()))


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
    a("--num_sample", type=int, nargs="+", default=[1],
      help="clips per decode (repeated sampling / augmentation); several: one round each")
    a("--test_num_segment", type=int, default=None, help="default 5 (--small: 2)")
    a("--passes", type=int, default=None, help="timed passes over the videos (default 3)")
    a("--loader_workers", type=int, default=0,
      help="also time a DataLoader with this many workers, persistent or not (0 = skip)")
    a("--small", "--cpu-smoke", dest="small", action="store_true",
      help="8 frames, 2 timed passes, 2 test clips: under a minute on a CPU")
    a("--prepare", action="store_true",
      help="also time the optimised loader on the videos re-encoded by tools/prepare_videos.py")
    a("--reference_repo", default=None,
      help="checkout of xiaojieli0903/MaskAgain or MCG-NJU/VideoMAE: also time its own "
      "pre-training and fine-tuning loaders ('public')")
    a("--stages", action="store_true", help="per-stage breakdown of the optimised loaders")
    a("--decoders", action="store_true",
      help="decord vs PyAV vs torchcodec (where installed) on the pre-training windows")
    a("--clock", choices=["wall", "cpu"], default="wall",
      help="wall: elapsed time; cpu: this process's CPU time (all its threads), the cost of "
      "an item without the waits of a machine shared with other jobs")
    a("--tmp", default=None, help="directory for the annotation files and re-encoded videos "
      "(default: a temp dir)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
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
    print(f"data pipelines, one worker (1 torch thread; decord 1 thread, PyAV FFmpeg's default; "
          f"{args.clock} clock): {len(names)} videos "
          f"from {args.videos}, {args.num_frames}x{args.sampling_rate} frames, {args.input_size} "
          f"px, num_sample {' '.join(map(str, args.num_sample))}; {passes} timed passes after a "
          f"warm one, modes taking turns, each video's fastest pass counted; per video: ms per "
          f"clip {' -> '.join(sources)}{' -> public' if args.reference_repo else ''} "
          f"(speed-up over the baseline)")
    if args.decoders:
        decoder_times(names, args.videos, args, passes)
    results = {}
    for num_sample in args.num_sample:
        if len(args.num_sample) > 1 or num_sample > 1:
            print(f"num_sample {num_sample} (clips per decode; test views: 1):")
        for kind in args.pipelines:
            if kind == "test" and num_sample != args.num_sample[0]:
                continue  # test views do not depend on num_sample
            datasets = {mode: build(kind, anno, root, args, mode != "baseline", num_sample)
                        for mode, (anno, root) in sources.items()}
            if args.reference_repo and kind != "test":
                make = (reference_loaders.pretrain_dataset if kind == "pretrain" else
                        functools.partial(reference_loaders.finetune_dataset,
                                          num_sample=num_sample))
                datasets["public"] = make(args.reference_repo, names, args.videos, tmp,
                                          args.num_frames, args.sampling_rate, args.input_size)
            timed = time_datasets(datasets, per_video_items(datasets["baseline"], kind), passes)
            rates = {mode: r for mode, (r, _) in timed.items()}
            per = {mode: {v: t / clips_per_item(datasets[mode]) for v, t in p.items()}
                   for mode, (_, p) in timed.items()}
            unit = "views/s" if kind == "test" else "clips/s"
            ratio = rates["optimised"] / rates["baseline"]
            results[(kind, num_sample)] = dict(rates)
            line = (f"{kind:>8}: baseline {rates['baseline']:7.2f} {unit} | optimised "
                    f"{rates['optimised']:7.2f} {unit} | ratio {ratio:.2f}x")
            if args.prepare:
                line += (f" | prepared {rates['prepared']:7.2f} {unit} | ratio "
                         f"{rates['prepared'] / rates['baseline']:.2f}x")
            if "public" in rates:
                line += (f" | public code {rates['public']:7.2f} {unit} | optimised / public "
                         f"{rates['optimised'] / rates['public']:.2f}x, baseline / public "
                         f"{rates['baseline'] / rates['public']:.2f}x")
            print(line)
            for v, name in enumerate(names):
                ms = " -> ".join(f"{per[mode][v] * 1e3:8.1f}" for mode in per)
                gains = ", ".join(f"{per['baseline'][v] / per[mode][v]:.2f}x" for mode in per
                                  if mode != "baseline")
                print(f"{'':>10}{name:<42} {ms} ms/clip ({gains})")
            if args.stages and kind != "test":
                print_stages(kind, names, args.videos, args, num_sample, passes)
    if args.loader_workers:
        ds = build("pretrain", *sources["prepared" if args.prepare else "optimised"], args, True,
                   args.num_sample[0])
        for persistent in (False, True):
            rate = loader_throughput(ds, args.loader_workers, 2, persistent, 2)
            print(f"DataLoader pretrain, {args.loader_workers} workers, persistent_workers="
                  f"{persistent}: {rate:.2f} clips/s over 2 epochs (start-up included)")
    return results


if __name__ == "__main__":
    main()
