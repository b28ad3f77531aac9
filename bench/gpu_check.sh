#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (python3 there holds torch, pybind11, CMake, Ninja,
# scipy, mpmath and pytest; no network). Run from the repository root:
#
#   bash bench/gpu_check.sh                      # every stage, in order, within 500 s in all
#   bash bench/gpu_check.sh build test           # some stages (the build stays for later calls
#   bash bench/gpu_check.sh sanitize bench       #   while the machine is held)
#
# Stages:
#   build     pip install --no-build-isolation --no-deps -e .  (sm_90 only: one architecture
#             keeps the build to about two minutes on 16 cores)
#   test      pytest -m cuda (the CUDA parity tests; 60 s a test at most), then the
#             process_group path over NCCL with one rank (gaussreg bench distributed)
#   sanitize  compute-sanitizer memcheck (torch's allocator cache off) and racecheck (a dtype a
#             run) on gaussreg/bench/kernel_smoke.py (one small forward+backward of every CUDA
#             kernel, float32 and float64), each run within a third of the stage
#   bench     gaussreg.bench's cdf_attraction (n = 16384, 65536, 131072), kernel_sums (n = 16384
#             and 65536; the native rows also at D = 16, 128 and 512) and segmented, each within its
#             share of the time left (--run-budget: a row that would not fit is skipped, and the
#             rows measured are saved, also when the family's time limit stops it); the reference
#             (the oracle, not a competitor) is not timed at these sizes
#
# Time: all stages together fit in GPU_CHECK_BUDGET seconds (default 500, for a call limited to
# 540 s). Each stage gets at most its own cap and never more than what is left; a stage with less
# than 20 s left is skipped (and says so). A stage past its limit gets SIGTERM, then SIGKILL 10 s
# later, and its log up to there is kept.
#
# Everything lands under $OUT (the lent machine's output folder; ./gpu_check_out elsewhere),
# within the limits on files coming back (8 files): summary.txt (one line a stage), one log
# per stage, and bench_results.tgz with the JSON/CSV/PNG. Printed last: a digest of the logs
# (build errors, failed tests and pytest's last line, sanitizer summaries, bench rows) and
# the summary, so that the essentials reach the caller even if the files do not. Back on the
# development machine: `tar xzf bench_results.tgz -C bench/results/<device-slug>/` (the slug is
# in each JSON's meta), then `python3 -m gaussreg.bench.report --write-readme`, commit. The
# exit status is that of the first failing stage.
set -uo pipefail
cd "$(dirname "$0")/.."

export OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
BUDGET=${GPU_CHECK_BUDGET:-500}
START=$(date +%s)
status=0

seconds_left() { echo $((BUDGET - ($(date +%s) - START))); }

