"""One distillation step under bf16 autocast against float32: every loss term within 1 %.

``--method mmkd`` (default): the MMKD step of ``bench_pretrain_step.DistillStep`` (student and
visible-token teacher). ``--method mvd``: MVD's student with both feature decoders, its image
teacher (an ImageMAE ViT on the first frame of every tubelet) and its video teacher (a VideoMAE
encoder on the whole clip). Random weights, clips and tube masks go through
``engine_for_pretraining.forward_losses`` and the backward twice: in float32 (TF32 off, so the
reference is float32 indeed) and with teachers and student under bf16 autocast, which is what
the training scripts run on CUDA by default (``--amp auto``) and on a CPU with ``--amp bf16``.
Prints every term in both, their relative difference and the cosine similarity of the
student's gradients; exits 1 when a term differs by more than ``--rtol`` (1 %) or the gradient
cosine is below ``--min_grad_cos`` (0.99). ``benchmarks/gpu_check.sh`` runs both methods on the
GPU; ``tests/test_optimised_paths.py`` holds the same check on tiny models.

    python benchmarks/check_bf16.py                        # MMKD, ViT-B <- ViT-B, 16x224, batch 8
    python benchmarks/check_bf16.py --method mvd           # MVD, ViT-B <- ViT-B image + video
    python benchmarks/check_bf16.py --small --device cpu   # ViT-T <- ViT-S, 4x96, batch 2
"""
from dataclasses import dataclass, field

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F

import losses
from bench_pretrain_step import DistillStep
from common import arg_parser, device_description, setup, size_name
from engine_for_pretraining import forward_losses
from masking_generator import TubeMaskingGenerator
from model_factory import create_image_teacher, create_student, create_teacher
from modeling_teacher import Teachers


@dataclass
class Step:
    """What one step needs: models, inputs, loss weights, extra ``forward_losses`` arguments
    and a line saying what it is."""
    student: torch.nn.Module
    teacher: torch.nn.Module
    clips: torch.Tensor
    masks: torch.Tensor
    weights: losses.LossWeights
    description: str
    extra: dict = field(default_factory=dict)


def mmkd_step(device, student, teacher, batch, frames, size, mask_ratio, distill):
    """The MMKD step of the step benchmark (:class:`DistillStep`)."""
    bench = DistillStep(device, student, teacher, batch, frames, size, mask_ratio, distill)
    return Step(bench.student, bench.teacher, bench.videos, bench.mask, bench.weights,
                f"MMKD distillation step: student ViT-{student} <- teacher ViT-{teacher}, "
                f"{bench.num_visible} visible tokens, --distill {distill}",
                dict(num_k=bench.num_k, num_f=bench.num_f))


def mvd_step(device, student, teacher, batch, frames, size, mask_ratio, distill=None):
    """MVD's step: both feature decoders against an image and a video teacher of one size."""
    geom = dict(img_size=size, num_frames=frames)
    t, s = size_name(teacher), size_name(student)
    video = create_teacher(f"pretrain_videomae_teacher_{t}_patch16_224", sees_all_tokens=True,
                           **geom)
    image = create_image_teacher(f"mae_teacher_vit_{t}_patch16", img_size=size)
    model = create_student(f"pretrain_masked_video_student_{s}_patch16_224", decoder_depth=0,
                           feature_dims={"img_feat": image.embed_dim, "vid_feat": video.embed_dim},
                           **geom)
    gen = TubeMaskingGenerator(model.patch_embed.grid_size, mask_ratio, seed=0)
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(batch, 3, frames, size, size, generator=g)
    masks = torch.stack([torch.from_numpy(gen()) for _ in range(batch)])
    return Step(model.to(device), Teachers(video, image).to(device), clips.to(device),
                masks.to(device), losses.LossWeights(img_feat=1.0, vid_feat=1.0),
                f"MVD distillation step: student ViT-{student} <- image and video teachers "
                f"ViT-{teacher}")


METHODS = {"mmkd": mmkd_step, "mvd": mvd_step}


