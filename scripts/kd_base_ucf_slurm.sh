#!/usr/bin/env bash
#SBATCH --job-name=kd_base_ucf
#SBATCH --nodes=1 --ntasks-per-node=4 --gres=gpu:4 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# MMKD distillation on UCF101 (no extra data): ViT-B student, VideoMAE ViT-B teacher pre-trained on UCF101.
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=4] {sbatch [sbatch options] | bash} scripts/kd_base_ucf_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, TEACHER_PATH; launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/ucf101}" "${OUTPUT_DIR:=output/kd_base_ucf}" \
  "${TEACHER_PATH:=checkpoints/videomae_base_ucf101_3200e.pth}"
export RECIPE=kd_base_ucf
GPUS="${GPUS:-4}" JOB_NAME="${JOB_NAME:-kd_base_ucf}" exec "$LAUNCH" run_mmkd_pretraining.py \
  "${KD_RECIPE[@]}" "${KD_UCF[@]}" "${KD_BASE[@]}" "${KD_BASE_UCF[@]}" --path_t "$TEACHER_PATH" \
  --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR" "$@"