stage() {  # stage NAME CAP_SECONDS FUNCTION: run within min(cap, time left), log, one summary line
  local name=$1 cap=$2 fn=$3
  local left limit start rc
  left=$(seconds_left)
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "$name: skipped, ${left} s left of the ${BUDGET} s budget" | tee -a "$SUMMARY"
    [ "$status" -eq 0 ] && status=3
    return 3
  fi
  start=$(date +%s)
  STAGE_LIMIT=$limit timeout --signal=TERM --kill-after=10 "$limit" bash -c "$fn" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s of its ${limit} s (log: $name.log)" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

build() {
  GAUSSREG_CUDA=1 GAUSSREG_CUDA_ARCHS=${GAUSSREG_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    python3 -m pip install --no-build-isolation --no-deps -v -e . &&
    python3 -c "import gaussreg, torch; print(gaussreg.backends()); assert gaussreg.backends()['cuda']['available']"
}

tests() {
  local per_test=() rc=0
  python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)
  # The CPU suite runs in CI; here only what needs the GPU (and the build made on this machine).
  # SIGINT at the limit: pytest stops as on Ctrl-C and still prints its summary and durations.
  timeout --signal=INT --kill-after=10 $((STAGE_LIMIT - 50)) \
    python3 -m pytest -q -rfE --durations 15 -p no:cacheprovider "${per_test[@]}" -m cuda tests || rc=1
  # The process_group path over NCCL (one GPU: one rank; the split and the collectives run).
  timeout --signal=TERM --kill-after=5 40 python3 -m gaussreg.bench distributed --world 1 --backend nccl \
    --device cuda --n 4096 --repeats 1 --no-save || rc=1
  return "$rc"
}

sanitize() {
  local failed=0 each=$(((STAGE_LIMIT - 10) / 3)) sanitizer
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  # memcheck sees out-of-bounds accesses only outside torch's caching allocator's blocks: no caching.
  # racecheck, the slower, one dtype a run, so that each gets its own time.
  for run in "memcheck float32 float64" "racecheck float32" "racecheck float64"; do
    set -- $run
    local tool=$1
    shift
    echo "== compute-sanitizer --tool $tool, kernel_smoke --dtypes $* (at most $each s)"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --signal=TERM --kill-after=5 "$each" "$sanitizer" --tool "$tool" \
      --error-exitcode 99 --print-limit 20 --target-processes all \
      python3 -m gaussreg.bench.kernel_smoke --device cuda --dtypes "$@" || failed=1
  done
  return "$failed"
}

# One family: SHARE percent of the bench stage's time left (its rows within --run-budget), and
# never past the stage's deadline, which keeps 20 s for the tarball.
bench_family() {
  local share=$1 left budget
  shift
  left=$((BENCH_DEADLINE - $(date +%s)))
  budget=$((left * share / 100))
  if [ "$budget" -lt 15 ]; then
    echo "== skipped $1: ${left} s left of the stage"
    return 1
  fi
  echo "== $* (--run-budget $budget, stopped after $left s)"
  timeout --signal=TERM --kill-after=5 "$left" python3 -m "$@" --device cuda --timeout 30 --out "$BENCH_RESULTS" \
    --run-budget "$budget"
}

benches() {
  local rc=0
  export BENCH_RESULTS="$OUT/results" BENCH_DEADLINE=$(($(date +%s) + STAGE_LIMIT - 20))
  mkdir -p "$BENCH_RESULTS"
  bench_family 45 gaussreg.bench.cdf_attraction --n 16384 65536 131072 --ref-max-n 8192 || rc=1
  bench_family 40 gaussreg.bench.kernel_sums --n 16384 65536 --ref-max-n 8192 || rc=1
  bench_family 40 gaussreg.bench.kernel_sums --n 65536 --dim 16 128 512 --impls native --no-memory --tag dims || rc=1
  bench_family 90 gaussreg.bench.segmented --n 65536 262144 --dim 128 --slices 1024 --ref-max-n 65536 || rc=1
  tar czf "$OUT/bench_results.tgz" -C "$BENCH_RESULTS" . && rm -rf "$BENCH_RESULTS"
  return "$rc"
}

export -f build tests sanitize bench_family benches

{
  echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET} s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee -a "$SUMMARY"

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
for s in "${stages[@]}"; do
  case "$s" in
    build) stage build 240 build ;;
    test) stage test 140 tests ;;
    sanitize) stage sanitize 120 sanitize ;;
    bench) stage bench 600 benches ;;
    *) echo "unknown stage $s (build, test, sanitize, bench)" | tee -a "$SUMMARY"; status=2 ;;
  esac
done
# What matters of each log, printed last, so that it reaches the caller even if the files do not.
digest() {
  echo "== digest of the logs"
  if [ -f "$OUT/build.log" ]; then grep -E "error:|Error [0-9]+|FAILED:|'available'" "$OUT/build.log" | head -20; fi
  if [ -f "$OUT/test.log" ]; then
    grep -E "^(FAILED|ERROR) " "$OUT/test.log" | cut -c1-300 | head -40
    grep -E "[0-9]+ (passed|failed|skipped)|no tests ran|Timeout|KeyboardInterrupt|error:" "$OUT/test.log" | tail -4
  fi
  if [ -f "$OUT/sanitize.log" ]; then grep -E "^== |ERROR SUMMARY|RACECHECK SUMMARY|failure" "$OUT/sanitize.log" | head -20; fi
  if [ -f "$OUT/bench.log" ]; then grep -E "^== |^  [a-z_]+ +n=[0-9]+ +(fb |error|oom|timeout)|WRONG|^matmul rate|^warning" "$OUT/bench.log" | head -80; fi
}

echo "total: $(($(date +%s) - START)) s of the ${BUDGET} s budget" | tee -a "$SUMMARY"
digest | cut -c1-400
cat "$SUMMARY"
exit "$status"
