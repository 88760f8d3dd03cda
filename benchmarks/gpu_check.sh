#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a machine with a CUDA GPU (issue 12, section 6):
#   1. the gpu-marked tests (tests/test_gpu.py and the others marked gpu): the grouped backend
#      and the sorted backend's Python engine in bfloat16 on CUDA against the naive reference,
#      their host synchronizations counted by CUDA's sync debug mode;
#   2. the layer benchmark on CUDA in bfloat16 (every shape of its grid).
# Each part is capped at 150 s, so the whole check ends within 5 minutes (about 2 on an H200).
# Writes into benchmarks/results/ (or the folder given as $1): layer-cuda-<time>.json, the
# benchmark with the device name, and gpu-check-<time>.txt, both parts' output. Commit both.
#
#   bash benchmarks/gpu_check.sh [results-folder]     (PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to the torch of $PYTHON: nothing to check" >&2
  exit 2
fi
results="${1:-benchmarks/results}"
mkdir -p "$results"
log="$results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ).txt"
export PYTHONUNBUFFERED=1

"$PYTHON" -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name())' \
  2>&1 | tee "$log"
# Only the test files that hold gpu tests: the others import the notebook tooling (nbformat,
# jupytext, plotly), which a bare GPU image may lack. addopts cleared: the default run adds
# nbval and xdist options this check does not need.
mapfile -t gpu_tests < <(grep -l -E "pytest\.mark\.gpu" tests/test_*.py)
timeout 150 "$PYTHON" -m pytest "${gpu_tests[@]}" -m gpu -o addopts="" -p no:cacheprovider -q -rs \
  2>&1 | tee -a "$log"
tests_status=${PIPESTATUS[0]}
timeout 150 "$PYTHON" -m moe_lab.bench layer --device cuda --dtype bfloat16 --no-input-check \
  --repeats 10 --results-dir "$results" 2>&1 | tee -a "$log"
bench_status=${PIPESTATUS[0]}

echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status; output in $log" \
  | tee -a "$log"
[[ $tests_status -eq 0 && $bench_status -eq 0 ]]
