#!/usr/bin/env bash
# The one launcher behind every per-configuration script: srun on a SLURM cluster (default)
# or torchrun on one node. The per-configuration scripts hold only hyper-parameters.
#
# Usage: scripts/launch.sh SCRIPT.py [flags...]      (normally called by scripts/*_slurm.sh)
# Environment (all optional):
#   LAUNCHER       slurm (default) | torchrun (one node, --standalone)
#   PARTITION      SLURM partition (default: the cluster's default partition)
#   JOB_NAME       SLURM job name (default: the script's name)
#   GPUS           processes = GPUs in total (default 8)
#   GPUS_PER_NODE  GPUs (= tasks) per node (default: min(GPUS, 8))
#   CPUS_PER_TASK  CPU cores per task, for the data loader workers (default 10)
#   SRUN_ARGS      extra srun arguments, word-split (e.g. "--exclude=node07 --time=72:00:00")
#   PYTHON         Python interpreter for srun (default: python)
#   DRY_RUN=1      print the resolved command (shell-quoted) instead of running it
#   RECIPE         published recipe (recipes.py) passed as --recipe; the zoo scripts set it
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 SCRIPT.py [flags...]" >&2
  exit 2
fi
SCRIPT="$ROOT/$1"
shift
if [ -n "${RECIPE:-}" ]; then set -- --recipe "$RECIPE" "$@"; fi  # the zoo row (recipes.py)
GPUS="${GPUS:-8}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}"
CPUS_PER_TASK="${CPUS_PER_TASK:-10}"
JOB_NAME="${JOB_NAME:-$(basename "$SCRIPT" .py)}"
read -r -a SRUN_EXTRA <<< "${SRUN_ARGS:-}"

case "${LAUNCHER:-slurm}" in
  slurm)
    CMD=(srun ${PARTITION:+-p "$PARTITION"} --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE"
         --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
         --kill-on-bad-exit=1 ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"}
         "${PYTHON:-python}" -u "$SCRIPT" "$@") ;;
  torchrun)
    CMD=(torchrun --standalone --nnodes=1 --nproc_per_node="$GPUS" "$SCRIPT" "$@") ;;
  *)
    echo "LAUNCHER must be slurm or torchrun, got '${LAUNCHER}'" >&2
    exit 2 ;;
esac

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
# a fixed number of threads per process (floating-point sums depend on it): MKL and OpenMP
# may otherwise run fewer on a busy node (see reproducibility.py)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_DYNAMIC="${MKL_DYNAMIC:-FALSE}" \
  OMP_DYNAMIC="${OMP_DYNAMIC:-FALSE}"
exec "${CMD[@]}"
