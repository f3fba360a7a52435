#!/usr/bin/env bash
# Install bptrain into ./.venv (created with python3 if missing).
#
#   bash scripts/install.sh          # bptrain and its dependencies
#   bash scripts/install.sh --test   # plus pytest and ruff
#
# torch: an existing torch in the venv is kept. Otherwise a machine with an NVIDIA GPU gets the default
# (CUDA) build from PyPI, and a machine without one gets the CPU build (hundreds of MB instead of several GB):
# from a local wheel/index when pip can find torch==$BPTRAIN_TORCH_VERSION+cpu, else from PyTorch's CPU index.
# Set PYTHON to choose the interpreter, BPTRAIN_VENV for another venv path.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BPTRAIN_VENV:-.venv}
TORCH_VERSION=${BPTRAIN_TORCH_VERSION:-2.13.0}
EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --test) EXTRAS="[test]" ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (use --test)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if "$PY" -c "import torch" 2>/dev/null; then
  echo "keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: installing torch (CUDA build)"
  pip_install "torch>=2.4"
else
  echo "no GPU: installing the CPU build of torch"
  pip_install "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || pip_install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
    || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi

pip_install -e ".${EXTRAS}"
if [ -n "$EXTRAS" ]; then
  # torchattacks: the independent PGD/FGSM the robustness tests compare against. --no-deps: its
  # metadata pins torchvision (which would replace the CPU torch by a multi-GB CUDA build) and
  # requests 2.25; the attacks use neither, and its imports (scipy, tqdm) are in the test extra.
  pip_install --no-deps "torchattacks==3.5.1"
fi
echo "installed: $("$VENV/bin/bptrain" --version 2>/dev/null || echo bptrain) in $VENV (activate with: source $VENV/bin/activate)"
