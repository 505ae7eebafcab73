#!/usr/bin/env bash
#SBATCH --job-name=mvd_base_from_base_k400
#SBATCH --nodes=4 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# MVD distillation on Kinetics-400: ViT-B student, ImageMAE ViT-B and VideoMAE ViT-B (K400, 1600 epochs) teachers
# (published: ruiwang2021/mvd scripts/mvd_vit_base_from_vit_base_teacher_epoch_400/pretrain_mvd_base_on_k400.sh).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=32] {sbatch [sbatch options] | bash} scripts/mvd_base_from_base_k400_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, IMAGE_TEACHER_PATH, VIDEO_TEACHER_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/k400/train.csv}" "${OUTPUT_DIR:=output/mvd_base_from_base_k400}" \
  "${IMAGE_TEACHER_PATH:=checkpoints/mae_pretrain_vit_base.pth}" \
  "${VIDEO_TEACHER_PATH:=checkpoints/videomae_base_k400_1600e.pth}"
export RECIPE=mvd_base_from_base_k400
GPUS="${GPUS:-32}" JOB_NAME="${JOB_NAME:-mvd_base_from_base_k400}" exec "$LAUNCH" run_mvd_pretraining.py \
  "${MVD_RECIPE[@]}" "${MVD_FROM_BASE[@]}" "${MVD_BASE[@]}" \
  --image_teacher_model_ckpt_path "$IMAGE_TEACHER_PATH" --video_teacher_model_ckpt_path "$VIDEO_TEACHER_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
