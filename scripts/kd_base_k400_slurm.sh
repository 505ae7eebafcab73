#!/usr/bin/env bash
#SBATCH --job-name=kd_base_k400
#SBATCH --nodes=1 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# MMKD distillation on Kinetics-400: ViT-B student, VideoMAE ViT-B teacher (K400, 1600 epochs).
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=8] {sbatch [sbatch options] | bash} scripts/kd_base_k400_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, TEACHER_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/k400}" "${OUTPUT_DIR:=output/kd_base_k400}" \
  "${TEACHER_PATH:=checkpoints/videomae_base_k400_1600e.pth}"
export RECIPE=kd_base_k400
JOB_NAME="${JOB_NAME:-kd_base_k400}" exec "$LAUNCH" run_mmkd_pretraining.py \
  "${KD_RECIPE[@]}" "${KD_K400[@]}" "${KD_BASE[@]}" --path_t "$TEACHER_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
