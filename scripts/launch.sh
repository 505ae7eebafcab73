#!/usr/bin/env bash
# The one launcher behind every per-configuration script: srun on a SLURM cluster (default)
# or torchrun on one node. The per-configuration scripts hold only hyper-parameters and
# their #SBATCH defaults.
#
# Usage: scripts/launch.sh SCRIPT.py [flags...]      (normally called by scripts/*_slurm.sh)
# Two ways to run a configuration on SLURM (README, "SLURM"):
#   sbatch [sbatch options] scripts/X_slurm.sh [JOB_NAME] [flags]   the script's #SBATCH
#       defaults (nodes, tasks, GPUs, CPUs, --requeue, --signal) give the allocation; srun
#       inside it starts one task per allocated task (sbatch -N 4: 4 x 8 ranks)
#   bash scripts/X_slurm.sh [JOB_NAME] [flags]                       from a login node: srun
#       allocates GPUS tasks itself
# A first argument that does not start with '-' is the job name.
# Environment (all optional):
#   LAUNCHER       slurm (default) | torchrun (one node, --standalone)
#   PARTITION      SLURM partition (default: the cluster's default partition)
#   JOB_NAME       SLURM job name (default: the script's name)
#   GPUS           processes = GPUs in total (default: the script's; ignored inside an
#                  allocation, which has its own shape)
#   GPUS_PER_NODE  GPUs (= tasks) per node (default: min(GPUS, 8))
#   CPUS_PER_TASK  CPU cores per task, for the data loader workers (default 10)
#   GRES           the generic resource srun asks for (default gpu:GPUS_PER_NODE); none on a
#                  partition without GPUs. Under sbatch set SBATCH_GRES=none instead (sbatch
#                  reads it in place of the script's #SBATCH --gres line); launch.sh reads it too
#   SIGNAL         warning signal before the time limit for srun's own allocation (default
#                  USR1@180: save, then stop; the #SBATCH header has the same)
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

GRES="${GRES:-${SBATCH_GRES:-gpu:$GPUS_PER_NODE}}"

case "${LAUNCHER:-slurm}" in
  slurm)
    if [ -n "${SLURM_JOB_ID:-}" ]; then  # inside sbatch / salloc: the allocation's shape
      CMD=(srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"}
           ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"} "${PYTHON:-python}" -u "$SCRIPT" "$@")
    else  # a login node: srun allocates
      [ "$GRES" = none ] && GRES_ARG=() || GRES_ARG=(--gres="$GRES")
      CMD=(srun ${PARTITION:+-p "$PARTITION"} --job-name="$JOB_NAME" "${GRES_ARG[@]}"
           --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
           --signal="${SIGNAL:-USR1@180}" --kill-on-bad-exit=1 ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"}
           "${PYTHON:-python}" -u "$SCRIPT" "$@")
    fi ;;
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
