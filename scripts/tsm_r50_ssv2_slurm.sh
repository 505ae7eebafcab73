#!/usr/bin/env bash
#SBATCH --job-name=tsm_r50_ssv2
#SBATCH --nodes=4 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=10
#SBATCH --requeue --open-mode=append --signal=USR1@180
# TSM ResNet-50 (TPN's baseline) on Something-Something V2 from ImageNet weights, 8 segments, fully convolutional 2x3 test.
# Usage: [LAUNCHER=torchrun] [DRY_RUN=1] [PARTITION=...] [GPUS=32] {sbatch [sbatch options] | bash} scripts/tsm_r50_ssv2_slurm.sh [JOB_NAME] [extra flags]
# Paths from the environment: DATA_PATH, OUTPUT_DIR, IMAGENET_INIT (torchvision's resnet50 weights); launcher settings: see scripts/launch.sh.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"  # sbatch runs a copy in its spool directory
[ -f "$HERE/recipes.sh" ] || HERE="${SLURM_SUBMIT_DIR:-.}/scripts"
source "$HERE/recipes.sh" 2>/dev/null \
  || { echo "$0: cannot find $HERE/recipes.sh: run sbatch from the repository root" >&2; exit 2; }
: "${DATA_PATH:=data/ssv2}" "${OUTPUT_DIR:=output/tsm_r50_ssv2}" \
  "${IMAGENET_INIT:=pretrained/resnet50-0676ba61.pth}"
export RECIPE=tsm_r50_ssv2
GPUS="${GPUS:-32}" JOB_NAME="${JOB_NAME:-tsm_r50_ssv2}" exec "$LAUNCH" run_class_finetuning.py \
  "${TPN_RECIPE[@]}" "${TPN_SS[@]}" --data_set SSV2 --model tsm_r50 \
  --imagenet_init "$IMAGENET_INIT" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" \
  --log_dir "$OUTPUT_DIR" "$@"
