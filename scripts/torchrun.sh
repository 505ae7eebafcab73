#!/usr/bin/env bash
# One-node torchrun form of any configuration: scripts/torchrun.sh CONFIG [extra flags], e.g.
#   GPUS=4 bash scripts/torchrun.sh kd_small_k400 --batch_size 32
# runs scripts/kd_small_k400_slurm.sh with LAUNCHER=torchrun (same hyper-parameters).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [flags...]   (CONFIG: $(cd "$(dirname "$0")" && ls *_slurm.sh | sed 's/_slurm.sh//' | tr '\n' ' '))" >&2
  exit 2
fi
CONFIG="$(dirname "${BASH_SOURCE[0]}")/${1%_slurm.sh}_slurm.sh"
shift
LAUNCHER=torchrun exec bash "$CONFIG" "$@"
