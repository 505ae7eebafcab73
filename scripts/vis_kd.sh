#!/usr/bin/env bash
# Draw what MMKD distils on one clip (run_vis.py): the sampled frames (+ GIF), the tube mask,
# the teacher's and the student's global / per-slice attention of one query token with the
# kept top-k entries boxed, and the student's pixel reconstruction when it has a decoder.
#
# Usage: bash scripts/vis_kd.sh VIDEO OUT_DIR [STUDENT_CKPT] [TEACHER_CKPT] [run_vis.py flags]
#   A missing or empty checkpoint argument means random weights. Flags given after the
#   positionals override the defaults below (the last value of a flag wins), e.g.
#   bash scripts/vis_kd.sh tests/data/videos/arm_wrestling_demo.mp4 figs/example "" "" \
#     --model pretrain_videomae_tiny_patch16_224 --model_t pretrain_videomae_small_patch16_224 \
#     --input_size 112 --num_frames 8 --mask_ratio 0.75 --decoder_depth 2
# Defaults: the reference ViT-S student / ViT-B teacher at 16 x 224^2, tube mask 0.9,
# num_k 10, query = the centre patch of temporal slice 3 (moved to the nearest visible one if hidden).
set -euo pipefail
POS=()
while [ $# -gt 0 ] && [[ "$1" != --* ]]; do POS+=("$1"); shift; done
if [ ${#POS[@]} -lt 2 ] || [ ${#POS[@]} -gt 4 ]; then
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# paths as seen from the repo root (setup_env.sh cd's there): relative inside it, else absolute
abs() { [ -z "$1" ] && echo "" || realpath -m --relative-base="$ROOT" "$1"; }
VIDEO=$(abs "${POS[0]}"); OUT=$(abs "${POS[1]}")
STUDENT=$(abs "${POS[2]:-}"); TEACHER=$(abs "${POS[3]:-}")
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements.txt  # cd's to the repo root
python run_vis.py \
  --model pretrain_videomae_small_patch16_224 --model_t pretrain_videomae_base_patch16_224 \
  --path_t "$TEACHER" --mask_type tube --mask_ratio 0.9 --num_k 10 --kd_T 1 \
  --idx_f 3 --input_size 224 --num_frames 16 --sampling_rate 4 --seed 0 \
  --device "${DEVICE:-cpu}" "$@" "$VIDEO" "$OUT" ${STUDENT:+"$STUDENT"}
