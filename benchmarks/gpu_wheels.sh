#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine that cannot reach the package index: the
# packages of requirements*.txt that a bare PyTorch CUDA image usually lacks (PyAV, DeepSpeed),
# and timm, whose API we use most, built or fetched here (where pip reaches the index) for the
# GPU machine's Python, into .whl/ (git-ignored; emptied first). gpu_check.sh installs whatever
# is in .whl/ before it runs; send the folder along with the working tree (about 42 MB).
#
#   bash benchmarks/gpu_wheels.sh                 # av, timm, deepspeed (+ pydantic, hjson)
#   bash benchmarks/gpu_wheels.sh av decord2      # these packages only (no dependencies)
#
# Each package is the version installed in $PYTHON (default python) where it is installed, so
# the GPU machine runs what the tests ran here. GPU_PYTHON_VERSION (default 3.12) is the GPU
# machine's Python; its platform is x86-64 Linux. DeepSpeed publishes no wheel: it is built
# from its source here (no compiled ops, so the build needs only torch in $PYTHON).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=.whl
PY="${PYTHON:-python}"
TARGET=(--only-binary=:all: --implementation cp --python-version "${GPU_PYTHON_VERSION:-3.12}")
for plat in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux2010 manylinux1; do
  TARGET+=(--platform "${plat}_x86_64")
done
PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(av timm deepspeed)
pin() {  # NAME -> NAME==<version installed in $PYTHON>, or NAME
  "$PY" -c "import importlib.metadata as m, sys; print(sys.argv[1] + '==' + m.version(sys.argv[1]))" \
    "$1" 2>/dev/null || echo "$1"
}
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each package, or the install on the GPU machine stops
binary=()
for p in "${PKGS[@]}"; do
  [ "$p" = deepspeed ] || binary+=("$(pin "$p")")
done
if [ ${#binary[@]} -gt 0 ]; then
  "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "${binary[@]}"
fi
if printf '%s\n' "${PKGS[@]}" | grep -qx deepspeed; then
  # DeepSpeed's dependencies that such an image lacks; pydantic with its own (pydantic-core
  # must be the build pydantic pins)
  "$PY" -m pip download -q "${TARGET[@]}" -d "$DEST" "$(pin pydantic)" "$(pin hjson)"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(pin deepspeed)"
fi
ls -l "$DEST"/*.whl
du -ch "$DEST"/*.whl | tail -n 1
