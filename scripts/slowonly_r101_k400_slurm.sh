#!/usr/bin/env bash
#SBATCH --job-name=slowonly_r101_k400
#SBATCH --nodes=4 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# Slow-only ResNet-101 (TPN's baseline) on Kinetics-400 from ImageNet weights, FxS = FXS (8x8, 16x4 or 32x2), fully convolutional 10x3 test with flip.
# Usage: [FXS=16x4] [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=32] {sbatch [sbatch options] | bash} scripts/slowonly_r101_k400_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, IMAGENET_INIT (torchvision's resnet101 weights); launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${FXS:=8x8}"
fxs_flags "$FXS"
: "${DATA_PATH:=data/k400}" "${OUTPUT_DIR:=output/slowonly_r101_k400_$FXS}" \
  "${IMAGENET_INIT:=pretrained/resnet101-63fe2227.pth}"
export RECIPE="slowonly_r101_k400_$FXS"
GPUS="${GPUS:-32}" JOB_NAME="${JOB_NAME:-slowonly_r101_k400_$FXS}" exec "$LAUNCH" run_class_finetuning.py \
  "${TPN_RECIPE[@]}" "${TPN_K400[@]}" "${FXS_FLAGS[@]}" --model slowonly_r101 \
  --imagenet_init "$IMAGENET_INIT" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" \
  --log_dir "$OUTPUT_DIR" "$@"
