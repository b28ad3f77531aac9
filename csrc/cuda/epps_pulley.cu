// CUDA engine of the sliced Epps-Pulley statistic (SPEC 7b): per slice l and knot k the
// sums over points of cos(t_k u_il) and sin(t_k u_il), t_k = k delta, and their backward.
// Twin of csrc/cpu/epps_pulley.cpp: same bindings, with the stream last instead of the
// thread count, and no workspace.
//
// Forward: one block per slice streams the slice's n projections; each thread keeps the
// running sums of its knots in registers (visit_knots_unrolled: one sincos and K - 1
// rotations per projection, k known at compile time so the sums never touch memory).
// Registers bound a thread to 32 knots (64 doubles); K > 32 runs a second pass for knots
// 32..63, which rotates through the first 32 again without summing them.
//
// Why one block per slice, without a workspace: the sums need no cross-block reduction,
// so there is nothing to allocate and the order of the additions is fixed. The cost is
// parallelism when slices are few: S blocks of kMomentThreads threads, ~3 per SM at the
// register budget, so S below ~3 x #SMs (~400 on an H100) leaves part of the GPU idle.
// For the usual S = 256..1024 that is a fraction of one wave of the O(n S D) projection
// matmul that precedes this kernel, which dominates the cost; splitting n across blocks
// would need a partials workspace and a second kernel.
//
// Determinism: thread t sums projections t, t + T, t + 2T, ... in order; per knot a warp
// shuffle tree, then the warps added in warp order. Fixed for given (n, knots), so the
// sums are bitwise reproducible. No atomics.
//
// Backward: one thread per projection, blocks of kBackThreads projections of one slice,
// with the slice's dL/d(cos sum) and dL/d(sin sum) rows staged in shared memory.
#include "common/epps_pulley.h"

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/config.h"
#include "common/epps_pulley_bind.h"
#include "cuda/check.cuh"
#include "cuda/reduce.cuh"

namespace py = pybind11;

namespace gaussreg {
namespace cuda {
namespace {

constexpr int kMomentThreads = 128;  // ~160 registers per thread: 3 blocks per SM
constexpr int kMomentWarps = kMomentThreads / 32;
constexpr int kKnotsPerPass = 32;    // 2 x 32 running sums in registers per thread
constexpr int kBackThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

static_assert(kEppsPulleyMaxKnots <= 2 * kKnotsPerPass, "two passes must cover every knot");

// SPEC 7b: cos_sums[l, k] = sum_i cos(k delta u_li), sin_sums the same with sin, for the
// knots [First, First + Count) below `knots`.
template <typename T, int First, int Count>
__global__ void __launch_bounds__(kMomentThreads)
moments_kernel(const T* __restrict__ u, int64_t slices, int64_t n, int knots, double delta,
               double* __restrict__ cos_sums, double* __restrict__ sin_sums) {
  __shared__ double warp_sums[kMomentWarps][2 * Count];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t l = blockIdx.x; l < slices; l += gridDim.x) {  // uniform over the block
    double acc_c[Count], acc_s[Count];
#pragma unroll
    for (int j = 0; j < Count; ++j) acc_c[j] = 0.0, acc_s[j] = 0.0;
    const T* row = u + l * n;
    for (int64_t i = threadIdx.x; i < n; i += kMomentThreads) {
      // k is a constant once unrolled: acc_c[k - First] stays a register.
      visit_knots_unrolled<First + Count>(static_cast<double>(row[i]), delta, knots, [&](int k, double c, double s) {
        if (k >= First) {
          acc_c[k - First] += c;
          acc_s[k - First] += s;
        }
      });
    }
    // Per knot: warp tree, lane 0 parks the warp's sums; `knots` is uniform, so every lane
    // of a warp takes the same branch (warp_sum shuffles with the full mask).
#pragma unroll
    for (int j = 0; j < Count; ++j) {
      if (First + j < knots) {
        const double c = warp_sum(acc_c[j]), s = warp_sum(acc_s[j]);
        if (lane == 0) {
          warp_sums[warp][j] = c;
          warp_sums[warp][Count + j] = s;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 2 * Count) {
      const int j = threadIdx.x % Count;
      if (First + j < knots) {
        double total = 0.0;
        for (int w = 0; w < kMomentWarps; ++w) total += warp_sums[w][threadIdx.x];  // warp order
        double* out = threadIdx.x < Count ? cos_sums : sin_sums;
        out[l * knots + First + j] = total;
      }
    }
    __syncthreads();  // warp_sums is rewritten for the next slice
  }
}

static_assert(2 * kKnotsPerPass <= kMomentThreads, "one thread per (cos or sin, knot) in the final sum");

// SPEC 7b backward: grad_u[l, i] = sum_k k delta (grad_sin[l, k] cos(k delta u_li)
// - grad_cos[l, k] sin(k delta u_li)), the rotations of visit_knots in double.
template <typename T>
__global__ void __launch_bounds__(kBackThreads)
moments_backward_kernel(const T* __restrict__ u, int64_t slices, int64_t n, int knots, double delta,
                        const double* __restrict__ grad_cos, const double* __restrict__ grad_sin,
                        T* __restrict__ grad_u) {
  __shared__ double gc[kEppsPulleyMaxKnots], gs[kEppsPulleyMaxKnots];
  const int64_t tiles_per_slice = (n + kBackThreads - 1) / kBackThreads;
  const int64_t tiles = slices * tiles_per_slice;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform over the block
    const int64_t l = tile / tiles_per_slice;
    const int64_t i = (tile - l * tiles_per_slice) * kBackThreads + threadIdx.x;
    __syncthreads();  // the previous tile's rows have been read
    for (int k = threadIdx.x; k < knots; k += kBackThreads) {
      gc[k] = grad_cos[l * knots + k];
      gs[k] = grad_sin[l * knots + k];
    }
    __syncthreads();
    if (i < n) {
      double g = 0.0;
      visit_knots(static_cast<double>(u[l * n + i]), delta, knots,
                  [&](int k, double c, double s) { g += (k * delta) * (gs[k] * c - gc[k] * s); });
      grad_u[l * n + i] = static_cast<T>(g);
    }
  }
}

// ---------------------------------------------------------------- drivers

unsigned grid_for(int64_t blocks) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks))); }

