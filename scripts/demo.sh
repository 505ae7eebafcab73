#!/usr/bin/env bash
# The README's main command: install into .venv/ (reused when present), then on the bundled
# real clips (tests/data/videos):
#   1. pre-train a small teacher (ViT-S) with VideoMAE's pixel objective;
#   2. distil a ViT-Ti student from it with MMKD (--distill hybrid);
#   3. distil another ViT-Ti with MVD: feature decoders predicting, at the hidden positions,
#      the teacher's features of the whole clip (video teacher) and those of an image teacher
#      made from the same ViT-S (tools/image_teacher_from_video.py) on each tubelet's first frame;
#   4. fine-tune the MMKD student on a small labelled set cut from the same clips and run the
#      multi-view test (5 clips x 3 crops), printing Top-1 / Top-5;
#   5. frozen-feature probes (k-NN and linear, run_frozen_eval.py) of a random encoder, the
#      teacher and both students on that labelled set, printed as one table; the MMKD stage
#      also runs the online k-NN every 10 epochs (--knn_eval_freq) on it;
#   6. draw training curves and attention visualisations.
# Sizes are scaled down (8 frames, 112 px) so it all runs on a 2-core CPU.
# Usage: bash scripts/demo.sh   (OUT=dir to change the output directory, default demo_output;
#        MVD_EPOCHS=0 leaves out stage 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements.txt
OUT="${OUT:-demo_output}"
# Same seed, same numbers on the same CPU model, loaded or not: every item is drawn from
# (seed, epoch, index) and the CPU thread count is fixed (reproducibility.py). Another CPU
# model (e.g. AVX-512 against AVX2 only) may run other float kernels and give other, equally
# valid numbers; the demo prints the CPU it ran on.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_DYNAMIC="${MKL_DYNAMIC:-FALSE}" \
  OMP_DYNAMIC="${OMP_DYNAMIC:-FALSE}"
VIDEOS=tests/data/videos
DEVICE="${DEVICE:-cpu}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-20}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-20}"
MVD_EPOCHS="${MVD_EPOCHS:-10}"
mkdir -p "$OUT/data"
START=$(date +%s)
echo "[demo] CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, \
$(grep -o -w -E 'avx512_bf16|amx_bf16|avx512f|avx2' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')\
threads ${OMP_NUM_THREADS}"

# Pre-training list: every bundled clip (the corrupted one too: it is skipped and counted),
# each listed 4 times so an epoch sees several random windows and crops of it.
: > "$OUT/data/pretrain.csv"
for rep in 1 2 3 4; do
  for f in arm_wrestling_demo.mp4 ava_style_demo.mp4 flipping_a_pancake.mkv kinetics_clip_test.avi \
           kinetics_clip_test.mp4 ntu_rgbd_S001C001P001R001A001_rgb.avi short_clip_part0.mp4 corrupted_h264.mp4; do
    echo "$f 0" >> "$OUT/data/pretrain.csv"
  done
done
# The labelled set (stage 4, 5 and the online k-NN): one class per source clip
# (ava_style_demo and short_clip_part0 are cut from the same footage as two others, so they
# are left out): 4 training windows from the first 60 % of each video, 2 test windows from
# the last 40 %.
python tools/make_demo_splits.py "$VIDEOS/arm_wrestling_demo.mp4" "$VIDEOS/flipping_a_pancake.mkv" \
  "$VIDEOS/kinetics_clip_test.avi" "$VIDEOS/kinetics_clip_test.mp4" \
  "$VIDEOS/ntu_rgbd_S001C001P001R001A001_rgb.avi" --out_dir "$OUT/data/finetune"
for split in train test; do  # absolute paths: the pre-training's --data_root is $VIDEOS
  sed "s|^|$(cd "$OUT/data/finetune" && pwd)/|" "$OUT/data/finetune/$split.csv" > "$OUT/data/knn_$split.csv"
done
COMMON=(--data_path "$OUT/data/pretrain.csv" --data_root "$VIDEOS" --input_size 112 --num_frames 8
        --sampling_rate 4 --batch_size 8 --num_workers 2 --device "$DEVICE" --save_ckpt_freq 10
        --warmup_epochs 2 --opt_betas 0.9 0.95 --weight_decay 0.05 --no-auto_resume)

echo "== 1/6 teacher: VideoMAE pixel pre-training of ViT-S ($TEACHER_EPOCHS epochs) =="
python run_mae_pretraining.py "${COMMON[@]}" --model pretrain_videomae_small_patch16_224 \
  --decoder_depth 2 --mask_ratio 0.75 --epochs "$TEACHER_EPOCHS" --lr 1.5e-2 --min_lr 1e-4 \
  --output_dir "$OUT/teacher" --log_dir "$OUT/teacher/tb"
TEACHER="$OUT/teacher/checkpoint-$((TEACHER_EPOCHS - 1)).pth"

echo "== 2/6 student: MMKD distillation ViT-S -> ViT-Ti, --distill hybrid ($STUDENT_EPOCHS epochs) =="
python run_mmkd_pretraining.py "${COMMON[@]}" --model pretrain_videomae_tiny_patch16_224 \
  --model_t pretrain_videomae_small_patch16_224 --path_t "$TEACHER" --distill hybrid \
  --mask_type tube --mask_ratio 0.75 --num_k 10 --num_f 10 --gamma 0.1 --alpha 0.1 --beta 1 \
  --beta_kd1 0.1 --beta_kd2 3 --epochs "$STUDENT_EPOCHS" --lr 1.5e-2 --min_lr 1e-4 \
  --knn_eval_freq 10 --knn_train_list "$OUT/data/knn_train.csv" --knn_val_list "$OUT/data/knn_test.csv" \
  --output_dir "$OUT/student" --log_dir "$OUT/student/tb"
