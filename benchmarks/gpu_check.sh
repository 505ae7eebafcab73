#!/usr/bin/env bash
# One prepared GPU check: the CUDA paths and the performance figures of this project in one
# short run on a machine with one CUDA GPU. Every part runs under its own time limit, so a
# hang costs that part, not the run; the limits add up to 8 minutes (set-up not counted).
#
#   bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR   # the plan, and the parts a CPU can run at
#                                                    # tiny sizes (CI: tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh OUT_DIR eval torchrun_nccl   # only these parts (a rerun)
#
# Writes OUT_DIR/gpu_check.txt (plan, environment, every part: ok / failed (rc N) / timed out /
# skipped (why), with its figures) and OUT_DIR/gpu_check_logs.txt (each part's whole output).
# Exit status 0 when every part is ok (in the dry run: none failed or timed out).
#
# Set-up: $PYTHON when set; else the first of .venv/bin/python, python3, python that imports
# torch and sees a GPU; else the README's set-up (scripts/setup_env.sh, which needs the package
# index). Wheels in .whl/ (benchmarks/gpu_wheels.sh fetches those a bare PyTorch image lacks,
# for a machine without the package index) are installed first, into a temporary directory
# put on PYTHONPATH. The dry run installs nothing.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

USAGE="usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR [PART ...]"
DRY=0
OUT=""
SELECTED=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg ($USAGE)" >&2; exit 2 ;;
    *) if [ -z "$OUT" ]; then OUT="$arg"; else SELECTED+=("$arg"); fi ;;
  esac
