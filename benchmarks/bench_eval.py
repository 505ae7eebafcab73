"""Multi-view test throughput (views/s) of the fine-tuned classifier.

A K400 test pass is ``#frame x #clip x #crop`` = 16x5x3 views per video, each a full
clip of all ``N = 1568`` tokens (no masking), so attention is the costly part here. Two modes
on the same view batches:

- ``optimised``: fused SDPA attention, ``torch.inference_mode``, bf16 autocast on CUDA and
  on CPUs with native bf16 (``--amp bf16``), optionally ``--compile`` (every block);
- ``baseline`` (the reference's evaluation): explicit ``softmax(q k^T) v`` attention,
  ``torch.no_grad``, fp16 autocast on CUDA, float32 on a CPU (``torch.cuda.amp`` does
  nothing there).

The CNNs of TPN's zoo (``--models tpn_r50 ...``, any of ``model_factory.CNN_MODELS``) are
timed beside the ViTs on TPN's own test views: 8 frames, fully convolutional on the whole
256 px short side (``--small``: 64 px); their FLOPs are counted by
``torch.utils.flop_counter`` (convolutions and matmuls, multiply-add = 2).

    python benchmarks/bench_eval.py --models S B --batch_size 32        # GPU, 16x224
    python benchmarks/bench_eval.py --models B tpn_r50 --batch_size 32  # ViT-B beside TPN-R50
    python benchmarks/bench_eval.py --small --device cpu                # < 1 min
"""
import copy

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from common import (add_common_args, arg_parser, classifier_flops, device_description,
                    device_peak_tflops, fast_amp_dtype, fast_init, fmt_bytes, inference_peak,
                    mfu_text, setup, size_name, summary, time_fn)
from engine_for_pretraining import autocast_context
from model_factory import CNN_MODELS, create_classifier
from modeling_encoder import compile_blocks, set_fused_attn


def mode_fn(model, views, device, mode):
    """The forward of one view batch in ``mode`` (switches the attention path first)."""
    cuda = device.type == "cuda"
    if mode == "optimised":
        amp, grad_ctx, fused = fast_amp_dtype(device), torch.inference_mode, True
    else:
        amp, grad_ctx, fused = (torch.float16 if cuda else None), torch.no_grad, False

    def fwd():
        set_fused_attn(model, fused)
        with grad_ctx(), autocast_context(device, amp):
            return model(views).float().softmax(-1)
    return fwd, amp


def cnn_flops(model, frames, size):
    """FLOPs of one ``frames x size x size`` view through ``model``, counted by
    ``torch.utils.flop_counter`` on a meta-device copy (nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode
    meta = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, frames, size, size, device="meta"))
    return counter.get_total_flops()


def main(argv=None):
    p = add_common_args(arg_parser(__doc__.splitlines()[0]))
    a = p.add_argument
    a("--models", nargs="+", default=["S", "B"],
      help=f"ViT sizes and/or CNN names ({', '.join(CNN_MODELS)})")
    a("--batch_size", type=int, default=None, help="views per forward (default 32; --small 2)")
    a("--num_frames", type=int, default=None)
    a("--input_size", type=int, default=None)
    a("--num_classes", type=int, default=400)
    a("--compile", action="store_true", help="torch.compile the blocks in the optimised mode")
    a("--modes", nargs="+", default=["baseline", "optimised"], choices=["baseline", "optimised"])
    args = p.parse_args(argv)
    device = setup(args)
    small = args.small
    frames = args.num_frames or (8 if small else 16)
    size = args.input_size or (112 if small else 224)
    batch = args.batch_size or (2 if small else 32)
    warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    iters = args.iters or (2 if small else 10)
    n = (frames // 2) * (size // 16) ** 2
    memory = "CUDA allocator" if device.type == "cuda" else "CPU tensors, torch.profiler"
    print(f"multi-view evaluation: {frames}x{size} views ({n} tokens), batches of {batch} views; "
          f"device: {device_description(device)}; {warmup} warm-up + {iters} timed batches per "
          f"mode, modes taking turns, fastest batch reported (median in brackets); memory: "
          f"peak allocated during one batch ({memory})")
    cnn_frames, cnn_size = 8, (64 if small else 256)
    if any(m in CNN_MODELS for m in args.models):
        print(f"CNN views: {cnn_frames}x{cnn_size} (TPN's fully convolutional 8x8 test)")
    g = torch.Generator().manual_seed(0)
    results = {}
    for m in args.models:
        cnn = m in CNN_MODELS
        f, s = (cnn_frames, cnn_size) if cnn else (frames, size)
        views = torch.randn(batch, 3, f, s, s, generator=g).to(device)
        with fast_init():
            model = (create_classifier(m, num_classes=args.num_classes, num_frames=f) if cnn else
                     create_classifier(f"vit_{size_name(m)}_patch16_224",
                                       num_classes=args.num_classes, img_size=s, num_frames=f))
        model = model.to(device).eval()
        flops = cnn_flops(model, f, s) if cnn else classifier_flops(m, f, s, args.num_classes)
        label = m if cnn else f"ViT-{m}"
        fns = {}
        for mode in args.modes:
            net = model
            if mode == "optimised" and args.compile:
                net = copy.deepcopy(model)
                compile_blocks(net)
            fns[mode] = mode_fn(net, views, device, mode)
        times = {mode: [] for mode in args.modes}
        for it in range(warmup + iters):  # modes take turns: load changes hit both alike
            for mode in args.modes:
                t = time_fn(fns[mode][0], device, 0, 1)[0]
                if it >= warmup:
                    times[mode].append(t)
        for mode in args.modes:
            fwd, amp = fns[mode]
            med, best = summary(times[mode])
            vps = batch / best
            peak, src = device_peak_tflops(device, amp is not None, args.peak_tflops)
            results[m, mode] = vps
            print(f"{label} {mode:>9}: {vps:9.2f} views/s ({batch / med:.2f}) | "
                  f"{best * 1e3:.1f} ms/batch | memory {fmt_bytes(inference_peak(device, fwd))} | model "
                  f"{mfu_text(flops * vps, peak)} [{src}] | {flops / 1e9:.1f} GFLOP/view")
        if len(args.modes) == 2:
            print(f"{label} ratio optimised/baseline: "
                  f"{results[m, 'optimised'] / results[m, 'baseline']:.2f}x views/s")
        del model
    return results


if __name__ == "__main__":
    main()
