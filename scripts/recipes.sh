# Hyper-parameters of the model-zoo launch scripts (sourced, not run). Each MMKD configuration
# reproduces the published MMKD launch script of the same name (xiaojieli0903/MaskAgain,
# scripts/*_slurm.sh), each MVD one the published MVD script named in its comment: the flags
# it passes, and its parser's defaults for the flags it does not pass; the deliberate differences are marked "differs:". tests/test_scripts.py checks every
# script's dry run against those values and against METHOD.md's recipe. Flags given later on
# a command line (a script's own, then its "$@") override these (argparse keeps the last).

# MMKD distillation (METHOD.md, "The MMKD objective"): 64 clips per GPU, warm-up 40, AdamW
# (0.9, 0.95), wd 0.05, cosine to min lr 1e-5 per 256 clips, tube masking, teacher = VideoMAE
# ViT-B, which sees the visible tokens only.
KD_RECIPE=(
  --model_t pretrain_videomae_base_patch16_224 --distill hybrid --mask_type tube
  --num_k 10 --num_f 10 --kd_T 1
  --batch_size 64 --warmup_epochs 40 --min_lr 1e-5
  --opt adamw --opt_betas 0.9 0.95 --weight_decay 0.05
  --num_frames 16 --sampling_rate 4 --input_size 224
)
# Kinetics-400, 8 GPUs: mask 0.9, 400 epochs, lr 1.5e-4 per 256.
KD_K400=(--mask_ratio 0.9 --epochs 400 --lr 1.5e-4 --save_ckpt_freq 20)
# UCF101 without extra data, 4 GPUs (the published scripts' default): mask 0.75, lr 3e-4 per
# 256. differs: 100 epochs, as METHOD.md states for UCF101 distillation (the published SLURM
# scripts pass 400), and a checkpoint every 20 (theirs: every 100 of 400).
KD_UCF=(--mask_ratio 0.75 --epochs 100 --lr 3e-4 --save_ckpt_freq 20)
# Students and their loss weights (METHOD.md table). ViT-S is the public code's run_kd.py,
# which trains a teacher-side Linear on the teacher's attention outputs (--teacher_proj).
KD_SMALL=(--model pretrain_videomae_small_patch16_224 --drop_path 0.1 --teacher_proj
          --gamma 0.1 --alpha 0.1 --beta 1 --beta_kd1 0.1 --beta_kd2 3)
KD_BASE=(--model pretrain_videomae_base_patch16_224 --drop_path 0.1
         --gamma 0.2 --alpha 0.1 --beta 1 --beta_kd1 3 --beta_kd2 1)
# what the published UCF101 scripts change in them
KD_SMALL_UCF=(--beta_kd1 1)
KD_BASE_UCF=(--gamma 0.1 --drop_path 0)

# Fine-tuning (METHOD.md, "Fine-tuning and evaluation"): 32 clips per GPU with activation
# checkpointing, AdamW (0.9, 0.999), wd 0.05, warm-up 5, min lr 1e-5 per 256, smoothing 0.1,
# mixup 0.8 / cutmix 1.0, RandAugment, random erasing 0.25, repeated augmentation 2, 16 frames,
# 3 test crops. differs: no --enable_deepspeed (the published scripts train through
# DeepSpeed; torch AMP with DDP takes the same steps, and the flag is there to turn it on).
FT_RECIPE=(
  --batch_size 32 --use_checkpoint --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05
  --warmup_epochs 5 --min_lr 1e-5 --smoothing 0.1 --mixup 0.8 --cutmix 1.0
  --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 --num_sample 2
  --num_frames 16 --input_size 224 --short_side_size 224 --test_num_crop 3 --dist_eval
)
FT_SMALL=(--model vit_small_patch16_224)
FT_BASE=(--model vit_base_patch16_224)
# Kinetics-400, 8 GPUs (METHOD.md's recipe): layer decay 0.75, lr 1e-3 per 256, drop_path 0.1,
# 16x4 frames, 5 test clips; ViT-S 150 epochs, ViT-B 75.
FT_K400=(--data_set Kinetics-400 --nb_classes 400 --layer_decay 0.75 --lr 1e-3 --warmup_lr 1e-6
         --drop_path 0.1 --fc_drop_rate 0 --sampling_rate 4 --test_num_segment 5
         --save_ckpt_freq 10)
