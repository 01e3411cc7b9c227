#!/usr/bin/env bash
# One prepared GPU run: the CUDA tests, then the CUDA benchmark, in under eight minutes.
# Writes JSON/Markdown (and the test log) under $OUT (default ./bench-out).
# Usage on a machine with a CUDA GPU and a CUDA build of torch:  bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 3)" \
  || { echo "gpu.sh: no CUDA GPU visible to torch; nothing to run" >&2; exit 3; }
"$PY" -m pip install --quiet --no-deps -e . >/dev/null 2>&1 || true
start=$(date +%s)
# 1. CUDA tests (the whole suite: CUDA cases run here instead of skipping), at most 3 minutes.
timeout 180 "$PY" -m pytest -q -x -k "cuda or fast or agreement" tests 2>&1 | tee "$OUT/cuda-tests.log" | tail -5
tests_rc=${PIPESTATUS[0]}
# 2. The CUDA benchmark: every size, float32 and bfloat16, with the CUDA-graph rows; at most 4 minutes.
timeout 240 "$PY" -m benchmarks.suite --full --device cuda --dtype float32 --dtype bfloat16 \
  --min-run-time 0.3 --out "$OUT" 2>&1 | tee "$OUT/cuda-bench.log" | tail -40
bench_rc=${PIPESTATUS[0]}
echo "gpu.sh: tests rc=$tests_rc bench rc=$bench_rc in $(( $(date +%s) - start )) s; results in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
