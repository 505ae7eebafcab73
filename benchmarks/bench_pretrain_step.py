"""Clips/s, peak memory and model FLOP/s of one full MMKD distillation step.

One step = teacher forward (no gradients) + student forward and backward + ``mmkd_loss`` +
gradient-norm clipping + the AdamW step, through the engine's own ``forward_losses`` and
``optimizer_update`` (``engine_for_pretraining.py``). Two modes run in the same process on
the same clips and masks:

- ``optimised`` (what ``run_mmkd_pretraining.py`` does): fused SDPA attention in every block
  (the last block also returns q, k, v; the loss forms its logits), top-k attention with
  ``impl='scatter'``, teacher and student under bf16 autocast on CUDA (fp16 + GradScaler
  where bf16 is missing) and on CPUs with native bf16 (``--amp bf16``; float32 on other
  CPUs), fused AdamW on CUDA, optionally ``--compile``;
- ``baseline`` (the reference code's computation): explicit ``softmax(q k^T) v`` in every
  block, the masked dense top-k, the teacher in float32 outside autocast, the student under
  fp16 autocast with a GradScaler (CUDA), the default (for-each) AdamW. The reference's
  ``torch.cuda.amp.autocast`` does nothing on a CPU, so there the baseline is all float32.

    python benchmarks/bench_pretrain_step.py --student S --batch_size 64          # GPU
    python benchmarks/bench_pretrain_step.py --student B --batch_size 32 --compile
    python benchmarks/bench_pretrain_step.py --small --device cpu                 # < 1 min

FLOPs are analytic (``benchmarks/common.py`` documents the formula).
"""
import copy
from dataclasses import dataclass, field

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from timm.optim import create_optimizer_v2

import losses
from common import (add_common_args, arg_parser, device_description, device_peak_tflops,
                    fast_amp_dtype, fast_init, fmt_bytes, mfu_text, model_name, peak_memory,
                    setup, size_name, step_flops, summary, time_fn)
from engine_for_pretraining import autocast_context, forward_losses, optimizer_update
from losses import LossWeights
from masking_generator import TubeMaskingGenerator
from model_factory import create_student, create_teacher
from modeling_encoder import compile_blocks, set_fused_attn

# METHOD.md's reference weights by student size (gamma, alpha, beta, beta_kd1, beta_kd2)
REFERENCE_WEIGHTS = {"small": (0.1, 0.1, 1.0, 0.1, 3.0), "base": (0.2, 0.1, 1.0, 3.0, 1.0)}


@dataclass
class Mode:
    name: str
    fused_attn: bool
    topk_impl: str
    amp_dtype: object  # student autocast dtype, None = float32
    teacher_autocast: bool
    scaler: bool
    opt_kwargs: dict = field(default_factory=dict)
    compile: bool = False


def modes(device, compile_=False):
    """``{'baseline': Mode, 'optimised': Mode}`` for ``device``."""
    cuda = device.type == "cuda"
    opt_dtype = fast_amp_dtype(device)
    return {
        "baseline": Mode("baseline", False, "dense", torch.float16 if cuda else None, False, cuda),
        "optimised": Mode("optimised", True, "scatter", opt_dtype, True,
                          opt_dtype == torch.float16,
                          {"fused": True} if cuda else {}, compile_),
    }