template <typename T, int First, int Count>
void launch_moments(const T* u, int64_t slices, int64_t n, int knots, double delta, double* cos_sums,
                    double* sin_sums, cudaStream_t stream) {
  moments_kernel<T, First, Count><<<grid_for(slices), kMomentThreads, 0, stream>>>(u, slices, n, knots, delta,
                                                                                   cos_sums, sin_sums);
  check_launch("moments_kernel");
}

// Knots <= 16 get a 16-knot kernel (half the registers, more blocks per SM); the default
// K = 17 and up to 32 one 32-knot pass; beyond, a second pass for knots 32..63.
template <typename T>
void moments(const T* u, int64_t slices, int64_t n, int knots, double delta, double* cos_sums, double* sin_sums,
             cudaStream_t stream) {
  if (knots <= 16) return launch_moments<T, 0, 16>(u, slices, n, knots, delta, cos_sums, sin_sums, stream);
  launch_moments<T, 0, kKnotsPerPass>(u, slices, n, knots, delta, cos_sums, sin_sums, stream);
  if (knots > kKnotsPerPass)
    launch_moments<T, kKnotsPerPass, kKnotsPerPass>(u, slices, n, knots, delta, cos_sums, sin_sums, stream);
}

template <typename T>
void moments_backward(const T* u, int64_t slices, int64_t n, int knots, double delta, const double* grad_cos,
                      const double* grad_sin, T* grad_u, cudaStream_t stream) {
  const int64_t tiles = slices * ((n + kBackThreads - 1) / kBackThreads);
  moments_backward_kernel<T><<<grid_for(tiles), kBackThreads, 0, stream>>>(u, slices, n, knots, delta, grad_cos,
                                                                           grad_sin, grad_u);
  check_launch("moments_backward_kernel");
}

// ---------------------------------------------------------------- bindings

// The CUDA side of the shared bindings (common/epps_pulley_bind.h): everything runs on
// `stream`, with no synchronisation and no workspace. Errors: std::invalid_argument (sizes,
// pointers), std::runtime_error (CUDA, naming the kernel).
struct EppsPulleyCuda {
  static constexpr const char* kLastArg = "stream";

  template <typename T>
  static void moments(const MomentsCall<T>& c, uintptr_t stream) {
    cuda::moments<T>(c.u, c.slices, c.n, c.knots, c.delta, c.cos_sums, c.sin_sums, stream_of(stream));
  }

  template <typename T>
  static void moments_backward(const MomentsBackwardCall<T>& c, uintptr_t stream) {
    cuda::moments_backward<T>(c.u, c.slices, c.n, c.knots, c.delta, c.grad_cos, c.grad_sin, c.grad_u,
                              stream_of(stream));
  }
};

}  // namespace

void bind_epps_pulley(py::module_& m) { bind_epps_pulley_engine<EppsPulleyCuda>(m); }

}  // namespace cuda
}  // namespace gaussreg
