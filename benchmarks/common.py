"""Shared pieces of the benchmarks: device set-up, timing, memory, analytic FLOPs, peaks.

FLOPs are counted analytically (multiply-add = 2 FLOPs, matmuls only; norms, softmax,
GELU and the optimizer are left out), per clip:

- patch embedding (Conv3d over all ``N`` tokens, before masking): ``2 N (3 t p^2) D``;
- each transformer block over ``n`` tokens of width ``D`` (MLP ratio 4):
  qkv ``2 n D 3D`` + proj ``2 n D D`` + MLP ``2 n D 4D * 2`` = ``24 n D^2``, and attention
  ``q k^T`` + ``attn V`` = ``2 * 2 n^2 D``;
- MMKD extras of the last block (``--distill hybrid``): the top-k attention outputs,
  ``2 n^2 D`` per view (the ``[n, n]`` weight matrices times ``V``; the local view sums over
  the slices' ``n / S`` keys for each of the ``S`` slices, so the same count) for the teacher
  and the student, the student's projector (MLP ``D_s -> 2 D_s -> D_t`` on ``n`` tokens:
  ``2 n (2 D_s^2 + 2 D_s D_t)``; attention Linear ``2 n D_s D_t`` global and
  ``2 n S D_s D_t`` local);
- the pixel decoder when there is one (``L_dec`` blocks over all ``N`` tokens of width
  ``D_dec``, plus the ``D_s -> D_dec`` map and the pixel head on the hidden tokens).

A distillation step costs ``teacher forward x 1 + student forward x 3`` (backward = 2x
forward), the usual ``6 x params x tokens`` convention. Achieved model FLOP/s =
``FLOPs per clip x clips / step time``; MFU = that / the device's dense peak.
"""
import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from model_factory import ARCHS  # noqa: E402

SIZE_NAMES = {"T": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}

# Dense (no sparsity) peak TFLOP/s by device name fragment, for the autocast dtype bf16/fp16
# and for float32 (TF32 tensor cores where the device has them, as PyTorch uses for matmuls
# only when allowed; we quote the plain FP32 figure). Vendor data sheets.
PEAK_TFLOPS = {  # fragment: (bf16/fp16 dense, fp32)
    "H200": (989.0, 67.0),
    "H100": (989.0, 67.0),  # SXM; the PCIe card is ~756 / 51
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "A10G": (70.0, 31.2),
    "V100": (125.0, 15.7),
}


def size_name(size):
    """``'S'`` / ``'small'`` -> ``'small'``."""
    return SIZE_NAMES.get(size.upper(), size) if len(size) == 1 else size


def model_name(size):
    return f"pretrain_videomae_{size_name(size)}_patch16_224"


def add_common_args(p, small_help="tiny sizes that run on a CPU in well under a minute"):
    a = p.add_argument
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--small", "--cpu-smoke", dest="small", action="store_true", help=small_help)
    a("--warmup", type=int, default=None, help="untimed iterations first")
    a("--iters", type=int, default=None, help="timed iterations")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a("--peak_tflops", type=float, default=None,
      help="device peak TFLOP/s for MFU (default: table for known GPUs; on a CPU the "
           "measured peak of a large matmul)")
    a("--seed", type=int, default=0)
    return p