FT_K400_SMALL=(--epochs 150)
FT_K400_BASE=(--epochs 75)
# UCF101 and HMDB51, 4 GPUs (the published scripts): layer decay 0.7, drop_path 0.2, dropout
# 0.5 before the head.
FT_UCF=(--data_set UCF101 --nb_classes 101 --epochs 100 --layer_decay 0.7 --lr 5e-4
        --warmup_lr 1e-8 --drop_path 0.2 --fc_drop_rate 0.5 --sampling_rate 4
        --test_num_segment 5 --save_ckpt_freq 50)
FT_HMDB=(--data_set HMDB51 --nb_classes 51 --epochs 50 --layer_decay 0.7 --lr 1e-3
         --warmup_lr 1e-6 --drop_path 0.2 --fc_drop_rate 0.5 --sampling_rate 4
         --test_num_segment 5 --save_ckpt_freq 10)
# ViT-S on HMDB51: frames 2 apart, 10 test clips
FT_HMDB_SMALL=(--sampling_rate 2 --test_num_segment 10)

# MVD distillation (METHOD.md, "MVD exactly"; each reproduces the published MVD script
# ruiwang2021/mvd scripts/mvd_vit_<student>_from_vit_<teacher>_teacher_epoch_400/
# pretrain_mvd_<student>_on_k400.sh: its flags and its parser's defaults): Kinetics-400 on 32
# GPUs, tube mask 0.9, 16x4 frames, AdamW (0.9, 0.95), lr 1.5e-4 per 256 with min lr 1e-4,
# warm-up 40, 401 epochs (fine-tuning starts from checkpoint-399), drop_path 0.1, feature
# decoders 2 deep, SmoothL1 on raw targets for both teachers (weights 1 and 1).
MVD_RECIPE=(
  --mask_type tube --mask_ratio 0.9 --decoder_depth 2
  --distill_loss_func SmoothL1 --video_distill_loss_func SmoothL1
  --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --min_lr 1e-4 --warmup_epochs 40 --epochs 401
  --drop_path 0.1 --num_frames 16 --sampling_rate 4 --save_ckpt_freq 10
)
# the teachers: MAE's ImageNet ViT and VideoMAE's K400 ViT (1600 epochs) of one size
MVD_FROM_BASE=(--image_teacher_model mae_teacher_vit_base_patch16 --distillation_target_dim 768
               --video_teacher_model pretrain_videomae_teacher_base_patch16_224
               --video_distillation_target_dim 768)
MVD_FROM_LARGE=(--image_teacher_model mae_teacher_vit_large_patch16 --distillation_target_dim 1024
                --video_teacher_model pretrain_videomae_teacher_large_patch16_224
                --video_distillation_target_dim 1024)
# students: 16 clips x 2 accumulation per GPU (ViT-B from ViT-L: 8 x 4), 1024 in all
MVD_SMALL=(--model pretrain_masked_video_student_small_patch16_224 --batch_size 16 --update_freq 2)
MVD_BASE=(--model pretrain_masked_video_student_base_patch16_224 --batch_size 16 --update_freq 2)
MVD_BASE_FROM_LARGE=(--batch_size 8 --update_freq 4)
# ViT-L from ViT-L teachers (mvd_vit_large_from_vit_large_teacher_epoch_{400,800}) and ViT-H
# from ViT-H teachers (mvd_vit_huge_from_vit_huge_teacher_epoch_800): 8 clips x 2 accumulation
# per GPU, feature decoders 4 deep, 512 wide (ViT-H: 8 deep, 640 wide, drop_path 0.2,
# activation checkpointing), 8 heads; the 800-epoch scripts pass no --min_lr (their parser's
# 1e-5). ViT-H's image teacher is MAE's ViT-H/14 on 196 px frames (the student's 14 x 14 grid).
MVD_LARGE=(--model pretrain_masked_video_student_large_patch16_224 --batch_size 8 --update_freq 2
           --decoder_depth 4 --feat_decoder_embed_dim 512 --feat_decoder_num_heads 8)
