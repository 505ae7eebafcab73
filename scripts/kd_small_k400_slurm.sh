#!/usr/bin/env bash
# MMKD distillation on Kinetics-400: ViT-S student, VideoMAE ViT-B teacher (K400, 1600 epochs).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=8] bash scripts/kd_small_k400_slurm.sh [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, TEACHER_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
: "${DATA_PATH:=data/k400}" "${OUTPUT_DIR:=output/kd_small_k400}" \
  "${TEACHER_PATH:=checkpoints/videomae_base_k400_1600e.pth}"
export RECIPE=kd_small_k400
JOB_NAME="${JOB_NAME:-kd_small_k400}" exec "$LAUNCH" run_mmkd_pretraining.py \
  "${KD_RECIPE[@]}" "${KD_K400[@]}" "${KD_SMALL[@]}" --path_t "$TEACHER_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
