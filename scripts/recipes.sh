# Hyper-parameters shared by the per-configuration scripts (sourced, not run). The values are
# METHOD.md's reference recipe unless a comment says otherwise; flags given later on a
# command line (a script's own, then its "$@") override these (argparse keeps the last).

# MMKD distillation, Kinetics-400 recipe: 400 epochs, warm-up 40, AdamW (0.9, 0.95), wd 0.05,
# lr 1.5e-4 per 256 clips (cosine to 1e-5), 64 clips per GPU on 8 GPUs, tube masking,
# teacher = VideoMAE ViT-B, which sees the visible tokens only.
KD_RECIPE=(
  --model_t pretrain_videomae_base_patch16_224 --distill hybrid --mask_type tube
  --num_k 10 --num_f 10 --kd_T 1
  --batch_size 64 --warmup_epochs 40 --lr 1.5e-4 --min_lr 1e-5
  --opt adamw --opt_betas 0.9 0.95 --weight_decay 0.05
  --num_frames 16 --sampling_rate 4 --input_size 224 --save_ckpt_freq 20
)
KD_K400=(--mask_ratio 0.9 --epochs 400)
# UCF101 distillation: mask 0.75, 100 epochs (METHOD.md gives no other change; warm-up stays 40)
KD_UCF=(--mask_ratio 0.75 --epochs 100)
# students and their loss weights (METHOD.md table); drop_path 0.1 for ViT-B
KD_SMALL=(--model pretrain_videomae_small_patch16_224
          --gamma 0.1 --alpha 0.1 --beta 1 --beta_kd1 0.1 --beta_kd2 3)
KD_BASE=(--model pretrain_videomae_base_patch16_224 --drop_path 0.1
         --gamma 0.2 --alpha 0.1 --beta 1 --beta_kd1 3 --beta_kd2 1)

# Fine-tuning (METHOD.md): layer decay 0.75, AdamW, lr 1e-3 per 256, warm-up 5, smoothing 0.1,
# mixup 0.8 / cutmix 1.0, RandAugment, random erasing 0.25, drop_path 0.1, repeated
# augmentation 2, test 16 frames x 5 clips x 3 crops. AdamW betas (0.9, 0.999), wd 0.05 and
# checkpoint frequency are VideoMAE's fine-tuning scripts'.
FT_RECIPE=(
  --layer_decay 0.75 --lr 1e-3 --warmup_epochs 5 --smoothing 0.1 --mixup 0.8 --cutmix 1.0
  --aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25 --drop_path 0.1 --num_sample 2
  --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05
  --num_frames 16 --sampling_rate 4 --input_size 224 --short_side_size 224
  --test_num_segment 5 --test_num_crop 3 --dist_eval --save_ckpt_freq 10
)
# Per-GPU batches and epochs: not in METHOD.md. K400 as VideoMAE's scripts (ViT-S 12 clips,
# 150 epochs; ViT-B 6 clips, 75 epochs); UCF101 100 epochs (VideoMAE's UCF101 script);
# HMDB51 50 epochs (our choice: half of UCF101 for a 2.5x smaller training set).
FT_SMALL=(--model vit_small_patch16_224 --batch_size 12)
FT_BASE=(--model vit_base_patch16_224 --batch_size 6)
FT_K400_SMALL=(--data_set Kinetics-400 --nb_classes 400 --epochs 150)
FT_K400_BASE=(--data_set Kinetics-400 --nb_classes 400 --epochs 75)
FT_UCF=(--data_set UCF101 --nb_classes 101 --epochs 100)
FT_HMDB=(--data_set HMDB51 --nb_classes 51 --epochs 50)

# the shared launcher (srun / torchrun, DRY_RUN): see launch.sh
LAUNCH="$(dirname "${BASH_SOURCE[0]}")/launch.sh"

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
# Something-Something V1/V2: TSM on 8 TSN segments, wd 5e-4, clip 20; test 16 frames as 2
# clips of 8 (TSN's 2 test views: the frames ::2 and 1::2) x 3 crops
TPN_SS=(--nb_classes 174 --num_frames 8 --weight_decay 5e-4 --clip_grad 20 --test_num_segment 2)

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