done
[ -n "$OUT" ] || { echo "error: OUT_DIR missing ($USAGE)" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # run outputs, kept out of OUT_DIR
trap 'rm -rf "$WORK"' EXIT
VIDEOS="$ROOT/tests/data/videos"
BUDGET=$((DRY ? 600 : 480))  # seconds for all parts together (each part also has its own limit)
DRY_LIMIT=150  # seconds per part in the dry run (tiny sizes, but a slow or shared CPU)

# ------------------------------------------------------------------------------ the parts
# One entry per part: name, time limit (s), python modules it needs, figures (an extended
# regular expression for the lines of its output that go into the summary), the GPU command,
# and the dry run's command ("- reason": not run in the dry run). Commands run with bash -c;
# $PY is the python the set-up chose. The GPU limits add up to 480 s = 8 minutes.
PARTS=()
declare -A LIMIT NEEDS FIGS GPU_CMD DRY_CMD
part() { PARTS+=("$1"); LIMIT[$1]=$2; NEEDS[$1]=$3; FIGS[$1]=$4; GPU_CMD[$1]=$5; DRY_CMD[$1]=$6; }
CPU="--device cpu --threads 1"
(cd "$VIDEOS" && printf '%s 0\n' *.mp4 *.mkv *.avi) >"$WORK/kd_all.csv"  # the corrupted clip too
printf '%s 0\n' arm_wrestling_demo.mp4 flipping_a_pancake.mkv kinetics_clip_test.mp4 \
  short_clip_part0.mp4 >"$WORK/kd_four.csv"
mkdir -p "$WORK/ft"
printf '%s\n' "arm_wrestling_demo.mp4 0" "flipping_a_pancake.mkv 1" >"$WORK/ft/train.csv"
printf '%s\n' "kinetics_clip_test.mp4 2" "short_clip_part0.mp4 0" >"$WORK/ft/test.csv"
KD_TINY="--model pretrain_videomae_tiny_patch16_224 --model_t pretrain_videomae_tiny_patch16_224 --input_size 32 --num_frames 4 --sampling_rate 2 --mask_ratio 0.5 --num_k 1 --num_f 2"
FT="--data_set UCF101 --nb_classes 3 --data_path $WORK/ft --data_root $VIDEOS --batch_size 2 --epochs 1 --warmup_epochs 0 --test_num_segment 1 --test_num_crop 1"
CKPT="ls -l $WORK/kd/checkpoint-0.pth | sed 's/^/checkpoint: /'"
# DeepSpeed on a CPU JIT-compiles a shared-memory all-reduce (~45 s) that one process does not
# use; the dry run starts the script with that build switched off (as tests/test_deepspeed.py).
NO_SHM="-c \"import importlib, runpy, sys; importlib.import_module('deepspeed.comm.torch').build_shm_op = lambda: None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\""

# the test files that hold tests marked `cuda` (collecting only them keeps an unrelated module's
# import error, e.g. another transformers version, out of this part)
CUDA_TESTS="\$PY -m pytest -m cuda $(cd "$ROOT" && grep -l 'mark\.cuda' tests/test_*.py | tr '\n' ' ')-q -p no:cacheprovider -rfEs --durations=5"
part cuda_tests 150 pytest \
  '^(FAILED|ERROR|SKIPPED)|^[0-9.]+s (call|setup|teardown) |[0-9]+ (passed|failed|skipped|deselected|errors?)' \
  "$CUDA_TESTS" "$CUDA_TESTS"
part mmkd_bf16_vs_fp32 35 "" \
  '^bf16 autocast|^ +(term|loss|hint|relation|global|local|pixel) |^student gradients|bf16 vs float32:' \
  '$PY benchmarks/check_bf16.py' \
  "\$PY benchmarks/check_bf16.py --small $CPU"
part mvd_bf16_vs_fp32 35 "" \
  '^bf16 autocast|^ +(term|loss|img_feat|vid_feat) |^student gradients|bf16 vs float32:' \
  '$PY benchmarks/check_bf16.py --method mvd' \
  "\$PY benchmarks/check_bf16.py --method mvd --small $CPU"
part step_B_B_32 60 "" \
  '^distillation step|^device:|^analytic|baseline:|optimised:|^ratio' \
  '$PY benchmarks/bench_pretrain_step.py --student B --teacher B --batch_size 32' \
  "\$PY benchmarks/bench_pretrain_step.py --small $CPU --iters 1"
part step_S_B_32 40 "" \
  '^distillation step|baseline:|optimised:|^ratio' \
  '$PY benchmarks/bench_pretrain_step.py --student S --teacher B --batch_size 32' \
  "- the same script as step_B_B_32, which runs it at the --small size"
part eval 40 "" \
  '^multi-view evaluation|views/s' \
  '$PY benchmarks/bench_eval.py --models S B tpn_r50 --batch_size 32' \
  "\$PY benchmarks/bench_eval.py --small $CPU --models S --iters 1"
part torchrun_nccl 55 av \
  '^distributed:|^student |^teacher |^effective batch|^epoch 0: loss|^training time|^checkpoint' \
  "\$PY -m torch.distributed.run --standalone --nproc_per_node 1 run_mmkd_pretraining.py --data_path $WORK/kd_all.csv --data_root $VIDEOS --model pretrain_videomae_small_patch16_224 --model_t pretrain_videomae_base_patch16_224 --batch_size 2 --epochs 1 --warmup_epochs 0 --num_workers 4 --device cuda --output_dir $WORK/kd && $CKPT" \
  "\$PY -m torch.distributed.run --standalone --nproc_per_node 1 run_mmkd_pretraining.py --data_path $WORK/kd_four.csv --data_root $VIDEOS $KD_TINY --batch_size 2 --epochs 1 --warmup_epochs 0 --num_workers 0 --device cpu --output_dir $WORK/kd && $CKPT"
part deepspeed_step 65 "deepspeed av" \
  '^vit_|^DeepSpeed|^epoch 0: loss|^multi-view test' \
  "\$PY run_class_finetuning.py --enable_deepspeed --zero_stage 2 --model vit_small_patch16_224 $FT --num_workers 4 --device cuda --output_dir $WORK/ds" \
  "\$PY $NO_SHM run_class_finetuning.py --enable_deepspeed --zero_stage 2 --model vit_tiny_patch16_224 --input_size 32 --short_side_size 40 --num_frames 4 $FT --num_workers 0 --device cpu --output_dir $WORK/ds"

for name in "${SELECTED[@]}"; do
  [ -n "${LIMIT[$name]:-}" ] || { echo "error: no part '$name'; parts: ${PARTS[*]}" >&2; exit 2; }
done
[ ${#SELECTED[@]} -gt 0 ] && PARTS=("${SELECTED[@]}")

# ------------------------------------------------------------------------------ header, plan
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/gpu_check.txt"
LOGS="$OUT/gpu_check_logs.txt"
: >"$SUMMARY"
: >"$LOGS"
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
clean() { tr '\r' '\n' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g'; }  # tqdm's carriage returns, colours
command_of() { if [ $DRY = 1 ]; then echo "${DRY_CMD[$1]}"; else echo "${GPU_CMD[$1]}"; fi; }
limit_of() { if [ $DRY = 1 ]; then echo $DRY_LIMIT; else echo "${LIMIT[$1]}"; fi; }

say "# MMKD GPU check"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "command: bash benchmarks/gpu_check.sh $*"
say "mode: $([ $DRY = 1 ] && echo 'dry run (CPU, tiny sizes; nothing installed)' || echo GPU)"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git)')$(git status --porcelain 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
say "machine: $(hostname 2>/dev/null || echo '?'), $(nproc 2>/dev/null || echo '?') CPU cores, $(awk '/MemTotal/ {printf "%.0f GiB memory", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
say ""
say "plan: set-up, then these parts (limits in seconds; all of them together stop after ${BUDGET} s):"
for name in "${PARTS[@]}"; do
  say "  $(printf '%-18s %4s s' "$name" "$(limit_of "$name")")  $(command_of "$name")"
done

# ------------------------------------------------------------------------------ set-up
PY=""
imports_torch() {  # PYTHON [cuda]: the interpreter imports torch (and sees a CUDA device)
  local check="import torch"
  [ "${2:-}" = cuda ] && check="$check; assert torch.cuda.is_available()"
  "$1" -c "$check" >/dev/null 2>&1
}
choose_python() {
  if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; echo "python: \$PYTHON = $PY"; return; fi
  local want c
  for want in $([ $DRY = 1 ] && echo any || echo "cuda any"); do
    for c in "$ROOT/.venv/bin/python" python3 python; do
      if command -v "$c" >/dev/null && imports_torch "$c" "$want"; then
        PY="$(command -v "$c")"
        echo "python: $PY (imports torch$([ "$want" = cuda ] && echo ', sees CUDA'))"
        return
      fi
    done
  done
  if [ $DRY = 1 ]; then echo "no python with torch found; the dry run installs nothing"; return 1; fi
  echo "no python with torch found: the README's set-up, source scripts/setup_env.sh requirements-dev.txt"
  timeout -k 10 1200 bash -c 'source scripts/setup_env.sh requirements-dev.txt' || return 1
  PY="$ROOT/.venv/bin/python"
}
install_wheels() {  # .whl/*.whl into $WORK/site, first on PYTHONPATH
  local wheels=(.whl/*.whl)
  [ -e "${wheels[0]}" ] || { echo "wheels: none in .whl/"; return 0; }
  if [ $DRY = 1 ]; then echo "wheels: ${#wheels[@]} in .whl/, not installed in the dry run"; return 0; fi
  echo "wheels: installing ${#wheels[@]} from .whl/: $(basename -a "${wheels[@]}" | tr '\n' ' ')"
  timeout -k 10 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$WORK/site" "${wheels[@]}" || return 1
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
}
report_env() {  # versions; the last two lines say what is missing and whether CUDA is visible
  "$PY" - <<'EOF'
import importlib.metadata as md
import importlib.util
import platform
import sys

import torch

print(f"python {platform.python_version()} ({sys.executable})")
cuda = torch.cuda.is_available()
try:
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else "n/a"
except Exception:
    nccl = "n/a"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if cuda else 'n/a'}, NCCL {nccl}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {torch.cuda.device_count()} x {p.name}, {p.total_memory / 2 ** 30:.1f} GiB, "
          f"compute capability {p.major}.{p.minor}, bf16 "
          f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}")
else:
    print("gpu: none visible to torch")


def version(module):
    if importlib.util.find_spec(module) is None:
        return None
    for dist in (module, module + "2"):  # decord's maintained fork is the package decord2
        try:
            return md.version(dist) + ("" if dist == module else f" ({dist})")
        except md.PackageNotFoundError:
            pass
    return "(version unknown)"


found = {m: version(m) for m in ("timm", "einops", "numpy", "torchvision", "av", "decord",
                                 "deepspeed", "pytest", "transformers", "tensorboard", "tqdm")}
print("packages: " + ", ".join(f"{m} {v or 'MISSING'}" for m, v in found.items()))
print("missing: " + (" ".join(m for m, v in found.items() if v is None) or "none"))
print(f"cuda: {'yes' if cuda else 'no'}")
EOF
}
setup() {
  choose_python || return 1
  export PY PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  # the dry run is the same on any machine: no GPU, one thread per process
  [ $DRY = 1 ] && export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=
  install_wheels || return 1
  report_env || return 1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 |
      sed 's/^/nvidia-smi: /'
  fi
  return 0
}

NAMES=() STATUSES=() TIMES=()  # every part's result, for the table at the end
record() { NAMES+=("$1"); STATUSES+=("$2"); TIMES+=("$3"); }

T0=$(date +%s)
setup >"$WORK/setup.log" 2>&1
SETUP_RC=$?
SETUP_S=$(($(date +%s) - T0))
{ echo "===== setup (rc $SETUP_RC, ${SETUP_S} s)"; clean <"$WORK/setup.log"; echo; } >>"$LOGS"
MISSING=" $(sed -n 's/^missing: //p' "$WORK/setup.log" | sed 's/^none$//') "
CUDA=$(sed -n 's/^cuda: //p' "$WORK/setup.log")
SETUP_STATUS=ok
if [ $SETUP_RC != 0 ] || [ -z "$CUDA" ]; then
  SETUP_STATUS="failed (rc $SETUP_RC)"
elif [ $DRY = 0 ] && [ "$CUDA" != yes ]; then
  SETUP_STATUS="failed (no CUDA device visible to $PY)"
fi
say ""
say "== setup: $SETUP_STATUS (${SETUP_S} s; not counted in the ${BUDGET} s of the parts)"
clean <"$WORK/setup.log" | grep -vE '^(missing|cuda): ' | tail -n 20 | sed 's/^/   /' |
  tee -a "$SUMMARY"
record setup "$SETUP_STATUS" "$SETUP_S"

# ------------------------------------------------------------------------------ running
run_part() {
  local name=$1 limit cmd m left status rc start took
  limit=$(limit_of "$name")
  cmd=$(command_of "$name")
  left=$((T0 + SETUP_S + BUDGET - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  status=""
  if [ "${cmd:0:1}" = "-" ]; then status="skipped (dry run: ${cmd:2})"
  elif [ "$SETUP_STATUS" != ok ]; then status="skipped (set-up failed)"
  elif [ "$limit" -lt 10 ]; then status="skipped (the ${BUDGET} s of all parts are spent)"
  fi
  for m in ${NEEDS[$name]}; do
    case "$MISSING" in
      *" $m "*) [ -n "$status" ] || status="skipped (needs $m, missing: see benchmarks/gpu_wheels.sh)" ;;
    esac
  done
  say ""
  if [ -n "$status" ]; then
    say "== $name: $status"
    record "$name" "$status" 0
    return
  fi
  start=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >"$WORK/$name.log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  case $rc in
    0) status=ok ;;
    124|137) status="timed out (limit ${limit} s)" ;;
    *) status="failed (rc $rc)" ;;
  esac
  { echo "===== $name: $status (${took} s)"; echo "\$ $cmd"; clean <"$WORK/$name.log"; echo; } >>"$LOGS"
  say "== $name: $status (${took} s of ${limit} s)"
  say "\$ $cmd"
  clean <"$WORK/$name.log" | grep -E "${FIGS[$name]}" | tail -n 25 | sed 's/^/   /' |
    tee -a "$SUMMARY"
  if [ "$status" != ok ]; then  # the end of the output says why
    say "   --- last lines of the output:"
    clean <"$WORK/$name.log" | grep -v '^[[:space:]]*$' | tail -n 12 | sed 's/^/   | /' |
      tee -a "$SUMMARY"
  fi
  record "$name" "$status" "$took"
}

for name in "${PARTS[@]}"; do
  run_part "$name"
done

say ""
say "results:"
ok=0 failed=0 timed=0 skipped=0
for i in "${!NAMES[@]}"; do
  say "  $(printf '%-18s %4s s  %s' "${NAMES[$i]}" "${TIMES[$i]}" "${STATUSES[$i]}")"
  case "${STATUSES[$i]}" in
    ok) ok=$((ok + 1)) ;;
    failed*) failed=$((failed + 1)) ;;
    timed*) timed=$((timed + 1)) ;;
    *) skipped=$((skipped + 1)) ;;
  esac
done
say "total: $ok ok, $failed failed, $timed timed out, $skipped skipped; wall time $(($(date +%s) - T0)) s"
say "files: $SUMMARY, $LOGS (whole outputs)"
[ $failed = 0 ] && [ $timed = 0 ] && { [ $DRY = 1 ] || [ $skipped = 0 ]; }
