#!/usr/bin/env bash
# VNN-COMP entry point: install_tool.sh v1 — installs onnxverify (CPU) from this checkout.
set -euo pipefail
if [ "${1:-}" != "v1" ]; then
    echo "usage: $0 v1" >&2
    exit 1
fi
cd "$(dirname "$0")/../.."
python -m pip install -q -e .
onnxverify --version
