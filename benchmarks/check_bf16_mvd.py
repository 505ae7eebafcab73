"""One MVD distillation step under bf16 autocast against float32: every loss term within 1 %.

MVD's student (both feature decoders), its image teacher (an ImageMAE ViT on the first frame of
every tubelet) and its video teacher (a VideoMAE encoder on the whole clip), with random
weights, clips and tube masks, go through ``engine_for_pretraining.forward_losses`` and the
backward twice: in float32 (TF32 off, so the reference is float32 indeed) and with teachers and
student under bf16 autocast, which is what ``run_mvd_pretraining.py`` runs on CUDA by default
(``--amp auto``) and on a CPU with ``--amp bf16``. Prints each term in both, their relative
difference and the cosine similarity of the student's gradients; exits 1 when a term differs
by more than ``--rtol`` (1 %) or the gradient cosine is below ``--min_grad_cos`` (0.99).
``benchmarks/gpu_check.sh`` runs it on the GPU, beside the MMKD step's check.

    python benchmarks/check_bf16_mvd.py                        # ViT-B <- ViT-B, 16x224, batch 8
    python benchmarks/check_bf16_mvd.py --small --device cpu   # ViT-T <- ViT-S, 4x96, batch 2
"""
import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F

from common import arg_parser, device_description, setup, size_name
from engine_for_pretraining import forward_losses
from losses import LossWeights
from masking_generator import TubeMaskingGenerator
from model_factory import create_image_teacher, create_student, create_teacher
from modeling_teacher import Teachers


def build(device, student, teachers, batch, frames, size, mask_ratio):
    """``(student, Teachers, clips, masks)`` with random weights, on ``device``."""
    geom = dict(img_size=size, num_frames=frames)
    t, s = size_name(teachers), size_name(student)
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
    return (model.to(device), Teachers(video, image).to(device), clips.to(device),
            masks.to(device))


def terms_and_grads(student, teachers, clips, masks, device, amp_dtype):
    """``({'loss': float, term: float}, flat float64 gradient of the student)`` of one
    forward and backward under ``amp_dtype`` (None = float32)."""
    student.zero_grad(set_to_none=True)
    loss, terms = forward_losses(student, teachers, clips, masks, device=device,
                                 weights=LossWeights(img_feat=1.0, vid_feat=1.0),
                                 amp_dtype=amp_dtype)
    loss.backward()
    grads = torch.cat([p.grad.flatten().double() for p in student.parameters()
                       if p.grad is not None])
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}, grads


def main(argv=None):
    p = arg_parser(__doc__.splitlines()[0])
    a = p.add_argument
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--small", action="store_true", help="tiny sizes that run on a CPU in seconds")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a("--seed", type=int, default=0)
    a("--student", default=None, help="default B (--small: T)")
    a("--teachers", default=None, help="size of both teachers: B or L (--small: S)")
    a("--batch_size", type=int, default=None, help="default 8 (--small: 2)")
    a("--mask_ratio", type=float, default=0.9)
    a("--rtol", type=float, default=0.01, help="largest relative difference of a term")
    a("--min_grad_cos", type=float, default=0.99,
      help="smallest cosine similarity of the student's bf16 and float32 gradients")
    args = p.parse_args(argv)
    device = setup(args)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    student = args.student or ("T" if args.small else "B")
    teachers = args.teachers or ("S" if args.small else "B")
    frames, size = (4, 96) if args.small else (16, 224)
    batch = args.batch_size or (2 if args.small else 8)
    models = build(device, student, teachers, batch, frames, size, args.mask_ratio)
    print(f"bf16 autocast vs float32, one MVD distillation step: student ViT-{student} <- image "
          f"and video teachers ViT-{teachers}, {frames}x{size}, tube mask {args.mask_ratio}, "
          f"batch {batch}; device: {device_description(device)}")
    ref, ref_grads = terms_and_grads(*models, device, None)
    low, low_grads = terms_and_grads(*models, device, torch.bfloat16)
    print(f"{'term':>10} {'float32':>14} {'bf16':>14} {'rel. diff':>10}")
    bad = []
    for name, r in ref.items():
        rel = abs(low[name] - r) / max(abs(r), 1e-12)
        if abs(low[name] - r) > args.rtol * abs(r) + 1e-6:
            bad.append(name)
        print(f"{name:>10} {r:14.6e} {low[name]:14.6e} {100 * rel:9.3f}%"
              f"{'  > rtol' if name in bad else ''}")
    cos = F.cosine_similarity(low_grads, ref_grads, dim=0).item()
    ratio = (low_grads.norm() / ref_grads.norm()).item()
    print(f"student gradients: cosine similarity {cos:.5f}, norm ratio bf16/float32 {ratio:.4f}")
    finite = all(map(torch.isfinite, (low_grads.sum(), ref_grads.sum())))
    if bad or not finite or cos < args.min_grad_cos:
        why = (f"terms beyond {100 * args.rtol:g} %: {', '.join(bad)}" if bad else
               f"gradient cosine {cos:.5f} < {args.min_grad_cos}" if finite else
               "non-finite gradients")
        raise SystemExit(f"MVD bf16 vs float32: FAILED ({why})")
    print(f"MVD bf16 vs float32: ok (every term within {100 * args.rtol:g} %, gradient cosine "
          f">= {args.min_grad_cos})")


if __name__ == "__main__":
    main()
