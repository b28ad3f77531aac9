// Deterministic reductions: warp shuffles, then shared memory, in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include "cuda/check.cuh"

namespace gaussreg {
namespace cuda {

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? partial[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // `partial` may be reused by the caller's next block_sum
  return v;
}

// out[0] = scale * sum(values[0..count)), one block, fixed order: bitwise reproducible.
// static: this header is included by several translation units, each with its own copy.
static __global__ void sum_partials_kernel(const double* values, long long count, double scale, double* out) {
  double v = 0;
  for (long long i = threadIdx.x; i < count; i += blockDim.x) v += values[i];
  v = block_sum(v);
  if (threadIdx.x == 0) out[0] = scale * v;
}

// Values a block of sum_partials' first level adds: 256 threads x 32 each.
constexpr long long kPartialsPerBlock = 8192;

// First level: block g adds values[g * kPartialsPerBlock, ...) into sums[g], fixed order.
static __global__ void sum_partial_blocks_kernel(const double* values, long long count, double* sums) {
  const long long begin = static_cast<long long>(blockIdx.x) * kPartialsPerBlock;
  const long long end = begin + kPartialsPerBlock < count ? begin + kPartialsPerBlock : count;
  double v = 0;
  for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) v += values[i];
  v = block_sum(v);
  if (threadIdx.x == 0) sums[blockIdx.x] = v;
}

// Doubles of scratch sum_partials needs after `count` values (none when one block adds them).
static inline long long sum_partials_scratch(long long count) {
  return count > kPartialsPerBlock ? (count + kPartialsPerBlock - 1) / kPartialsPerBlock : 0;
}

// out[0] = scale * sum(values[0..count)) in an order fixed by `count` alone: bitwise
// reproducible. Up to kPartialsPerBlock values one block adds them; beyond, as many blocks
// as kPartialsPerBlock-value runs (a million partials: 128 blocks, not one block reading
// them all), then one block adds the blocks' sums from `scratch` (sum_partials_scratch).
// static, as the kernels it launches: each translation unit has its own copy.
static inline void sum_partials(const double* values, long long count, double scale, double* out, double* scratch,
                                cudaStream_t stream) {
  const long long blocks = sum_partials_scratch(count);
  if (blocks == 0) {
    sum_partials_kernel<<<1, 256, 0, stream>>>(values, count, scale, out);
    check_launch("sum_partials_kernel");
    return;
  }
  sum_partial_blocks_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(values, count, scratch);
  check_launch("sum_partial_blocks_kernel");
  sum_partials_kernel<<<1, 256, 0, stream>>>(scratch, blocks, scale, out);
  check_launch("sum_partials_kernel");
}

}  // namespace cuda
}  // namespace gaussreg