MVD_HUGE=(--model pretrain_masked_video_student_huge_patch16_224 --batch_size 8 --update_freq 2
          --decoder_depth 8 --feat_decoder_embed_dim 640 --feat_decoder_num_heads 8
          --drop_path 0.2 --use_checkpoint)
MVD_FROM_HUGE=(--image_teacher_model mae_teacher_vit_huge_patch14 --teacher_input_size 196
               --distillation_target_dim 1280
               --video_teacher_model pretrain_videomae_teacher_huge_patch16_224
               --video_teacher_input_size 224 --video_distillation_target_dim 1280)
MVD_800=(--epochs 801 --min_lr 1e-5)

# Fine-tuning of MVD students (the published finetune_on_{k400,ssv2}.sh and their parser's
# defaults): AdamW (0.9, 0.999), wd 0.05, layer decay 0.75, warm-up 5, min lr 1e-6 per 256,
# drop_path 0.1, smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment, random erasing 0.25,
# repeated augmentation 2, 16 frames, 3 test crops; the 3-D table (which MVD's pre-training
# files store and ours record, so the flag only says so). differs: no --enable_deepspeed, as
# for MMKD's fine-tuning.
FT_MVD_RECIPE=(
  --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --layer_decay 0.75 --warmup_epochs 5
  --warmup_lr 1e-6 --min_lr 1e-6 --drop_path 0.1 --fc_drop_rate 0 --smoothing 0.1 --mixup 0.8
  --cutmix 1.0 --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 --num_sample 2 --num_frames 16
  --input_size 224 --short_side_size 224 --test_num_crop 3 --save_ckpt_freq 5 --dist_eval
  --pos_embed sincos_3d
)
# Kinetics-400: dense 16x4, 5 x 3 test views, lr 5e-4 per 256; ViT-S 12 x 2 clips per GPU on
# 16 GPUs for 150 epochs, ViT-B 6 x 2 on 32 GPUs for 75.
FT_MVD_K400=(--data_set Kinetics-400 --nb_classes 400 --sampling_rate 4 --test_num_segment 5
             --lr 5e-4)
FT_MVD_K400_SMALL=(--model vit_small_patch16_224 --batch_size 12 --update_freq 2 --epochs 150)
FT_MVD_K400_BASE=(--model vit_base_patch16_224 --batch_size 6 --update_freq 2 --epochs 75)
# ViT-L and ViT-H (both data sets): dropout 0.5 before the head, drop_path 0.3, activation
# checkpointing; K400 lr 1e-3 for 50 epochs, ViT-L 16 clips per GPU (the 400-epoch model's
# script accumulates 2 x 8 without checkpointing: the same 16 clips per update), ViT-H 8.
FT_MVD_LARGE_HUGE=(--fc_drop_rate 0.5 --drop_path 0.3 --use_checkpoint)
FT_MVD_K400_LARGE=(--model vit_large_patch16_224 --batch_size 16 --update_freq 1 --lr 1e-3
                   --epochs 50)
FT_MVD_K400_HUGE=(--model vit_huge_patch16_224 --batch_size 8 --update_freq 1 --lr 1e-3
                  --epochs 50)
# Something-Something V2: TSN sampling of 16 segments, no flip (DATA_SETS["SSV2"]), 2 x 3 test
# views; ViT-S 12 clips per GPU on 32 GPUs, lr 1e-3, layer decay 0.7, 40 epochs; ViT-B 24 on
# 16 GPUs (384 in all), lr 5e-4, 30 epochs, activation checkpointing.
FT_MVD_SSV2=(--data_set SSV2 --nb_classes 174 --test_num_segment 2)
FT_MVD_SSV2_SMALL=(--model vit_small_patch16_224 --batch_size 12 --update_freq 1 --lr 1e-3
                   --layer_decay 0.7 --epochs 40)
