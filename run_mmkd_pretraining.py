"""MMKD distillation pre-training (Li et al., ACM MM 2023): arguments, set-up, epoch loop.

    python run_mmkd_pretraining.py --data_path train.csv --model pretrain_videomae_small_patch16_224 \
        --model_t pretrain_videomae_base_patch16_224 --path_t videomae_base_k400.pth \
        --distill hybrid --mask_type tube --mask_ratio 0.9 --output_dir out/

The flags are the reference scripts' (VideoMAE ``run_mae_pretraining.py`` and MMKD's), so
existing launch scripts run unchanged. With ``teacher=False`` (``run_mae_pretraining.py``)
the same loop runs VideoMAE's pixel objective without a teacher; ``run_mvd_pretraining.py``
runs it with MVD's flags and models (``main(args, build=...)``).
"""
import argparse
import functools
import sys
import time

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import distributed as du
from checkpoint import CheckpointWriteError, latest_checkpoint
from engine_for_pretraining import NonFiniteLossError, cosine_value, train_one_epoch
from flag_checks import check_flags
from frozen_eval import OnlineKNN, add_knn_args
from logger import RunLogger
from losses import DISTILL_VIEWS, FeatureLoss, LossWeights
from masking_generator import MASK_GENERATORS, build_masking_generator
from model_factory import ARCHS, PRETRAIN_MODELS, create_student, create_teacher
from modeling_encoder import compile_blocks
from modeling_teacher import Teacher
from optim_factory import add_optim_args, amp_setup, build_lr_scheduler, build_optimizer, scale_lrs
from pos_embed import add_pos_embed_arg
from run_dir import claim_output_dir, releases_output_dir
from run_state import ResumableSampler, RunState
from weights import load_teacher, vit_checkpoint_filter