def terms_and_grads(step, device, amp_dtype):
    """``({'loss': float, term: float, ...}, flat float64 gradient of the student)`` of one
    forward and backward of ``step`` under ``amp_dtype`` (None = float32)."""
    step.student.zero_grad(set_to_none=True)
    loss, terms = forward_losses(step.student, step.teacher, step.clips, step.masks,
                                 weights=step.weights, device=device, amp_dtype=amp_dtype,
                                 **step.extra)
    loss.backward()
    grads = torch.cat([p.grad.flatten().double() for p in step.student.parameters()
                       if p.grad is not None])
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}, grads


def compare(ref, low, rtol, atol=1e-6):
    """``[(name, float32, bf16, relative difference, within)]`` for every term of ``ref``."""
    rows = []
    for k, r in ref.items():
        diff = abs(low[k] - r)
        rows.append((k, r, low[k], diff / max(abs(r), 1e-12), diff <= rtol * abs(r) + atol))
    return rows


def main(argv=None):
    p = arg_parser(__doc__.splitlines()[0])
    a = p.add_argument
    a("--method", default="mmkd", choices=sorted(METHODS))
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--small", action="store_true", help="tiny sizes that run on a CPU in seconds")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a("--seed", type=int, default=0)
    a("--student", default=None, help="default B (--small: T)")
    a("--teacher", "--teachers", dest="teacher", default=None,
      help="size of the teacher(s), default B (--small: S)")
    a("--batch_size", type=int, default=None, help="default 8 (--small: 2)")
    a("--num_frames", type=int, default=None)
    a("--input_size", type=int, default=None)
    a("--mask_ratio", type=float, default=0.9)
    a("--distill", default="hybrid", choices=sorted(losses.DISTILL_VIEWS), help="MMKD only")
    a("--rtol", type=float, default=0.01, help="largest relative difference of a term")
    a("--min_grad_cos", type=float, default=0.99,
      help="smallest cosine similarity of the student's bf16 and float32 gradients")
    args = p.parse_args(argv)
    device = setup(args)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    small = args.small
    student = args.student or ("T" if small else "B")
    teacher = args.teacher or ("S" if small else "B")
    frames = args.num_frames or (4 if small else 16)
    size = args.input_size or (96 if small else 224)
    batch = args.batch_size or (2 if small else 8)
    step = METHODS[args.method](device, student, teacher, batch, frames, size, args.mask_ratio,
                                args.distill)
    print(f"bf16 autocast vs float32, one {step.description}, {frames}x{size}, tube mask "
          f"{args.mask_ratio}, batch {batch}; device: {device_description(device)}")
    ref, ref_grads = terms_and_grads(step, device, None)
    low, low_grads = terms_and_grads(step, device, torch.bfloat16)
    rows = compare(ref, low, args.rtol)
    print(f"{'term':>10} {'float32':>14} {'bf16':>14} {'rel. diff':>10}")
    for name, r, b, rel, ok in rows:
        print(f"{name:>10} {r:14.6e} {b:14.6e} {100 * rel:9.3f}%{'' if ok else '  > rtol'}")
    cos = F.cosine_similarity(low_grads, ref_grads, dim=0).item()
    ratio = (low_grads.norm() / ref_grads.norm()).item()
    print(f"student gradients: cosine similarity {cos:.5f}, norm ratio bf16/float32 {ratio:.4f}")
    bad = [name for name, *_, ok in rows if not ok]
    finite = all(map(torch.isfinite, (low_grads.sum(), ref_grads.sum())))
    name = args.method.upper()
    if bad or not finite or cos < args.min_grad_cos:
        why = (f"terms beyond {100 * args.rtol:g} %: {', '.join(bad)}" if bad else
               f"gradient cosine {cos:.5f} < {args.min_grad_cos}" if finite else
               "non-finite gradients")
        raise SystemExit(f"{name} bf16 vs float32: FAILED ({why})")
    print(f"{name} bf16 vs float32: ok (every term within {100 * args.rtol:g} %, gradient cosine "
          f">= {args.min_grad_cos})")


if __name__ == "__main__":
    main()
