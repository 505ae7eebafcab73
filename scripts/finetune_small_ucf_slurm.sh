#!/usr/bin/env bash
#SBATCH --job-name=finetune_small_ucf
#SBATCH --nodes=1 --ntasks-per-node=4 --gres=gpu:4 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# Fine-tuning and 16x5x3 test of a distilled ViT-S on UCF101 (MODEL_PATH: its pre-trained checkpoint, e.g. from kd_small_k400_slurm.sh).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=4] {sbatch [sbatch options] | bash} scripts/finetune_small_ucf_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, MODEL_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/ucf101}" "${OUTPUT_DIR:=output/finetune_small_ucf}" \
  "${MODEL_PATH:=output/kd_small_k400/checkpoint-399.pth}"
export RECIPE=finetune_small_ucf
GPUS="${GPUS:-4}" JOB_NAME="${JOB_NAME:-finetune_small_ucf}" exec "$LAUNCH" run_class_finetuning.py \
  "${FT_RECIPE[@]}" "${FT_SMALL[@]}" "${FT_UCF[@]}" --finetune "$MODEL_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
