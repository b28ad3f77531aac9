#!/usr/bin/env bash
# The GPU check, for a machine lent by the device tool (python3 there holds torch,
# pybind11, CMake, Ninja, scipy, mpmath and pytest; no network). Run from the repository
# root:
#
#   bash bench/gpu_check.sh                      # every stage, in order
#   bash bench/gpu_check.sh build test           # some stages (the build stays for later calls
#   bash bench/gpu_check.sh sanitize bench       #   while the machine is held)
#
# Stages:
#   build     pip install --no-build-isolation --no-deps -e .  (sm_90 only: one architecture
#             keeps the build to a couple of minutes on 16 cores)
#   test      pytest -m cuda (the CUDA parity tests), the CPU suite's quick files, and the
#             process_group path over NCCL with one rank (gaussreg bench distributed)
#   sanitize  compute-sanitizer memcheck and racecheck on gaussreg/bench/kernel_smoke.py (one small
#             forward+backward of every CUDA kernel, float32 and float64)
#   bench     gaussreg.bench's kernel_sums, cdf_attraction and segmented on the GPU
#   dims      (not in the default list) the pair sums' native rows at n = 65536 for D = 16,
#             128 and 512, the sizes of bench/results/roofline-sm90.md: run it when time is left
#
# Everything lands under $OUT (the device tool's output folder; ./gpu_check_out elsewhere),
# within the tool's limits on files coming back (8 files): summary.txt (one line a stage,
# printed last), one log per stage, and bench_results.tgz with the JSON/CSV/PNG. Back on
# the development machine: `tar xzf bench_results.tgz -C bench/results/<device-slug>/`
# (the slug is in each JSON's meta), then `python3 -m gaussreg.bench.report --write-readme`, commit. Each stage has a time limit so that one stuck stage cannot use up
# the 10-minute call; all four together can pass 10 minutes, so split them over two or
# three calls (the build stays on a held machine). The exit status is that of the first
# failing stage.
set -uo pipefail
cd "$(dirname "$0")/.."

export OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
status=0

stage() {  # stage NAME LIMIT_SECONDS FUNCTION: run with a time limit, log, one summary line
  local name=$1 limit=$2 fn=$3
  local start rc
  start=$(date +%s)
  timeout --signal=KILL "$limit" bash -c "$fn" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s (log: $name.log)" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

build() {
  GAUSSREG_CUDA=1 GAUSSREG_CUDA_ARCHS=${GAUSSREG_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    python3 -m pip install --no-build-isolation --no-deps -v -e . &&
    python3 -c "import gaussreg, torch; print(gaussreg.backends()); assert gaussreg.backends()['cuda']['available']"
}

tests() {
  python3 -m pytest -q -m cuda tests &&
    python3 -m pytest -q tests/test_cdf_attraction.py tests/test_targets.py tests/test_backends.py \
      tests/test_coordinate_cdf_attraction.py tests/test_sliced_wasserstein.py tests/test_epps_pulley.py tests/test_gmm.py &&
    # The process_group path over NCCL (one GPU: one rank; the split and the collectives run).
    python3 -m gaussreg.bench distributed --world 1 --backend nccl --device cuda --n 4096 --repeats 1 --no-save
}

sanitize() {
  local failed=0
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 --target-processes all \
      python3 -m gaussreg.bench.kernel_smoke --device cuda || failed=1
  done
  return "$failed"
}

benches() {
  local results="$OUT/results"
  mkdir -p "$results"
  python3 -m gaussreg.bench.cdf_attraction --device cuda --n 4096 16384 65536 131072 --ref-max-n 16384 \
    --repeats 5 --timeout 120 --out "$results" &&
    python3 -m gaussreg.bench.kernel_sums --device cuda --n 4096 16384 65536 --ref-max-n 8192 --out "$results" &&
    python3 -m gaussreg.bench.segmented --device cuda --n 16384 65536 262144 --dim 128 512 --slices 1024 --ref-max-n 65536 --out "$results"
  local rc=$?
  tar czf "$OUT/bench_results.tgz" -C "$results" . && rm -rf "$results"
  return "$rc"
}

dims() {
  local results="$OUT/results_dims"
  mkdir -p "$results"
  python3 -m gaussreg.bench.kernel_sums --device cuda --n 65536 --dim 16 128 512 --impls native --no-memory \
    --out "$results"
  local rc=$?
  tar czf "$OUT/bench_dims.tgz" -C "$results" . && rm -rf "$results"
  return "$rc"
}

export -f build tests sanitize benches dims

{
  echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee -a "$SUMMARY"

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
for s in "${stages[@]}"; do
  case "$s" in
    build) stage build 300 build ;;
    test) stage test 240 tests ;;
    sanitize) stage sanitize 300 sanitize ;;
    bench) stage bench 420 benches ;;
    dims) stage dims 240 dims ;;
    *) echo "unknown stage $s (build, test, sanitize, bench, dims)" | tee -a "$SUMMARY"; status=2 ;;
  esac
done
cat "$SUMMARY"
exit "$status"