FT_MVD_SSV2_BASE=(--model vit_base_patch16_224 --batch_size 24 --update_freq 1 --lr 5e-4
                  --epochs 30 --use_checkpoint)
# ViT-L 16 clips per GPU, ViT-H 8 with min lr 1e-5; lr 5e-4, 30 epochs
FT_MVD_SSV2_LARGE=(--model vit_large_patch16_224 --batch_size 16 --update_freq 1 --lr 5e-4
                   --epochs 30)
FT_MVD_SSV2_HUGE=(--model vit_huge_patch16_224 --batch_size 8 --update_freq 1 --lr 5e-4
                  --min_lr 1e-5 --epochs 30)

# the shared launcher (srun / torchrun, DRY_RUN): see launch.sh
LAUNCH="$(dirname "${BASH_SOURCE[0]}")/launch.sh"
# the public scripts' convention: scripts/X_slurm.sh JOB_NAME [flags] (a first argument that
# is not a flag); sourced without arguments, this shifts the calling script's own arguments
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  JOB_NAME="$1"
  shift
fi

# TPN (METHOD.md "TPN exactly"; decisionforce/TPN's config_files): SGD with Nesterov momentum
# 0.9, lr 0.01 per 256 clips (8 clips x 32 GPUs, the scripts' default GPUS), x0.1 at epochs 75
# and 125, 150 epochs, no warm-up, dropout 0.5 and the auxiliary loss 0.5 (both in the
# model), weight decay on every parameter; no Mixup/CutMix, RandAugment, random erasing,
# label smoothing or repeated augmentation. Backbone from torchvision's ImageNet ResNet
# (IMAGENET_INIT). Test fully convolutional on 3 crops of the whole short side 256.
TPN_RECIPE=(
  --opt sgd --momentum 0.9 --lr 0.01 --sched multistep --decay_milestones 75 125
  --decay_rate 0.1 --epochs 150 --warmup_epochs 0 --batch_size 8 --layer_decay 1
  --drop_path 0 --smoothing 0 --mixup 0 --cutmix 0 --aa none --reprob 0 --num_sample 1
  --input_size 224 --short_side_size 256 --fcn_test --test_num_crop 3 --dist_eval
  --save_ckpt_freq 5
)
# Kinetics-400: dense FxS sampling, wd 1e-4, clip 40; test 10 clips x 3 crops + flip
TPN_K400=(--data_set Kinetics-400 --nb_classes 400 --weight_decay 1e-4 --clip_grad 40
          --test_num_segment 10 --test_flip)
# Something-Something V1/V2: TSM on 8 TSN segments with TPN's in-place shift (its default
# tsm_position: each stage's projection shortcut sees the shifted input), wd 5e-4, clip 20;
# test 16 frames as 2 clips of 8 (TSN's 2 test views: the frames ::2 and 1::2) x 3 crops
TPN_SS=(--nb_classes 174 --num_frames 8 --tsm_shift inplace --weight_decay 5e-4 --clip_grad 20
        --test_num_segment 2)

# FXS=FxS (frames x sampling rate) of the Kinetics runs -> FXS_FLAGS; 16x4 and 32x2 with
# activation checkpointing, as TPN's configs (with_cp)
fxs_flags() {
  case "$1" in
    8x8) FXS_FLAGS=(--num_frames 8 --sampling_rate 8) ;;
    16x4) FXS_FLAGS=(--num_frames 16 --sampling_rate 4 --use_checkpoint) ;;
    32x2) FXS_FLAGS=(--num_frames 32 --sampling_rate 2 --use_checkpoint) ;;
    *) echo "FXS must be 8x8, 16x4 or 32x2, got '$1'" >&2
       exit 2 ;;
  esac
}