def get_args_parser(teacher=True):
    """The reference flags; ``teacher=False`` leaves out the teacher's (VideoMAE mode)."""
    p = argparse.ArgumentParser("MMKD pre-training" if teacher else "VideoMAE pre-training",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(use_teacher=teacher)
    a = p.add_argument
    add_run_length_args(p, epochs=400)
    add_student_args(p, PRETRAIN_MODELS, "pretrain_videomae_small_patch16_224",
                     mask_ratio=0.9 if teacher else 0.75, pos_embed="sincos_1d", drop_path=0.0)
    add_pixel_args(p, "--decoder_depth", 0 if teacher else 4)
    if teacher:
        a("--model_t", default="pretrain_videomae_base_patch16_224", choices=sorted(PRETRAIN_MODELS))
        a("--path_t", default="", help="teacher checkpoint (VideoMAE/MVD/MMKD or ours); "
          "empty = random teacher, for smoke tests only")
        a("--teacher_sees_all", action=argparse.BooleanOptionalAction, default=False,
          help="teacher encodes the whole clip (MVD) instead of the visible tokens (MMKD)")
        add_mmkd_args(p)
    add_optim_and_data_args(p)
    return p


def add_run_length_args(p, epochs):
    a = p.add_argument
    a("--batch_size", type=int, default=64, help="videos per process and step (each gives "
      "--num_sample clips in pre-training)")
    a("--epochs", type=int, default=epochs)
    a("--save_ckpt_freq", type=int, default=50, help="save every this many epochs (and at the end)")
    a("--update_freq", type=int, default=1, help="gradient accumulation steps")


def add_student_args(p, models, model, mask_ratio, pos_embed, drop_path):
    """The student's and the mask's flags, with the defaults that differ between scripts."""
    a = p.add_argument
    a("--model", "--model_s", dest="model", default=model, choices=sorted(models), help="student")
    a("--mask_type", default="tube", choices=sorted(MASK_GENERATORS))
    a("--mask_ratio", type=float, default=mask_ratio)
    a("--input_size", type=int, default=224, help="clip height = width in pixels")
    add_pos_embed_arg(p, pos_embed)
    a("--drop_path", type=float, default=drop_path, help="stochastic depth of the student")
    a("--use_checkpoint", action="store_true", help="activation checkpointing of the student")


def add_pixel_args(p, depth_flag, depth):
    """VideoMAE's pixel decoder: its depth (``depth_flag``, stored as ``decoder_depth``),
    target normalisation and weight."""
    a = p.add_argument
    a(depth_flag, dest="decoder_depth", type=int, default=depth,
      help="pixel decoder blocks; 0 = no pixel decoder")
    a("--normlize_target", action=argparse.BooleanOptionalAction, default=True,
      help="per-patch normalised pixel target (VideoMAE's spelling of the flag)")
    a("--pixel_loss_weight", type=float, default=1.0, help="weight of the pixel loss (with a decoder)")


def add_mmkd_args(p, gamma=0.2, alpha=0.1, beta=1.0):
    """MMKD's loss flags (the weights' defaults differ where MMKD's terms are an option)."""
    a = p.add_argument
    a("--distill", default="hybrid", choices=sorted(DISTILL_VIEWS))
    a("--gamma", type=float, default=gamma, help="weight of MM-hint")
    a("--alpha", type=float, default=alpha, help="weight of MM-relation")
    a("--beta", type=float, default=beta, help="weight of MM-hidden")
    a("--beta_kd1", type=float, default=3.0, help="MM-hidden global share")
    a("--beta_kd2", type=float, default=1.0, help="MM-hidden local share")
    a("--num_k", type=int, default=10, help="attention entries kept per row (MM-hidden)")
    a("--num_f", type=int, default=10, help="salient tokens per clip (MM-hint, MM-relation)")
    a("--kd_T", type=float, default=1.0, help="attention softmax temperature")
    a("--temperature_s", type=float, default=0.1, help="MM-relation student temperature")
    a("--temperature_t", type=float, default=0.05, help="MM-relation teacher temperature")
    a("--teacher_proj", action=argparse.BooleanOptionalAction, default=False,
      help="a trainable teacher-side Linear (D_t -> D_t) on the teacher's attention outputs "
      "(MM-hidden), trained with the student's projectors as in the public ViT-S recipe")
    a("--reference_losses", action=argparse.BooleanOptionalAction, default=False,
      help="compute the MMKD terms exactly as the public MMKD code does, to reproduce its "
      "numbers: MM-hint over all visible tokens with the unselected ones zeroed before the "
      "projector (x N/num_f), the local view's values paired as its VTop pairs them, and "
      "the teacher-side Linear whenever the student is narrower than the teacher (README, "
      "'The method, as implemented')")


def add_optim_and_data_args(p, opt_betas=(0.9, 0.95)):
    a = p.add_argument
    # optimisation (VideoMAE / MMKD / MVD pre-training defaults)
    add_optim_args(p, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40,
                   opt_betas=list(opt_betas) if opt_betas else None)
    a("--weight_decay_end", type=float, default=None, help="final wd of the cosine schedule "
      "(default: --weight_decay, i.e. constant)")
    # data
    a("--data_path", required=True, help="annotation file, one 'path label' per line")
    a("--data_root", default="", help="prefix for relative video paths")
    a("--num_frames", type=int, default=16)
    a("--sampling_rate", type=int, default=4)
    a("--num_sample", type=int, default=1, help="repeated sampling (VideoMAE V2): clips cropped "
      "and masked from each decoded window; the effective batch and the lr scaling count them")
    add_knn_args(p)
    du.add_run_args(p)


def resolve_args(args, student, teacher):
    """Check every flag against the built models and derive the run's values (token grid,
    visible tokens, effective batch, scaled lrs). Raises ValueError naming the flag."""
    pe = student.patch_embed
    gen = build_masking_generator(args.mask_type, pe.grid_size, args.mask_ratio)
    args.token_grid = list(pe.grid_size)
    args.num_visible = pe.num_patches - gen.num_mask
    if student.decoders and gen.num_mask == 0:
        raise ValueError("decoders predict the hidden tokens and there are none: raise "
                         "--mask_ratio")
    if not args.use_teacher and args.decoder_depth == 0:
        raise ValueError("without a teacher the pixel decoder is the only objective: "
                         "--decoder_depth must be > 0")
    if isinstance(teacher, Teacher) and teacher.patch_embed.grid_size != pe.grid_size:
        raise ValueError(f"student token grid {pe.grid_size} differs from the teacher's "
                         f"{teacher.patch_embed.grid_size} (--model vs --model_t)")
    if loss_weights(args).uses_mmkd():
        if args.num_f > args.num_visible:
            raise ValueError(f"--num_f {args.num_f} is larger than the {args.num_visible} "
                             f"visible tokens per clip")
        views = DISTILL_VIEWS[args.distill]
        per_slice = args.num_visible // pe.grid_size[0]
        if "local" in views and args.mask_type != "tube":
            raise ValueError(f"--distill {args.distill} uses per-slice attention, which needs "
                             f"--mask_type tube (the same visible tokens in every slice)")
        limit = per_slice if "local" in views else args.num_visible
        if views and args.num_k > limit:
            raise ValueError(f"--num_k {args.num_k} is larger than the {limit} visible keys "
                             f"{'per temporal slice' if 'local' in views else 'per clip'}")
    scale_lrs(args, clips_per_item=args.num_sample)
    if args.weight_decay_end is None:
        args.weight_decay_end = args.weight_decay
    return gen


def loss_weights(args):
    """The objective's :class:`LossWeights` from the flags the script has (MMKD's, MVD's,
    the pixel term's; a weight the script has no flag for is 0)."""
    g = functools.partial(getattr, args)
    return LossWeights.from_args(g("distill", "hybrid"), g("gamma", 0), g("alpha", 0),
                                 g("beta", 0), g("beta_kd1", 0), g("beta_kd2", 0),
                                 args.pixel_loss_weight if args.decoder_depth > 0 else 0.0,
                                 use_teacher=args.use_teacher,
                                 img_feat=g("image_teacher_loss_weight", 0.0),
                                 vid_feat=g("video_teacher_loss_weight", 0.0))


def feature_losses(args):
    """MVD's two terms' :class:`FeatureLoss` from its flags (SmoothL1 on raw targets where
    the script has none)."""
    norm = getattr(args, "norm_feature", False)
    return {"img_feat": FeatureLoss(getattr(args, "distill_loss_func", "SmoothL1"), norm),
            "vid_feat": FeatureLoss(getattr(args, "video_distill_loss_func", "SmoothL1"), norm)}


def mmkd_student_kwargs(args, student_dim, teacher_dim, views):
    """The student's MMKD settings (:func:`create_student` keywords) from the flags, for a
    student and a teacher of widths ``student_dim``, ``teacher_dim`` and MM-hidden ``views``."""
    # the reference mode has the teacher-side Linear where the public code has projectors
    # (run_kd.py, student narrower than the teacher); run_mae_kd.py has none
    narrower = student_dim != teacher_dim
    return dict(teacher_dim=teacher_dim, views=views, num_k=args.num_k, kd_T=args.kd_T,
                teacher_proj=args.teacher_proj or (args.reference_losses and narrower),
                pairing="reference" if args.reference_losses else "slice")


def build_models(args):
    """Student (trainable, with projector and decoder as asked) and frozen teacher (or None)."""
    geometry = dict(img_size=args.input_size, num_frames=args.num_frames,
                    pos_embed=args.pos_embed)
    teacher = None
    if args.use_teacher:
        teacher = create_teacher(args.model_t, sees_all_tokens=args.teacher_sees_all, **geometry)
        if args.path_t:
            load_teacher(teacher, args.path_t)
    kd = {}
    if teacher:
        kd = mmkd_student_kwargs(args, ARCHS[PRETRAIN_MODELS[args.model]]["embed_dim"],
                                 teacher.embed_dim, DISTILL_VIEWS[args.distill])
    student = create_student(args.model, decoder_depth=args.decoder_depth,
                             drop_path_rate=args.drop_path, use_checkpoint=args.use_checkpoint,
                             **kd, **geometry)
    if teacher is not None:
        print(f"teacher {args.model_t} (frozen, "
              f"{'whole clip' if args.teacher_sees_all else 'visible tokens'}) from "
              f"{args.path_t or 'random initialisation'}")
    return student, teacher


def setup(args, build=build_models):
    """Everything before the first step; bad input fails here with one clear message.
    ``build(args) -> (student, teacher)`` makes the models (MVD's script passes its own)."""
    from datasets import build_pretraining_dataset
    from datasets.collate import collate_skip_none

    check_flags(args)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    du.init_distributed_mode(args)
    claim_output_dir(args.output_dir, args.log_dir)
    seed = args.seed + du.get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    student, teacher = build(args)
    mask_gen = resolve_args(args, student, teacher)
    dataset = build_pretraining_dataset(args, mask_gen)
    # the order of an epoch from (seed, epoch) on one process too (set_epoch), the items from
    # (seed, epoch, index) (dataset.set_epoch): no draw from the global RNGs, whatever the workers
    sampler = ResumableSampler(dataset, du.get_world_size(), du.get_rank(), shuffle=True,
                               seed=args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and torch.device(args.device).type == "cuda", drop_last=True,
        collate_fn=collate_skip_none, persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(seed))
    if len(loader) < args.update_freq:
        raise ValueError(f"{args.data_path}: {len(dataset)} clips give {len(loader)} batches of "
                         f"--batch_size {args.batch_size} per process, fewer than --update_freq "
                         f"{args.update_freq}")
    return student, teacher, dataset, loader, sampler


@releases_output_dir
def main(args, build=build_models):
    """Train: the one set-up and epoch loop of the three pre-training scripts (``build`` as in
    :func:`setup`)."""
    try:
        student, teacher, dataset, loader, sampler = setup(args, build)
        amp_dtype, scaler = amp_setup(args)
        knn = OnlineKNN.from_args(args)  # None without --knn_eval_freq
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    device = torch.device(args.device if not args.distributed else args.device)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
    if getattr(args, "compile", False):  # in place: checkpoints keep their keys
        n = compile_blocks(student) + (compile_blocks(teacher) if teacher is not None else 0)
        print(f"torch.compile: {n} transformer blocks")
    raw = student
    if args.distributed:
        student = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = len(loader) // args.update_freq
    optimizer = build_optimizer(raw, args)
    lr_scheduler, warmup, total = build_lr_scheduler(optimizer, args, steps_per_epoch)
    n_params = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    print(f"student {args.model}: {n_params / 1e6:.2f}M trainable parameters, token grid "
          f"{args.token_grid}, {args.num_visible} visible tokens per clip ({args.mask_type} "
          f"mask {args.mask_ratio})")
    repeated = f"{args.num_sample} clips per video x " if args.num_sample > 1 else ""
    print(f"effective batch size {args.total_batch_size} = {args.batch_size} per process x "
          f"{repeated}{args.world_size} processes x {args.update_freq} accumulation; "
          f"lr {args.lr_scaled:.3e} = {args.lr:.3e} x {args.total_batch_size} / 256 "
          f"(min {args.min_lr_scaled:.3e}, warm-up {warmup} updates); {steps_per_epoch} updates "
          f"per epoch")
    weights = loss_weights(args)
    print(f"loss weights: {weights}")

    state = RunState(args, raw, optimizer, sampler, steps_per_epoch, scaler=scaler,
                     device=device, filter_fn=vit_checkpoint_filter)
    try:  # ours, or MVD's layout (bare encoder keys, stored tables): every key must fit
        resumed = state.resume()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    logger = RunLogger(args.output_dir, args.log_dir,
                       resume=state.log_position() if resumed else None)
    logger.write_args(args)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        state.set_epoch(epoch)
        dataset.set_epoch(epoch, args.seed + du.get_rank())
        try:
            stats = train_one_epoch(
                student, teacher, loader, optimizer, device, epoch, weights=weights,
                lr_scheduler=lr_scheduler,
                wd_schedule=lambda u: cosine_value(u, total, args.weight_decay, args.weight_decay_end),
                steps_per_epoch=steps_per_epoch, loss_scaler=scaler, amp_dtype=amp_dtype,
                clip_grad=args.clip_grad, update_freq=args.update_freq,
                num_k=getattr(args, "num_k", 10), num_f=getattr(args, "num_f", 10),
                kd_T=getattr(args, "kd_T", 1.0), temperature_s=getattr(args, "temperature_s", 0.1),
                temperature_t=getattr(args, "temperature_t", 0.05),
                normalize_target=args.normlize_target, mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, logger=logger,
                reference=getattr(args, "reference_losses", False),
                feature_losses=feature_losses(args), run_state=state)
        except NonFiniteLossError as e:
            last = latest_checkpoint(args.output_dir)
            sys.exit(f"error: {e}. Last good checkpoint: {last or 'none written yet'}")
        terms = " ".join(f"{k}={stats[k]:.4f}" for k in ("loss", "hint", "relation", "global",
                                                        "local", "pixel", "img_feat",
                                                        "vid_feat") if k in stats)
        print(f"epoch {epoch}: {terms} | lr {stats['lr']:.3e} | {stats['clips_per_s']:.2f} clips/s "
              f"| data {stats['data_time']:.3f}s / step {stats['step_time']:.3f}s | skipped "
              f"{stats['skipped_videos']} corrupted videos")
        save_error = None
        try:
            state.end_epoch(epoch)
        except CheckpointWriteError as e:
            save_error = e  # stop after this epoch's log line
        knn_stats = knn(raw, epoch, (epoch + 1) * steps_per_epoch, logger) if knn else {}
        logger.log_json({"epoch": epoch, "n_parameters": n_params,
                         **{f"train_{k}": v for k, v in stats.items()}, **knn_stats})
        if save_error:
            sys.exit(f"error: {save_error}")
        state.stop_if_asked(epoch)
    logger.close()
    print(f"training time {time.time() - start:.1f}s")
    du.shutdown()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
