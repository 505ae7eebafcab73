#!/usr/bin/env bash
# Fine-tuning and 16x5x3 test of a distilled ViT-B on HMDB51 (MODEL_PATH: its pre-trained checkpoint, e.g. from kd_base_k400_slurm.sh).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=4] bash scripts/finetune_base_hmdb_slurm.sh [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, MODEL_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
: "${DATA_PATH:=data/hmdb51}" "${OUTPUT_DIR:=output/finetune_base_hmdb}" \
  "${MODEL_PATH:=output/kd_base_k400/checkpoint-399.pth}"
export RECIPE=finetune_base_hmdb
GPUS="${GPUS:-4}" JOB_NAME="${JOB_NAME:-finetune_base_hmdb}" exec "$LAUNCH" run_class_finetuning.py \
  "${FT_RECIPE[@]}" "${FT_BASE[@]}" "${FT_HMDB[@]}" --finetune "$MODEL_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
