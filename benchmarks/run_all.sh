#!/usr/bin/env bash
# Every benchmark at full size, one after the other, each one's output in OUT_DIR/<name>.txt:
# the figures of benchmarks/README.md. On a GPU (CUDA visible) the GPU settings, else the
# one-thread CPU settings measured there (about 30 minutes on a 2-core CPU).
# Usage: bash benchmarks/run_all.sh [OUT_DIR]        (default benchmarks_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks_output}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
run() {  # name, then the script and its arguments
  local name=$1; shift
  echo "== $name: $*"
  PYTHONUNBUFFERED=1 "$PY" "$@" 2>&1 | tee "$OUT/$name.txt"
}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  run step_B_B_32 benchmarks/bench_pretrain_step.py --student B --teacher B --batch_size 32
  run step_S_B_64 benchmarks/bench_pretrain_step.py --student S --teacher B --batch_size 64
  run step_B_B_32_compile benchmarks/bench_pretrain_step.py --student B --teacher B --batch_size 32 --compile
  run eval benchmarks/bench_eval.py --models S B --batch_size 32
  run scaling benchmarks/bench_scaling.py --students S B --teachers B L --batch_sizes 32 64
  run topk benchmarks/bench_topk.py --batch_size 64
else
  export OMP_NUM_THREADS=1
  cpu=(--device cpu --threads 1)
  run step_B_B_32 benchmarks/bench_pretrain_step.py "${cpu[@]}" --student B --teacher B --batch_size 32 --warmup 1 --iters 2
  run step_S_B_32 benchmarks/bench_pretrain_step.py "${cpu[@]}" --student S --teacher B --batch_size 32 --warmup 1 --iters 2
  run eval benchmarks/bench_eval.py "${cpu[@]}" --models S B --batch_size 4 --warmup 1 --iters 2
  run scaling benchmarks/bench_scaling.py "${cpu[@]}" --students S B --teachers B L --batch_sizes 1 2 --warmup 1 --iters 1
  run topk benchmarks/bench_topk.py "${cpu[@]}"
fi
run data benchmarks/bench_data.py --prepare --tmp "$OUT/data_tmp"
echo "outputs in $OUT/"
