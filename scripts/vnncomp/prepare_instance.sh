#!/usr/bin/env bash
# VNN-COMP entry point: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the model imports and the property parses (and matches the model's sizes).
# Exit code 0 = ready; non-zero = this instance cannot be run (the harness then skips it).
set -uo pipefail
if [ "$#" -lt 4 ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
VERSION=$1; CATEGORY=$2; ONNX=$3; VNNLIB=$4
if [ "$VERSION" != "v1" ]; then
    echo "expected version string v1, got '$VERSION'" >&2
    exit 1
fi
ONNXVERIFY=${ONNXVERIFY:-onnxverify}
echo "preparing onnxverify for benchmark '$CATEGORY': $ONNX $VNNLIB"
exec $ONNXVERIFY verify "$ONNX" "$VNNLIB" --check-only
