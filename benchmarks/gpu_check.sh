#!/usr/bin/env bash
# One script for a lent GPU machine (no network; CuPy, Numba, nvidia-ml-py and pytest present):
# runs the GPU tests, then benchmarks/gpu_check.py (one compact table: migration vs pinned copy,
# device- vs host-resident kernel reads, instrumented vs plain kernels, a Space on the GPU,
# modeled vs measured), then `ccadgpu demo` and a small `ccadgpu bench` on the cuda backend,
# set beside the same bench on the CPU stand-in (modeled times row by row).
# Exit status non-zero if the GPU tests or any check fail.  Budget: under 5 minutes.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; PYTHON=... to pick an interpreter
#
# If $OUT is set (a directory), the numbers are also written to $OUT/gpu_check.json and the
# test log to $OUT/gpu_tests.log.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export CCADGPU_REQUIRE_GPU=1          # the GPU tests fail instead of skipping without a GPU
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-}"
LOG=/dev/null
[ -n "$OUTDIR" ] && mkdir -p "$OUTDIR" && LOG="$OUTDIR/gpu_tests.log"

command -v nvidia-smi >/dev/null 2>&1 && \
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
"$PY" -c "import cupy, sys; print('cupy', cupy.__version__, 'python', sys.version.split()[0])" \
  || { echo "gpu_check: CuPy does not import" >&2; exit 2; }

echo "== GPU tests (pytest -m gpu) =="
TIMEOUT_ARGS=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS=(--timeout 60)
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs --durations=5 --tb=short \
  ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} tests/ 2>&1 | tee "$LOG"
rc_tests=${PIPESTATUS[0]}
[ "$rc_tests" -eq 5 ] && { echo "gpu_check: no GPU tests were collected" >&2; rc_tests=1; }

echo "== measurements =="
JSON_ARGS=()
[ -n "$OUTDIR" ] && JSON_ARGS=(--json "$OUTDIR/gpu_check.json")
timeout 120 "$PY" benchmarks/gpu_check.py ${JSON_ARGS[@]+"${JSON_ARGS[@]}"}
rc_bench=$?

echo "== end to end on the GPU: ccadgpu demo and bench with --backend cuda =="
CLI=(-c "import sys; from ccadgpu.cli import main; sys.exit(main(sys.argv[1:]))")
timeout 90 "$PY" "${CLI[@]}" demo --backend cuda --iters 12
rc_demo=$?
# the policies live on the GPU, then the same runs on the CPU stand-in under the cuda space's
# cpu_access (x86 + PCIe: a CPU touch faults a device page home): the modeled times should agree
E2E_DIR="${OUTDIR:-$(mktemp -d)}"
E2E=(--size 16MiB --profile h100-pcie,gh200 --policy static,on_demand,access_counter
     --workload pingpong,krylov,oversubscribe,stream_reuse,pipeline)
timeout 150 "$PY" "${CLI[@]}" bench --backend cuda "${E2E[@]}" --json "$E2E_DIR/bench_cuda.json"
rc_e2e=$(( rc_demo || $? ))
timeout 90 "$PY" "${CLI[@]}" bench --backend cpu "${E2E[@]}" --tunable cpu_access=migrate_on_cpu_fault \
  --json "$E2E_DIR/bench_cpu.json" >/dev/null && \
  "$PY" benchmarks/bench_table.py "$E2E_DIR/bench_cuda.json" --against "$E2E_DIR/bench_cpu.json"
rc_e2e=$(( rc_e2e || $? ))

echo "gpu_check: tests rc=$rc_tests, measurements rc=$rc_bench, end to end rc=$rc_e2e"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ] && [ "$rc_e2e" -eq 0 ]
