"""MVD distillation pre-training (Wang et al., "Masked Video Distillation: Rethinking Masked
Feature Modeling for Self-supervised Video Representation Learning", CVPR 2023): MVD's flags
and models; the set-up, epoch loop, logs, checkpoints and DDP are ``run_mmkd_pretraining``'s.

    python run_mvd_pretraining.py --data_path train.csv \
        --model pretrain_masked_video_student_base_patch16_224 \
        --image_teacher_model mae_teacher_vit_base_patch16 \
        --image_teacher_model_ckpt_path mae_pretrain_vit_base.pth \
        --video_teacher_model pretrain_videomae_teacher_base_patch16_224 \
        --video_teacher_model_ckpt_path videomae_base_k400_1600e.pth \
        --mask_type tube --mask_ratio 0.9 --decoder_depth 2 --output_dir out/

The student's feature decoders predict, at the hidden positions, the image teacher's features
of the first frame of every tubelet and the video teacher's features of the whole clip
(METHOD.md, "MVD exactly"). The flags are MVD's own, so its launch scripts run unchanged;
``--decoder_depth`` is the feature decoders' depth, as there. MMKD's terms (``--gamma``,
``--alpha``, ``--beta``, ...; all 0 here) and VideoMAE's pixel term (``--pixel_decoder_depth``)
can join the objective: MMKD's targets then come from the video teacher's same forward over
the whole clip, at the student's visible positions.
"""
import argparse

from losses import FEATURE_LOSSES
from model_factory import (ARCHS, IMAGE_TEACHER_MODELS, MVD_STUDENT_MODELS, TEACHER_MODELS,
                           create_image_teacher, create_student, create_teacher)
from modeling_teacher import Teachers
from run_mmkd_pretraining import (add_mmkd_args, add_optim_and_data_args, add_pixel_args,
                                  add_run_length_args, add_student_args, loss_weights, main,
                                  mmkd_student_kwargs)
from weights import load_image_teacher, load_teacher


