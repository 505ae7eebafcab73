#!/usr/bin/env bash
# The README's main command: install into .venv/ (reused when present), then on the bundled
# real clips (tests/data/videos):
#   1. pre-train a small teacher (ViT-S) with VideoMAE's pixel objective;
#   2. distil a ViT-Ti student from it with MMKD (--distill hybrid);
#   3. fine-tune the student on a small labelled set cut from the same clips and run the
#      multi-view test (5 clips x 3 crops), printing Top-1 / Top-5;
#   4. draw training curves and attention visualisations.
# Sizes are scaled down (8 frames, 112 px) so it all runs on a 2-core CPU.
# Usage: bash scripts/demo.sh   (OUT=dir to change the output directory, default demo_output)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements.txt
OUT="${OUT:-demo_output}"
VIDEOS=tests/data/videos
DEVICE="${DEVICE:-cpu}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-20}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-20}"
mkdir -p "$OUT/data"
START=$(date +%s)

# Pre-training list: every bundled clip (the corrupted one too: it is skipped and counted),
# each listed 4 times so an epoch sees several random windows and crops of it.
: > "$OUT/data/pretrain.csv"
for rep in 1 2 3 4; do
  for f in arm_wrestling_demo.mp4 ava_style_demo.mp4 flipping_a_pancake.mkv kinetics_clip_test.avi \
           kinetics_clip_test.mp4 ntu_rgbd_S001C001P001R001A001_rgb.avi short_clip_part0.mp4 corrupted_h264.mp4; do
    echo "$f 0" >> "$OUT/data/pretrain.csv"
  done
done
COMMON=(--data_path "$OUT/data/pretrain.csv" --data_root "$VIDEOS" --input_size 112 --num_frames 8
        --sampling_rate 4 --batch_size 8 --num_workers 2 --device "$DEVICE" --save_ckpt_freq 10
        --warmup_epochs 2 --opt_betas 0.9 0.95 --weight_decay 0.05 --no-auto_resume)

echo "== 1/4 teacher: VideoMAE pixel pre-training of ViT-S ($TEACHER_EPOCHS epochs) =="
python run_mae_pretraining.py "${COMMON[@]}" --model pretrain_videomae_small_patch16_224 \
  --decoder_depth 2 --mask_ratio 0.75 --epochs "$TEACHER_EPOCHS" --lr 1.5e-2 --min_lr 1e-4 \
  --output_dir "$OUT/teacher" --log_dir "$OUT/teacher/tb"
TEACHER="$OUT/teacher/checkpoint-$((TEACHER_EPOCHS - 1)).pth"

echo "== 2/4 student: MMKD distillation ViT-S -> ViT-Ti, --distill hybrid ($STUDENT_EPOCHS epochs) =="
python run_mmkd_pretraining.py "${COMMON[@]}" --model pretrain_videomae_tiny_patch16_224 \
  --model_t pretrain_videomae_small_patch16_224 --path_t "$TEACHER" --distill hybrid \
  --mask_type tube --mask_ratio 0.75 --num_k 10 --num_f 10 --gamma 0.1 --alpha 0.1 --beta 1 \
  --beta_kd1 0.1 --beta_kd2 3 --epochs "$STUDENT_EPOCHS" --lr 1.5e-2 --min_lr 1e-4 \
  --output_dir "$OUT/student" --log_dir "$OUT/student/tb"
STUDENT="$OUT/student/checkpoint-$((STUDENT_EPOCHS - 1)).pth"
python - "$OUT/student/log.json" <<'PY'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
a, b = log[0], log[-1]
print(f"distillation loss: epoch {a['epoch']} {a['train_loss']:.4f} -> epoch {b['epoch']} "
      f"{b['train_loss']:.4f} ({100 * (1 - b['train_loss'] / a['train_loss']):.1f}% lower)")
PY
echo "pre-training stages took $(( $(date +%s) - START )) s"
