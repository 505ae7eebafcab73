#!/usr/bin/env bash
# Install into .venv/ (reused when present) and run the whole test suite on the CPU.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements-dev.txt
python -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
