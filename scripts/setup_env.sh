#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment .venv/ at the repo root and install
# the requirements into it. Sourced by scripts/demo.sh and scripts/test.sh.
# Usage: source scripts/setup_env.sh [requirements file]   (default requirements-dev.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="${1:-requirements-dev.txt}"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[setup] creating $ROOT/.venv with $($PY --version)"
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$ROOT/.venv/.installed-$(basename "$REQ")"
if [ ! -f "$STAMP" ] || [ "$ROOT/$REQ" -nt "$STAMP" ] || [ "$ROOT/requirements.txt" -nt "$STAMP" ]; then
  echo "[setup] installing $REQ into .venv (first time: a few minutes, torch is large)"
  # decord2 and the old decord both own site-packages/decord/: remove the old one first, or
  # the two packages' files mix
  if "$ROOT/.venv/bin/python" -m pip show -q decord >/dev/null 2>&1; then
    echo "[setup] replacing decord with decord2 (its maintained fork)"
    "$ROOT/.venv/bin/python" -m pip uninstall -q -y decord
  fi
  "$ROOT/.venv/bin/python" -m pip install -q -r "$ROOT/$REQ"
  touch "$STAMP"
else
  echo "[setup] .venv up to date with $REQ"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