STUDENT="$OUT/student/checkpoint-$((STUDENT_EPOCHS - 1)).pth"
loss_drop() {  # LOG.json TERM...: the first and last epoch's total loss and terms
  python - "$@" <<'PY'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
a, b = log[0], log[-1]
for k in ["loss", *sys.argv[2:]]:
    print(f"distillation {k}: epoch {a['epoch']} {a['train_' + k]:.4f} -> epoch {b['epoch']} "
          f"{b['train_' + k]:.4f} ({100 * (1 - b['train_' + k] / a['train_' + k]):.1f}% lower)")
PY
}
loss_drop "$OUT/student/log.json"

if [ "$MVD_EPOCHS" -gt 0 ]; then
  echo "== 3/6 MVD distillation: video and image teachers (ViT-S) -> ViT-Ti ($MVD_EPOCHS epochs) =="
  python tools/image_teacher_from_video.py "$TEACHER" "$OUT/teacher/image_teacher.pth"
  python run_mvd_pretraining.py "${COMMON[@]}" --model pretrain_masked_video_student_tiny_patch16_224 \
    --video_teacher_model pretrain_videomae_teacher_small_patch16_224 \
    --video_teacher_model_ckpt_path "$TEACHER" --video_distillation_target_dim 384 \
    --image_teacher_model mae_teacher_vit_small_patch16 --teacher_input_size 112 \
    --image_teacher_model_ckpt_path "$OUT/teacher/image_teacher.pth" --distillation_target_dim 384 \
    --mask_type tube --mask_ratio 0.75 --decoder_depth 2 --epochs "$MVD_EPOCHS" --lr 1.5e-2 \
    --min_lr 1e-4 --output_dir "$OUT/mvd" --log_dir "$OUT/mvd/tb"
  loss_drop "$OUT/mvd/log.json" img_feat vid_feat
fi
echo "pre-training stages took $(( $(date +%s) - START )) s"

echo "== 4/6 fine-tune the distilled student, then the multi-view test (5 clips x 3 crops) =="
python run_class_finetuning.py --model vit_tiny_patch16_224 --finetune "$STUDENT" \
  --data_set UCF101 --nb_classes 5 --data_path "$OUT/data/finetune" --data_root "$OUT/data/finetune" \
  --input_size 112 --short_side_size 112 --num_frames 8 --sampling_rate 2 --batch_size 4 \
  --num_sample 2 --epochs "${FINETUNE_EPOCHS:-15}" --warmup_epochs 2 --lr 5e-2 --min_lr 1e-4 \
  --warmup_lr 1e-4 --layer_decay 0.75 --test_num_segment 5 --test_num_crop 3 --num_workers 2 \
  --device "$DEVICE" --save_ckpt_freq 100 --output_dir "$OUT/finetune" --log_dir "$OUT/finetune/tb" \
  --no-auto_resume
python - "$OUT/finetune/test_summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"multi-view test: Top-1 {s['top1']:.1f} / Top-5 {s['top5']:.1f} over {s['num_videos']} "
      f"held-out videos, {s['num_views']} views (chance Top-1 = 20.0 with 5 classes; Top-5 is "
      f"trivially 100 with 5 classes)")
PY

echo "== 5/6 frozen-feature probes: k-NN and linear on the labelled set (5 clips x 3 crops) =="
PROBE_START=$(date +%s)
ENCODERS=(--encoder random pretrain_videomae_tiny_patch16_224 ""
          --encoder "pixel teacher (ViT-S)" pretrain_videomae_small_patch16_224 "$TEACHER"
          --encoder "MMKD student" pretrain_videomae_tiny_patch16_224 "$STUDENT")
[ "$MVD_EPOCHS" -gt 0 ] && ENCODERS+=(--encoder "MVD student" pretrain_videomae_tiny_patch16_224 \
  "$OUT/mvd/checkpoint-$((MVD_EPOCHS - 1)).pth")
# the 20 training features are one batch: --lr 80 gives MAE's per-step lr (0.1 x 16384 / 256)
python tools/probe_table.py --out_dir "$OUT/probes" "${ENCODERS[@]}" -- \
  --data_set UCF101 --nb_classes 5 --data_path "$OUT/data/finetune" --data_root "$OUT/data/finetune" \
  --input_size 112 --short_side_size 112 --num_frames 8 --sampling_rate 2 --test_num_segment 5 \
  --test_num_crop 3 --lr 80 --num_workers 2 --device "$DEVICE"
echo "probe stage took $(( $(date +%s) - PROBE_START )) s (chance Top-1 = 20.0 with 5 classes)"

echo "== 6/6 training curves and what teacher and student attend to =="
python tools/plot_curves.py "$OUT/teacher" "$OUT/curves/teacher"
python tools/plot_curves.py "$OUT/student" "$OUT/curves/student"
[ "$MVD_EPOCHS" -gt 0 ] && python tools/plot_curves.py "$OUT/mvd" "$OUT/curves/mvd"
python tools/plot_curves.py "$OUT/finetune" "$OUT/curves/finetune"
bash scripts/vis_kd.sh "$VIDEOS/arm_wrestling_demo.mp4" "$OUT/vis" "$STUDENT" "$TEACHER" \
  --model pretrain_videomae_tiny_patch16_224 --model_t pretrain_videomae_small_patch16_224 \
  --input_size 112 --num_frames 8 --mask_ratio 0.75 --num_k 10 --idx 25 --idx_f 1
echo "demo done in $(( $(date +%s) - START )) s; outputs in $OUT/ (curves/, vis/, finetune/predictions.csv)"
