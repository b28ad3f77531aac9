// Deterministic reductions: warp shuffles, then shared memory, in a fixed order.
#pragma once

#include <cuda_runtime.h>

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

}  // namespace cuda
}  // namespace gaussreg
