#!/usr/bin/env bash
#SBATCH --job-name=finetune_mvd_base_ssv2
#SBATCH --nodes=2 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# Fine-tuning and 16x2x3 test of an MVD ViT-B on Something-Something V2 (TSN sampling, no flip); MODEL_PATH: its pre-training
# checkpoint from mvd_base_from_base_k400_slurm.sh (the default) or mvd_base_from_large_k400_slurm.sh
# (published: ruiwang2021/mvd scripts/mvd_vit_base_from_vit_{base,large}_teacher_epoch_400/finetune_on_ssv2.sh).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=16] {sbatch [sbatch options] | bash} scripts/finetune_mvd_base_ssv2_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, MODEL_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/ssv2}" "${OUTPUT_DIR:=output/finetune_mvd_base_ssv2}" \
  "${MODEL_PATH:=output/mvd_base_from_base_k400/checkpoint-399.pth}"
export RECIPE=finetune_mvd_base_ssv2
GPUS="${GPUS:-16}" JOB_NAME="${JOB_NAME:-finetune_mvd_base_ssv2}" exec "$LAUNCH" run_class_finetuning.py \
  "${FT_MVD_RECIPE[@]}" "${FT_MVD_SSV2[@]}" "${FT_MVD_SSV2_BASE[@]}" --finetune "$MODEL_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