class DistillStep:
    """Models, clips and masks for timing distillation steps in several modes."""

    def __init__(self, device, student="S", teacher="B", batch_size=8, num_frames=16,
                 input_size=224, mask_ratio=0.9, distill="hybrid", num_k=10, num_f=10,
                 decoder_depth=0, use_checkpoint=False, teacher_sees_all=False, models=None):
        self.device, self.batch_size = device, batch_size
        geom = dict(img_size=input_size, num_frames=num_frames)
        if models is None:
            with fast_init():
                t = create_teacher(model_name(teacher), sees_all_tokens=teacher_sees_all, **geom)
                s = create_student(model_name(student), decoder_depth=decoder_depth,
                                   teacher_dim=t.embed_dim, views=losses.DISTILL_VIEWS[distill],
                                   num_k=num_k, use_checkpoint=use_checkpoint, **geom)
            models = (s.to(device), t.to(device))
        self.student, self.teacher = models
        self.student.set_grad_checkpointing(use_checkpoint)
        pe = self.student.patch_embed
        gen = TubeMaskingGenerator(pe.grid_size, mask_ratio, seed=0)
        self.num_visible = pe.num_patches - gen.num_mask
        per_slice = self.num_visible // pe.grid_size[0]
        self.num_k, self.num_f = min(num_k, per_slice), min(num_f, self.num_visible)
        self.student.num_k = self.num_k
        g = torch.Generator().manual_seed(0)
        self.videos = torch.randn(batch_size, 3, num_frames, input_size, input_size,
                                  generator=g).to(device)
        self.mask = torch.stack([torch.from_numpy(gen()) for _ in range(batch_size)]).to(device)
        gamma, alpha, beta, b1, b2 = REFERENCE_WEIGHTS.get(size_name(student),
                                                           REFERENCE_WEIGHTS["base"])
        self.weights = LossWeights.from_args(distill, gamma, alpha, beta, b1, b2,
                                             1.0 if decoder_depth else 0.0)
        self.flops = step_flops(student, teacher, num_frames, input_size, self.num_visible,
                                self.weights.views(), decoder_depth,
                                teacher_sees_all=teacher_sees_all)
        self._compiled = None

    def models_for(self, mode):
        """``(student, teacher)`` of ``mode``: compiled copies for a ``compile`` mode, so the
        other modes keep running eager."""
        if not mode.compile:
            return self.student, self.teacher
        if self._compiled is None:
            s, t = copy.deepcopy(self.student), copy.deepcopy(self.teacher)
            compile_blocks(s)
            compile_blocks(t)
            self._compiled = (s, t)
        return self._compiled

    def prepare(self, mode):
        """``(step, teacher_only)`` closures for ``mode`` (fresh optimizer). Each call first
        switches the models to the mode, so the modes can be timed turn about."""
        student, teacher = self.models_for(mode)
        opt = create_optimizer_v2(student, opt="adamw", lr=1.5e-4, weight_decay=0.05,
                                  betas=(0.9, 0.95), **mode.opt_kwargs)
        scaler = torch.amp.GradScaler("cuda") if mode.scaler else None
        amp = mode.amp_dtype

        def activate():
            set_fused_attn(student, mode.fused_attn)
            set_fused_attn(teacher, mode.fused_attn)
            losses.DEFAULT_TOPK_IMPL = mode.topk_impl
            student.train()

        def step():
            activate()
            loss, terms = forward_losses(student, teacher, self.videos, self.mask,
                                         weights=self.weights, device=self.device,
                                         amp_dtype=amp, teacher_autocast=mode.teacher_autocast,
                                         num_k=self.num_k, num_f=self.num_f)
            _ = [v.item() for v in terms.values()]  # the engine's non-finite check syncs too
            (scaler.scale(loss) if scaler else loss).backward()
            optimizer_update(student, opt, scaler, None)
            return loss

        def teacher_only():
            activate()
            with autocast_context(self.device, amp if mode.teacher_autocast else None):
                teacher(self.videos, self.mask, self.weights.views(), self.num_k, 1.0)
        return step, teacher_only

    def run(self, modes, warmup, iters, measure_memory=True, teacher_time=True):
        """Time ``modes`` (a list of :class:`Mode`) turn about, one step of each per round, so
        that a change in the load of a shared machine hits them alike. Returns
        ``{name: dict(step_s, step_median_s, clips_per_s, memory, memory_label, fwd_s)}``
        (``step_s``: the fastest step)."""
        fns = {m.name: self.prepare(m) for m in modes}
        times = {m.name: [] for m in modes}
        for it in range(warmup + iters):
            for m in modes:
                t = time_fn(fns[m.name][0], self.device, 0, 1)[0]
                if it >= warmup:
                    times[m.name].append(t)
        out = {}
        for m in modes:
            step, fwd_only = fns[m.name]
            med, best = summary(times[m.name])
            mem, label = (peak_memory(self.device, step, exclude=self.models_for(m))
                          if measure_memory else (None, ""))
            fwd = (min(time_fn(fwd_only, self.device, 1, max(1, iters // 2)))
                   if teacher_time else None)
            out[m.name] = dict(step_s=best, step_median_s=med, clips_per_s=self.batch_size / best,
                               memory=mem, memory_label=label, fwd_s=fwd)
        return out


def main(argv=None):
    p = add_common_args(arg_parser(__doc__.splitlines()[0]))
    a = p.add_argument
    a("--student", default=None, help="S, B (or T, L, H); default S (--small: T)")
    a("--teacher", default=None, help="default B (--small: S)")
    a("--batch_size", type=int, default=None, help="default 32 (GPU), 2 (--small)")
    a("--num_frames", type=int, default=None)
    a("--input_size", type=int, default=None)
    a("--mask_ratio", type=float, default=0.9)
    a("--distill", default="hybrid", choices=sorted(losses.DISTILL_VIEWS))
    a("--num_k", type=int, default=10)
    a("--num_f", type=int, default=10)
    a("--decoder_depth", type=int, default=0)
    a("--use_checkpoint", action="store_true")
    a("--teacher_sees_all", action="store_true")
    a("--compile", action="store_true", help="torch.compile the blocks in the optimised mode")
    a("--modes", nargs="+", default=["baseline", "optimised"], choices=["baseline", "optimised"])
    args = p.parse_args(argv)
    device = setup(args)
    small = args.small
    frames = args.num_frames or (4 if small else 16)
    size = args.input_size or (96 if small else 224)
    batch = args.batch_size or (2 if small else 32)
    args.student = args.student or ("T" if small else "S")
    args.teacher = args.teacher or ("S" if small else "B")
    warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    iters = args.iters or (3 if small else 10)
    bench = DistillStep(device, args.student, args.teacher, batch, frames, size, args.mask_ratio,
                        args.distill, args.num_k, args.num_f, args.decoder_depth,
                        args.use_checkpoint, args.teacher_sees_all)
    all_modes = modes(device, args.compile)
    print(f"distillation step: student ViT-{args.student} <- teacher ViT-{args.teacher}, "
          f"{frames}x{size}, tube mask {args.mask_ratio} ({bench.num_visible} visible tokens), "
          f"--distill {args.distill} (num_k {bench.num_k}, num_f {bench.num_f}), batch {batch}, "
          f"decoder depth {args.decoder_depth}, checkpointing {args.use_checkpoint}")
    print(f"device: {device_description(device)}; {warmup} warm-up + {iters} timed steps per "
          f"mode, modes taking turns; times are the fastest step (median in brackets)")
    f = bench.flops
    print(f"analytic FLOPs per clip: teacher fwd {f['teacher'] / 1e9:.2f} G + student fwd+bwd "
          f"3 x {f['student_fwd'] / 1e9:.2f} G = {f['total'] / 1e9:.2f} GFLOP")
    results = bench.run([all_modes[name] for name in args.modes], warmup, iters)
    for name, r in results.items():
        mode = all_modes[name]
        peak, src = device_peak_tflops(device, mode.amp_dtype is not None, args.peak_tflops)
        rate = f["total"] * batch / r["step_s"]
        print(f"{name:>9}: {r['step_s'] * 1e3:8.1f} ms/step ({r['step_median_s'] * 1e3:.1f}) "
              f"{r['clips_per_s']:8.2f} clips/s | teacher fwd {r['fwd_s'] * 1e3:.1f} ms | "
              f"memory {fmt_bytes(r['memory'])} ({r['memory_label']}) | model "
              f"{mfu_text(rate, peak)} [{src}]")
    if len(results) == 2:
        b, o = results["baseline"], results["optimised"]
        mem = (f", memory {o['memory'] / b['memory']:.2f}x baseline"
               if b["memory"] and o["memory"] else "")
        print(f"ratio optimised/baseline: {o['clips_per_s'] / b['clips_per_s']:.2f}x clips/s"
              f" (median {b['step_median_s'] / o['step_median_s']:.2f}x){mem}")
    return results


if __name__ == "__main__":
    main()
