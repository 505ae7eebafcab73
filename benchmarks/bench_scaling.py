"""Step time and peak memory of the (optimised) distillation step over a grid of settings:
mask ratio, student and teacher size, batch size and activation checkpointing.

    python benchmarks/bench_scaling.py                          # GPU: 16x224, S/B <- B/L
    python benchmarks/bench_scaling.py --students S B --teachers B L --batch_sizes 32 64
    python benchmarks/bench_scaling.py --small --device cpu     # tiny clips, < 1 min

Models are built once per (student, teacher) pair and reused for the other settings.
Memory: the CUDA allocator's peak; on a CPU the activation bytes saved for the backward
(PyTorch keeps no CPU allocator statistics).
"""
import itertools

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from bench_pretrain_step import DistillStep, modes
from common import add_common_args, arg_parser, device_description, fmt_bytes, setup


def main(argv=None):
    p = add_common_args(arg_parser(__doc__.splitlines()[0]))
    a = p.add_argument
    a("--students", nargs="+", default=None, help="default S B (--small: T)")
    a("--teachers", nargs="+", default=None, help="default B L (--small: S)")
    a("--mask_ratios", type=float, nargs="+", default=[0.75, 0.9, 0.95])
    a("--batch_sizes", type=int, nargs="+", default=None, help="default 32 64 (--small: 1 2)")
    a("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    a("--num_frames", type=int, default=None)
    a("--input_size", type=int, default=None)
    a("--distill", default="hybrid")
    a("--mode", default="optimised", choices=["optimised", "baseline"])
    args = p.parse_args(argv)
    device = setup(args)
    small = args.small
    students = args.students or (["T"] if small else ["S", "B"])
    teachers = args.teachers or (["S"] if small else ["B", "L"])
    batches = args.batch_sizes or ([1, 2] if small else [32, 64])
    frames = args.num_frames or (4 if small else 16)
    size = args.input_size or (96 if small else 224)
    warmup = args.warmup if args.warmup is not None else (1 if small else 2)
    iters = args.iters or (1 if small else 5)
    mode = modes(device)[args.mode]
    print(f"scaling of the {args.mode} distillation step ({args.distill}), {frames}x{size} clips, "
          f"device: {device_description(device)}; {warmup} warm-up + {iters} timed steps, "
          f"fastest step reported")
    head = (f"{'student':>7} {'teacher':>7} {'mask':>5} {'visible':>7} {'batch':>5} {'ckpt':>4} "
            f"{'ms/step':>9} {'clips/s':>8} {'memory':>11}")
    print(head)
    label = ""
    rows = []
    for s_size, t_size in itertools.product(students, teachers):
        models = None
        for ratio, batch, ckpt in itertools.product(args.mask_ratios, batches, args.checkpointing):
            try:
                bench = DistillStep(device, s_size, t_size, batch, frames, size, ratio,
                                    args.distill, models=models,
                                    use_checkpoint=ckpt == "on")
            except (ValueError, RuntimeError) as e:  # e.g. num_k > visible keys per slice
                print(f"{s_size:>7} {t_size:>7} {ratio:>5} skipped: {e}")
                continue
            models = (bench.student, bench.teacher)
            try:
                r = bench.run([mode], warmup, iters, teacher_time=False)[mode.name]
            except torch.OutOfMemoryError:
                print(f"{s_size:>7} {t_size:>7} {ratio:>5} {bench.num_visible:>7} {batch:>5} "
                      f"{ckpt:>4} {'out of memory':>30}")
                torch.cuda.empty_cache()
                continue
            label = r["memory_label"]
            rows.append(r)
            print(f"{s_size:>7} {t_size:>7} {ratio:>5} {bench.num_visible:>7} {batch:>5} "
                  f"{ckpt:>4} {r['step_s'] * 1e3:>9.1f} {r['clips_per_s']:>8.2f} "
                  f"{fmt_bytes(r['memory']):>11}")
        del models
    print(f"{len(rows)} settings measured (memory: {label})")
    return rows


if __name__ == "__main__":
    main()
