#!/usr/bin/env bash
# MVD distillation on Kinetics-400: ViT-S student, ImageMAE ViT-L and VideoMAE ViT-L (K400, 1600 epochs) teachers
# (published: ruiwang2021/mvd scripts/mvd_vit_small_from_vit_large_teacher_epoch_400/pretrain_mvd_small_on_k400.sh).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=32] bash scripts/mvd_small_from_large_k400_slurm.sh [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, IMAGE_TEACHER_PATH, VIDEO_TEACHER_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
: "${DATA_PATH:=data/k400/train.csv}" "${OUTPUT_DIR:=output/mvd_small_from_large_k400}" \
  "${IMAGE_TEACHER_PATH:=checkpoints/mae_pretrain_vit_large.pth}" \
  "${VIDEO_TEACHER_PATH:=checkpoints/videomae_large_k400_1600e.pth}"
export RECIPE=mvd_small_from_large_k400
GPUS="${GPUS:-32}" JOB_NAME="${JOB_NAME:-mvd_small_from_large_k400}" exec "$LAUNCH" run_mvd_pretraining.py \
  "${MVD_RECIPE[@]}" "${MVD_FROM_LARGE[@]}" "${MVD_SMALL[@]}" \
  --image_teacher_model_ckpt_path "$IMAGE_TEACHER_PATH" --video_teacher_model_ckpt_path "$VIDEO_TEACHER_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
