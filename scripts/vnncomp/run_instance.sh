#!/usr/bin/env bash
# VNN-COMP entry point: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT
# Writes the verdict (sat/unsat/unknown/timeout/error; a counterexample for sat) to RESULTS
# within TIMEOUT seconds. RESULTS and TIMEOUT may be omitted (stdout only, 300 s).
set -uo pipefail
if [ "$#" -lt 4 ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB [RESULTS TIMEOUT]" >&2
    exit 1
fi
VERSION=$1; CATEGORY=$2; ONNX=$3; VNNLIB=$4; RESULTS=${5:-}; TIMEOUT=${6:-300}
if [ "$VERSION" != "v1" ]; then
    echo "expected version string v1, got '$VERSION'" >&2
    exit 1
fi
ONNXVERIFY=${ONNXVERIFY:-onnxverify}
echo "running onnxverify on benchmark '$CATEGORY' with timeout $TIMEOUT: $ONNX $VNNLIB" >&2
ARGS=(verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT")
if [ -n "$RESULTS" ]; then
    ARGS+=(--result "$RESULTS")
fi
$ONNXVERIFY "${ARGS[@]}"
rc=$?
# a verdict (even error) was written: the harness reads RESULTS, not our exit code
if [ -n "$RESULTS" ] && [ -s "$RESULTS" ]; then
    exit 0
fi
exit $rc