def get_args_parser():
    """MVD's ``run_mvd_pretraining.py`` flags and defaults, plus the shared ones."""
    p = argparse.ArgumentParser("MVD pre-training",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(use_teacher=True)
    a = p.add_argument
    add_run_length_args(p, epochs=800)
    add_student_args(p, MVD_STUDENT_MODELS, "pretrain_masked_video_student_base_patch16_224",
                     mask_ratio=0.75, pos_embed="sincos_3d", drop_path=0.1)
    a("--decoder_depth", dest="feat_decoder_depth", type=int, default=2,
      help="blocks of each feature decoder (MVD's flag; the pixel decoder's is "
      "--pixel_decoder_depth)")
    a("--feat_decoder_embed_dim", type=int, default=None,
      help="feature decoders' width (default: the encoder's)")
    a("--feat_decoder_num_heads", type=int, default=None,
      help="feature decoders' heads (default: the encoder's)")
    # the image teacher: an ImageMAE ViT on the first frame of every tubelet
    a("--image_teacher_model", default="mae_teacher_vit_base_patch16",
      choices=sorted(IMAGE_TEACHER_MODELS))
    a("--image_teacher_model_ckpt_path", default="",
      help="MAE's mae_pretrain_vit_*.pth (or a timm ViT checkpoint); empty = random teacher, "
      "for smoke tests only")
    a("--distillation_target_dim", type=int, default=768,
      help="the image teacher's width (the image decoder's output)")
    a("--distill_loss_func", default="SmoothL1", choices=sorted(FEATURE_LOSSES))
    a("--image_teacher_loss_weight", type=float, default=1.0, help="0 = no image teacher")
    a("--teacher_input_size", type=int, default=224,
      help="frame size the image teacher sees (196 for the patch-14 ViT-H: the student's "
      "14 x 14 grid)")
    # the video teacher: a VideoMAE encoder on the whole clip
    a("--video_teacher_model", default="pretrain_videomae_teacher_base_patch16_224",
      choices=sorted(TEACHER_MODELS))
    a("--video_teacher_model_ckpt_path", default="",
      help="VideoMAE pre-training checkpoint (or any our loaders read); empty = random "
      "teacher, for smoke tests only")
    a("--video_teacher_input_size", type=int, default=None,
      help="frame size the video teacher sees (MVD's flag): --input_size, the default and the "
      "only value allowed, since the video teacher's token grid is the student's")
    a("--video_distillation_target_dim", type=int, default=768,
      help="the video teacher's width (the video decoder's output)")
    a("--video_distill_loss_func", default="SmoothL1", choices=sorted(FEATURE_LOSSES))
    a("--video_teacher_loss_weight", type=float, default=1.0,
      help="0 = no video decoder (the video teacher stays if MMKD's terms need it)")
    a("--norm_feature", action="store_true",
      help="LayerNorm (no affine) of both teachers' features before the loss")
    # what can be combined with MVD's terms
    add_pixel_args(p, "--pixel_decoder_depth", 0)
    add_mmkd_args(p, gamma=0.0, alpha=0.0, beta=0.0)
    add_optim_and_data_args(p, opt_betas=None)
    return p


def _check_width(teacher, dim, model_flag, dim_flag):
    if teacher.embed_dim != dim:
        raise ValueError(f"{dim_flag} {dim} differs from the width {teacher.embed_dim} of "
                         f"{model_flag}")


def build_models(args):
    """The student (MVD's feature decoders for the terms whose weight is not 0, MMKD's
    outputs and the pixel decoder when asked) and the frozen :class:`Teachers`.

    Raises:
        ValueError: a target dim that is not its teacher's width, a teacher whose token grid
            is not the student's, no objective at all; one line each, before training.
        FileNotFoundError: a teacher file that is not there.
    """
    weights = loss_weights(args)
    if args.video_teacher_input_size not in (None, args.input_size):
        # MVD would feed the video teacher the image teacher's crops: another token grid
        raise ValueError(f"--video_teacher_input_size {args.video_teacher_input_size} must equal "
                         f"--input_size {args.input_size}: the video teacher sees the student's "
                         f"clip")
    geometry = dict(img_size=args.input_size, num_frames=args.num_frames)
    video = image = None
    if weights.vid_feat > 0 or weights.uses_mmkd():
        # VideoMAE's table unless the checkpoint stores or records another
        video = create_teacher(args.video_teacher_model, sees_all_tokens=True,
                               flag="--video_teacher_model", pos_embed="sincos_1d", **geometry)
        if args.video_teacher_model_ckpt_path:
            load_teacher(video, args.video_teacher_model_ckpt_path)
        if weights.vid_feat > 0:
            _check_width(video, args.video_distillation_target_dim, "--video_teacher_model",
                         "--video_distillation_target_dim")
    if weights.img_feat > 0:
        image = create_image_teacher(args.image_teacher_model, args.teacher_input_size)
        if args.image_teacher_model_ckpt_path:
            load_image_teacher(image, args.image_teacher_model_ckpt_path)
        _check_width(image, args.distillation_target_dim, "--image_teacher_model",
                     "--distillation_target_dim")
    if video is None and image is None and args.decoder_depth == 0:
        raise ValueError("no objective: --image_teacher_loss_weight and "
                         "--video_teacher_loss_weight are 0, no MMKD term and no pixel decoder")
    feature_dims = {name: dim for name, w, dim in (
        ("img_feat", weights.img_feat, args.distillation_target_dim),
        ("vid_feat", weights.vid_feat, args.video_distillation_target_dim)) if w > 0}
    kd = {}
    if weights.uses_mmkd():
        kd = mmkd_student_kwargs(args, ARCHS[MVD_STUDENT_MODELS[args.model]]["embed_dim"],
                                 video.embed_dim, weights.views())
    student = create_student(args.model, decoder_depth=args.decoder_depth,
                             feature_dims=feature_dims, feat_decoder_depth=args.feat_decoder_depth,
                             feat_decoder_embed_dim=args.feat_decoder_embed_dim,
                             feat_decoder_num_heads=args.feat_decoder_num_heads,
                             drop_path_rate=args.drop_path, use_checkpoint=args.use_checkpoint,
                             pos_embed=args.pos_embed, **kd, **geometry)
    grid = student.patch_embed.grid_size
    if video is not None and video.patch_embed.grid_size != grid:
        raise ValueError(f"student token grid {grid} differs from the video teacher's "
                         f"{video.patch_embed.grid_size} (--model vs --video_teacher_model)")
    if image is not None and image.grid_size != grid[1:]:
        raise ValueError(f"the image teacher sees {image.grid_size[0]}x{image.grid_size[1]} "
                         f"patches per frame (--teacher_input_size {args.teacher_input_size}, "
                         f"{args.image_teacher_model}), the student {grid[1]}x{grid[2]} "
                         f"(--input_size {args.input_size})")
    for name, teacher, path in (
            (args.video_teacher_model, video, args.video_teacher_model_ckpt_path),
            (args.image_teacher_model, image, args.image_teacher_model_ckpt_path)):
        if teacher is not None:
            print(f"teacher {name} (frozen, whole clip"
                  f"{', first frame of every tubelet' if teacher is image else ''}) from "
                  f"{path or 'random initialisation'}")
    return student, Teachers(video, image, video_targets=weights.vid_feat > 0)


if __name__ == "__main__":
    main(get_args_parser().parse_args(), build=build_models)
