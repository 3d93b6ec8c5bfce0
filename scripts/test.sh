#!/usr/bin/env bash
# Set up and run the whole test suite (`.ci/run` runs exactly this). Arguments go to pytest.
#
# What it installs:
#   1. torch + torchvision, pinned: torch==2.14.1 is PyPI's default Linux build, which is a
#      CUDA build: torch (~1.2 GB) plus the nvidia-* CUDA runtime wheels (~3 GB) that it
#      depends on, about 4.5 GB installed. onnxverify uses it on the CPU. On this project's
#      machines these wheels come from the machine's local package mirror (no download).
#      A CPU-only machine can pick a small CPU build instead (about 190 MB wheel):
#          ONNXVERIFY_TORCH="torch==2.13.0 torchvision==0.28.0" bash scripts/test.sh
#      (here pip resolves torch==2.13.0 to the torch-2.13.0+cpu wheel on this machine's disk),
#      or, elsewhere, install torch from PyTorch's CPU wheel index first and set
#      ONNXVERIFY_TORCH="" to keep it (see README, "Installation").
#   2. onnxverify itself, editable, with its extras (torch-side training, tests, plots).
# pytest's "no tests collected" (exit 5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${ONNXVERIFY_TORCH-"torch==2.14.1 torchvision==0.29.1"}
step() { echo "==> [$(date +%H:%M:%S)] $*"; }
if [ -n "$TORCH_SPEC" ]; then
    note=""
    [ -z "${ONNXVERIFY_TORCH+x}" ] && note=" (PyPI's CUDA build: ~4.5 GB installed from the local mirror; quick when installed)"
    step "pip install $TORCH_SPEC$note"
    # shellcheck disable=SC2086
    python -m pip install --progress-bar on $TORCH_SPEC 2>&1 | { grep -v "^Requirement already satisfied" || true; }
    python -c "import torch; print('    torch', torch.__version__, '| CUDA build' if torch.version.cuda else '| CPU build')"
else
    step "ONNXVERIFY_TORCH is empty: keeping the installed torch"
fi
step "pip install -e . with the train, test and plot extras (onnx2torch, onnxscript, scikit-learn, pytest, hypothesis, matplotlib)"
python -m pip install -q -e ".[train,test,plot,distributed]"
step "pytest $*"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit "$rc"
