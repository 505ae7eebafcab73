"""Time and memory of the MM-hidden top-k attention implementations (``losses.py``).

For the last block's logits ``[B, h, n, n]`` and values ``[B, h, n, hd]`` this times the
global and the local view, forward and backward (as in the student), with each ``impl``:
``dense`` (the reference: keep-mask, masked full softmax), ``scatter`` (top-k on the logits,
softmax over the k values, one scattered matrix; the default), and checks they agree.
(A third, ``sum_k p_k V[idx_k]`` over gathered values, was slower and larger at these token
counts and was removed.)

    python benchmarks/bench_topk.py                     # 16x224, mask 0.9, ViT-S and ViT-B heads
    python benchmarks/bench_topk.py --small --device cpu
"""
import common  # noqa: F401  (puts the repository on sys.path)
import torch

from common import add_common_args, arg_parser, fmt_bytes, peak_memory, setup, summary, time_fn
from losses import TOPK_IMPLS, topk_attention_global, topk_attention_local


def run_case(device, b, heads, n, hd, slices, k, warmup, iters, dtype):
    """Rows ``(view, impl, fastest seconds, memory, memory label)``; the implementations
    take turns in every round so that load changes of a shared machine hit them alike."""
    logits = torch.randn(b, heads, n, n, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(b, heads, n, hd, device=device, dtype=dtype, requires_grad=True)

    def fwd(view, impl):
        if view == "global":
            return topk_attention_global(logits, v, k, 1.0, impl=impl)
        return topk_attention_local(logits, v, k, slices, 1.0, impl=impl)

    def make_step(view, impl):
        def step():
            fwd(view, impl).square().sum().backward()
            logits.grad = v.grad = None
        return step
    keys = [(view, impl) for view in ("global", "local") for impl in TOPK_IMPLS]
    steps = {key: make_step(*key) for key in keys}
    for view in ("global", "local"):
        ref = fwd(view, "dense").detach()
        for impl in TOPK_IMPLS:
            err = (fwd(view, impl).detach() - ref).abs().max().item()
            assert err < 1e-4, f"{view} {impl} differs from dense by {err}"
    times = {key: [] for key in keys}
    for it in range(warmup + iters):
        for key in keys:
            t = time_fn(steps[key], device, 0, 1)[0]
            if it >= warmup:
                times[key].append(t)
    rows = []
    for key in keys:
        mem, label = peak_memory(device, steps[key])
        rows.append(key + (summary(times[key])[1], mem, label))
    return rows


def main(argv=None):
    p = add_common_args(arg_parser(__doc__.splitlines()[0]))
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--num_k", type=int, default=10)
    args = p.parse_args(argv)
    device = setup(args)
    if args.small:
        b, slices, per_slice, cases = args.batch_size or 2, 2, 12, [(6, 64)]
        warmup, iters = args.warmup or 1, args.iters or 3
    else:  # 16x224, tube mask 0.9: 8 slices x 20 visible tokens (196 - int(0.9 * 196))
        b, slices, per_slice, cases = args.batch_size or 64, 8, 20, [(6, 64), (12, 64)]
        warmup, iters = args.warmup or 3, args.iters or 10
    n, k = slices * per_slice, min(args.num_k, per_slice)
    print(f"top-k attention: B={b}, n={n} visible tokens ({slices} slices), k={k}, "
          f"device {device}")
    print(f"{'heads':>5} {'view':>6} {'impl':>8} {'fwd+bwd ms':>11} {'memory':>12}")
    best = {}
    for heads, hd in cases:
        for view, impl, med, mem, label in run_case(device, b, heads, n, hd, slices, k, warmup,
                                                     iters, torch.float32):
            print(f"{heads:>5} {view:>6} {impl:>8} {med * 1e3:>11.2f} {fmt_bytes(mem):>12}")
            best.setdefault((heads, view), []).append((med, impl))
    print(f"(memory: {label})")
    for (heads, view), v in best.items():
        med, impl = min(v)
        dense = dict((i, m) for m, i in v)["dense"]
        print(f"fastest {view} with {heads} heads: {impl} ({dense / med:.2f}x dense)")


if __name__ == "__main__":
    main()