def setup(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if str(args.device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for, but no CUDA device is visible")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def fast_amp_dtype(device):
    """The optimised modes' autocast dtype: bf16 where the device computes it natively (CUDA
    with bf16, CPUs with AVX512-BF16 / AMX), else fp16 on CUDA and float32 (None) on a CPU."""
    from optim_factory import cpu_has_native_bf16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def device_description(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible"


@functools.lru_cache(maxsize=None)
def measured_matmul_tflops(dtype, size=2048, iters=5):
    """TFLOP/s of the fastest of ``iters`` ``size^3`` matmuls in ``dtype`` on the CPU with the
    current torch threads: a practical ceiling where no data-sheet peak is known."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = min(time_fn(lambda: a @ b, torch.device("cpu"), 0, iters))
    return 2 * size ** 3 / best / 1e12


def device_peak_tflops(device, low_precision, override=None):
    """``(peak TFLOP/s or None, where it came from)``. On a CPU: the measured peak of a large
    matmul (bf16 when ``low_precision``), since CPU data sheets rarely give one."""
    if override:
        return override, "--peak_tflops"
    if device.type != "cuda":
        dtype = torch.bfloat16 if low_precision else torch.float32
        kind = "bf16" if low_precision else "fp32"
        return (measured_matmul_tflops(dtype),
                f"CPU: measured {kind} 2048^3 matmul peak, {torch.get_num_threads()} threads")
    name = torch.cuda.get_device_name(device)
    for frag, (lp, fp32) in PEAK_TFLOPS.items():
        if frag in name:
            kind = "bf16" if low_precision else "fp32"
            return (lp if low_precision else fp32), f"table: {frag} {kind} dense"
    return None, f"unknown for {name} (pass --peak_tflops)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, warmup, iters):
    """Run ``fn`` ``warmup`` times, then time ``iters`` runs; returns the list of seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def summary(times):
    """Median seconds (robust to the other jobs of a shared machine) and the min."""
    return statistics.median(times), min(times)


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for the backward inside the context:
    the activation memory of a training step, which is what the optimisations change. Used on
    CPU, where PyTorch keeps no allocator statistics (on CUDA the benchmarks report
    ``torch.cuda.max_memory_allocated`` instead)."""

    def __init__(self, exclude=()):
        """``exclude``: modules whose parameters (saved by every Linear) are not counted."""
        self.storages = {}
        self.skip = {p.untyped_storage().data_ptr() for m in exclude for p in m.parameters()}

    def _pack(self, t):
        try:
            st = t.untyped_storage()
            if st.data_ptr() not in self.skip:
                self.storages[st.data_ptr()] = st.nbytes()
        except RuntimeError:  # a tensor without a plain storage is not counted
            pass
        return t

    @contextlib.contextmanager
    def __call__(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    @property
    def nbytes(self):
        return sum(self.storages.values())


def cpu_allocation_peak(fn):
    """Peak bytes of the tensors ``fn()`` allocates on the CPU (above what was allocated
    before it): the running sum, in time order, of the allocation and free records of
    ``torch.profiler`` with ``profile_memory``. None where the profiler gives no records."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]")
    except AttributeError:  # another torch's profiler internals
        return None
    peak = total = 0
    for _, nbytes in records:
        total += nbytes
        peak = max(peak, total)
    return peak or None


def inference_peak(device, fn):
    """Peak bytes allocated while ``fn()`` runs: the CUDA allocator's peak, or on the CPU
    :func:`cpu_allocation_peak`."""
    if device.type != "cuda":
        return cpu_allocation_peak(fn)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def peak_memory(device, fn, exclude=()):
    """``(bytes, label)``: the CUDA allocator's peak during ``fn()``; on CPU the activation
    bytes saved for the backward (see :class:`SavedTensorBytes`; parameters of the modules
    in ``exclude`` left out)."""
    if device.type == "cuda":
        return inference_peak(device, fn), "peak allocated"
    meter = SavedTensorBytes(exclude)
    with meter():
        fn()
    return meter.nbytes, "saved activations"


def fmt_bytes(n):
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


# ---------------------------------------------------------------- analytic FLOPs

def encoder_flops(n_tokens, n_all, dim, depth, in_per_token, mlp_ratio=4.0):
    """Forward FLOPs of one clip through the ViT encoder: patch embedding over ``n_all``
    tokens, ``depth`` blocks over ``n_tokens``."""
    embed = 2 * n_all * in_per_token * dim
    per_block = (6 + 2 + 4 * mlp_ratio) * n_tokens * dim ** 2 + 4 * n_tokens ** 2 * dim
    return embed + depth * per_block


def topk_views_flops(n_tokens, dim, views):
    """The ``[n, n]`` top-k weights times ``V`` for each MM-hidden view."""
    return len(views) * 2 * n_tokens ** 2 * dim


def step_flops(student_size, teacher_size, num_frames, input_size, mask_ratio_visible,
               views=("global", "local"), decoder_depth=0, tubelet=2, patch=16,
               teacher_sees_all=False):
    """Analytic FLOPs of one distillation step per clip, as ``dict(teacher, student_fwd,
    student_step, total)``; ``mask_ratio_visible``: visible tokens per clip."""
    s, t = ARCHS[size_name(student_size)], ARCHS[size_name(teacher_size)] if teacher_size else None
    n_all = (num_frames // tubelet) * (input_size // patch) ** 2
    slices = num_frames // tubelet
    n = mask_ratio_visible
    k_in = 3 * tubelet * patch * patch
    ds = s["embed_dim"]
    student = encoder_flops(n, n_all, ds, s["depth"], k_in)
    teacher = 0
    if t is not None:
        dt = t["embed_dim"]
        n_t = n_all if teacher_sees_all else n
        teacher = encoder_flops(n_t, n_all, dt, t["depth"], k_in) + topk_views_flops(n, dt, views)
        student += topk_views_flops(n, ds, views)
        if ds != dt:  # projector
            student += 2 * n * (2 * ds * ds + 2 * ds * dt)
            student += ("global" in views) * 2 * n * ds * dt
            student += ("local" in views) * 2 * n * slices * ds * dt
    if decoder_depth:
        dd = s["decoder_embed_dim"]
        student += 2 * n * ds * dd + decoder_depth * (24 * n_all * dd ** 2 + 4 * n_all ** 2 * dd)
        student += 2 * (n_all - n) * dd * k_in
    return dict(teacher=teacher, student_fwd=student, student_step=3 * student,
                total=teacher + 3 * student)


def classifier_flops(size, num_frames, input_size, num_classes=400, tubelet=2, patch=16):
    """Forward FLOPs of one view through the classifier (all tokens, + the head)."""
    a = ARCHS[size_name(size)]
    n = (num_frames // tubelet) * (input_size // patch) ** 2
    return encoder_flops(n, n, a["embed_dim"], a["depth"], 3 * tubelet * patch * patch) \
        + 2 * a["embed_dim"] * num_classes


def mfu_text(flops_per_s, peak):
    tf = flops_per_s / 1e12
    if peak is None:
        return f"{tf:.3f} TFLOP/s (MFU unknown)"
    return f"{tf:.3f} TFLOP/s = {100 * tf / peak:.1f}% of {peak:g}"


def arg_parser(description):
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def fast_init():
    """Replace the truncated-normal initialisation by a plain normal one while building
    models for timing (weights do not change the cost; ViT-L's truncated-normal init takes
    many seconds on a small CPU). Returns a context manager."""
    import modeling_encoder
    import modeling_student

    @contextlib.contextmanager
    def ctx():
        saved = modeling_encoder.trunc_normal_, modeling_student.trunc_normal_
        fast = lambda t, std=1.0, **_: torch.nn.init.normal_(t, std=std)  # noqa: E731
        modeling_encoder.trunc_normal_ = modeling_student.trunc_normal_ = fast
        try:
            yield
        finally:
            modeling_encoder.trunc_normal_, modeling_student.trunc_normal_ = saved
    return ctx()

