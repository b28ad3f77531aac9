// CUDA engine for the pair-kernel sums of SPEC 3, 4 and 5: value and gradient fused in one
// sweep, O((n + m) D) memory, no n x m matrix, no atomics, no host synchronisation. One
// thread owns one row x_i and sweeps y in tiles staged in shared memory (every thread reads
// the same y_j: a broadcast). Two sweeps:
//
// - float32 with D in {16, 32, 64}: x_i and its gradient live in registers for the whole
//   sweep and the tile holds whole points (pair_rows_kernel);
// - every other D and float64: common/pair_tiles.h's sweep, a chunk of coordinates at a
//   time (a zero-padded chunk changes neither distance nor gradient), so the shared memory
//   a block needs does not grow with D (pair_tiles_kernel).
//
// A self sum visits the ordered pairs j != i (gradient complete in one launch; value
// halved); a cross sum launches a second sweep with the roles of x and y swapped for the y
// gradient.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "common/config.h"
#include "common/pair_sum_args.h"
#include "common/pair_tiles.h"
#include "cuda/check.cuh"
#include "cuda/reduce.cuh"

namespace gaussreg {
namespace cuda {

constexpr int kRowsPerBlock = 128;
constexpr int kTileMax = 32;
// Dynamic shared memory for the register sweep's tile of whole points: within the 48 KiB a
// launch gets without opting in, less block_sum's static 32 doubles.
constexpr std::size_t kSharedBudget = 48 * 1024 - 32 * sizeof(double);

inline std::size_t pair_sum_workspace_bytes(index_t n, index_t m_or_0) {
  const index_t m = m_or_0 == 0 ? n : m_or_0;
  return sizeof(double) * static_cast<std::size_t>(ceil_div(n, kRowsPerBlock) + ceil_div(m, kRowsPerBlock));
}

// Points per shared-memory tile of the register sweep: as many as fit, at most kTileMax.
template <typename T>
int tile_points(index_t d) {
  const index_t fit = static_cast<index_t>(kSharedBudget / (sizeof(T) * (d + 1)));
  return static_cast<int>(std::min<index_t>(kTileMax, fit));
}

// The register sweep (compile-time D = DT): rows `a` (na points) against `b` (nb points).
// kValue: per-block partial sums of k; kGrad: G_i = sum_j k'(t_ij) (a_i - b_j) into grad
// (na, DT) contiguous (SPEC 3, 4, 5 through the kernel K).
template <typename T, typename K, int DT, bool kValue, bool kGrad>
__global__ void __launch_bounds__(kRowsPerBlock)
pair_rows_kernel(const T* __restrict__ a, index_t na, index_t as0, index_t as1, const T* __restrict__ b, index_t nb,
                 index_t bs0, index_t bs1, const T* __restrict__ pa, const T* __restrict__ pb, K kern, bool self,
                 int tile, double* __restrict__ block_values, T* __restrict__ grad) {
  extern __shared__ unsigned char smem_raw[];
  T* tile_pts = reinterpret_cast<T*>(smem_raw);  // (tile, DT)
  T* tile_par = tile_pts + tile * DT;              // (tile)
  const index_t i = static_cast<index_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x;
  const bool active = i < na;
  const T pi = (active && pa != nullptr) ? pa[i] : T(0);
  T xr[DT];
  T g[DT];
#pragma unroll
  for (int c = 0; c < DT; ++c) {
    xr[c] = active ? a[i * as0 + c * as1] : T(0);
    g[c] = T(0);
  }
  const int terms = kern.num_terms();
  double v = 0;
  for (index_t j0 = 0; j0 < nb; j0 += tile) {
    const int count = static_cast<int>(nb - j0 < tile ? nb - j0 : tile);
    for (index_t e = threadIdx.x; e < static_cast<index_t>(count) * DT; e += blockDim.x) {
      const index_t jj = e / DT, c = e - jj * DT;
      tile_pts[e] = b[(j0 + jj) * bs0 + c * bs1];
    }
    for (int jj = threadIdx.x; jj < count; jj += blockDim.x) tile_par[jj] = pb != nullptr ? pb[j0 + jj] : T(0);
    __syncthreads();
    if (active) {
      for (int jj = 0; jj < count; ++jj) {
        const T* yj = tile_pts + jj * DT;
        T t = 0;
#pragma unroll
        for (int c = 0; c < DT; ++c) {
          const T diff = xr[c] - yj[c];
          t += diff * diff;
        }
        T k = 0, dk = 0;
        for (int s = 0; s < terms; ++s) kern.eval(s, t, pi, tile_par[jj], k, dk);
        if (self && j0 + jj == i) k = dk = T(0);  // the diagonal is not a pair
        v += static_cast<double>(k);
        if (kGrad) {
#pragma unroll
          for (int c = 0; c < DT; ++c) g[c] += dk * (xr[c] - yj[c]);
        }
      }
    }
    __syncthreads();
  }
  if (kGrad && active) {
#pragma unroll
    for (int c = 0; c < DT; ++c) grad[i * DT + c] = g[c];
  }
  if (kValue) {
    const double total = block_sum(v);
    if (threadIdx.x == 0) block_values[blockIdx.x] = total;
  }
}

// The device side of a pair_tiles.h Block: the block's threads, its barrier, its shared
// tile, its sum (cuda/reduce.cuh, fixed order).
template <typename T>
struct DeviceBlock {
  T* tile;
  T* params;
  __device__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ int threads() const { return static_cast<int>(blockDim.x); }
  __device__ void sync() const { __syncthreads(); }
  __device__ T* ys() const { return static_cast<T*>(__builtin_assume_aligned(tile, 16)); }
  __device__ T* yp() const { return params; }
  __device__ double sum(double v) const { return block_sum(v); }
};

// kValue: per-block partial sums of k over its rows' pairs; kGrad: G_i = sum_j k'(t_ij)
// (a_i - b_j) into grad (na, d) contiguous (SPEC 3, 4, 5 through the kernel K).
template <typename T, typename K, bool kValue, bool kGrad>
__global__ void __launch_bounds__(kRowsPerBlock)
pair_tiles_kernel(PairSweep<T> s, K kern, double* __restrict__ block_values, T* __restrict__ grad) {
  using Shape = PairTileShape<T>;
  __shared__ __align__(16) T tile[Shape::kTile * Shape::kChunk];
  __shared__ T params[Shape::kTile];
  DeviceBlock<T> block{tile, params};
  const index_t row0 = static_cast<index_t>(blockIdx.x) * kRowsPerBlock;
  const double total = sweep_rows<T, K, kValue, kGrad>(s, kern, row0, block, grad);
  if (kValue && threadIdx.x == 0) block_values[blockIdx.x] = total;
}

template <typename T, typename K, int DT, bool kValue, bool kGrad>
void launch_registers(const PairSweep<T>& s, const K& kern, double* block_values, T* grad, cudaStream_t stream) {
  const int tile = tile_points<T>(DT);
  const std::size_t smem = sizeof(T) * static_cast<std::size_t>(tile) * (DT + 1);
  pair_rows_kernel<T, K, DT, kValue, kGrad><<<static_cast<unsigned>(ceil_div(s.na, kRowsPerBlock)), kRowsPerBlock,
                                              smem, stream>>>(s.a, s.na, s.as0, s.as1, s.b, s.nb, s.bs0, s.bs1, s.pa,
                                                              s.pb, kern, s.self, tile, block_values, grad);
  check_launch("pair_rows_kernel");
}

// float32 at D = 16, 32, 64: the register sweep (its row and gradient fit the registers);
// every other D and float64: the chunked sweep.
template <typename T, typename K, bool kValue, bool kGrad>
void launch_sweep(const PairSweep<T>& s, const K& kern, double* block_values, T* grad, cudaStream_t stream) {
  if constexpr (sizeof(T) == 4) {
    if (s.d == 16) return launch_registers<T, K, 16, kValue, kGrad>(s, kern, block_values, grad, stream);
    if (s.d == 32) return launch_registers<T, K, 32, kValue, kGrad>(s, kern, block_values, grad, stream);
    if (s.d == 64) return launch_registers<T, K, 64, kValue, kGrad>(s, kern, block_values, grad, stream);
  }
  pair_tiles_kernel<T, K, kValue, kGrad><<<static_cast<unsigned>(ceil_div(s.na, kRowsPerBlock)), kRowsPerBlock, 0,
                                           stream>>>(s, kern, block_values, grad);
  check_launch("pair_tiles_kernel");
}

template <typename T>
void check_args(const PairSumArgs<T>& a) {
  check_pair_sum_args(a, pair_sum_workspace_bytes(a.n, a.y ? a.m : 0));
}

// Entry point of the engine (stream last, no synchronisation).
template <typename T, typename K>
void pair_sum(const PairSumArgs<T>& a, const K& kern, cudaStream_t stream) {
  check_args(a);
  const bool self = a.y == nullptr;
  const T* y = self ? a.x : a.y;
  const index_t m = self ? a.n : a.m;
  const index_t ys0 = self ? a.x_stride0 : a.y_stride0, ys1 = self ? a.x_stride1 : a.y_stride1;
  const T* py = self ? a.px : a.py;
  double* partial = static_cast<double*>(a.workspace);
  const index_t blocks_x = ceil_div(a.n, kRowsPerBlock);
  const PairSweep<T> xs{a.x, a.n, a.x_stride0, a.x_stride1, y, m, ys0, ys1, a.d, a.px, py, self};
  if (a.grad_x != nullptr) {
    launch_sweep<T, K, true, true>(xs, kern, partial, a.grad_x, stream);
    if (!self && a.grad_y != nullptr) {
      const PairSweep<T> swapped{y, m, ys0, ys1, a.x, a.n, a.x_stride0, a.x_stride1, a.d, py, a.px, false};
      launch_sweep<T, K, false, true>(swapped, kern, nullptr, a.grad_y, stream);
    }
  } else {
    launch_sweep<T, K, true, false>(xs, kern, partial, nullptr, stream);
  }
  // A self sweep visits every unordered pair twice.
  sum_partials_kernel<<<1, 256, 0, stream>>>(partial, blocks_x, self ? 0.5 : 1.0, a.value);
  check_launch("sum_partials_kernel");
}

}  // namespace cuda
}  // namespace gaussreg
