// CUDA engine for the pair-kernel sums of SPEC 3, 4 and 5: value and gradient fused in one
// pass, O((n + m) D) memory, no n x m matrix, no atomics, no host synchronisation.
//
// One thread owns one row x_i and sweeps y in tiles staged in shared memory (every thread
// reads the same y_j: a broadcast). For D in {16, 32, 64 (float)} x_i and its gradient live
// in registers; other D use a run-time loop that keeps the tile's kernel derivatives in
// registers and adds one tile's gradient at a time. A self sum visits the ordered pairs
// j != i (gradient complete in one launch; value halved); a cross sum launches a second
// sweep with the roles of x and y swapped for the y gradient.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/config.h"
#include "common/pair_sum_args.h"
#include "cuda/check.cuh"
#include "cuda/reduce.cuh"

namespace gaussreg {
namespace cuda {

constexpr int kRowsPerBlock = 128;
constexpr int kTileMax = 32;
// Dynamic shared memory for the tile: the 48 KiB a launch gets without opting in, less the
// static 32 doubles of block_sum (static + dynamic must fit together).
constexpr std::size_t kSharedBudget = 48 * 1024 - 32 * sizeof(double);

// Points per shared-memory tile: as many as fit the budget, at most kTileMax.
template <typename T>
int tile_points(index_t d) {
  const index_t fit = static_cast<index_t>(kSharedBudget / (sizeof(T) * (d + 1)));
  return static_cast<int>(std::min<index_t>(kTileMax, fit));
}

inline std::size_t pair_sum_workspace_bytes(index_t n, index_t m_or_0) {
  const index_t m = m_or_0 == 0 ? n : m_or_0;
  return sizeof(double) * static_cast<std::size_t>(ceil_div(n, kRowsPerBlock) + ceil_div(m, kRowsPerBlock));
}

// Sweep of rows `a` (na points) against `b` (nb points). kValue: write per-block partial
// sums of k; kGrad: write G_i = sum_j k'(t_ij) (a_i - b_j) into grad (na, d) contiguous.
template <typename T, typename K, int DT, bool kValue, bool kGrad>
__global__ void __launch_bounds__(kRowsPerBlock)
pair_rows_kernel(const T* __restrict__ a, index_t na, index_t as0, index_t as1, const T* __restrict__ b, index_t nb,
                 index_t bs0, index_t bs1, index_t d, const T* __restrict__ pa, const T* __restrict__ pb, K kern,
                 bool self, int tile, double* __restrict__ block_values, T* __restrict__ grad) {
  extern __shared__ unsigned char smem_raw[];
  T* tile_pts = reinterpret_cast<T*>(smem_raw);  // (tile, d)
  T* tile_par = tile_pts + tile * d;               // (tile)
  const index_t i = static_cast<index_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x;
  const bool active = i < na;
  const T pi = (active && pa != nullptr) ? pa[i] : T(0);
  constexpr int R = DT > 0 ? DT : 1;
  T xr[R];
  T g[R];
  if (DT > 0) {
#pragma unroll
    for (int c = 0; c < R; ++c) {
      xr[c] = active ? a[i * as0 + c * as1] : T(0);
      g[c] = T(0);
    }
  }
  const int terms = kern.num_terms();
  double v = 0;
  for (index_t j0 = 0; j0 < nb; j0 += tile) {
    const int count = static_cast<int>(nb - j0 < tile ? nb - j0 : tile);
    for (index_t e = threadIdx.x; e < static_cast<index_t>(count) * d; e += blockDim.x) {
      const index_t jj = e / d, c = e - jj * d;
      tile_pts[e] = b[(j0 + jj) * bs0 + c * bs1];
    }
    for (int jj = threadIdx.x; jj < count; jj += blockDim.x) tile_par[jj] = pb != nullptr ? pb[j0 + jj] : T(0);
    __syncthreads();
    if (active) {
      T wt[kTileMax];
      for (int jj = 0; jj < count; ++jj) {
        const T* yj = tile_pts + jj * d;
        T t = 0;
        if (DT > 0) {
#pragma unroll
          for (int c = 0; c < R; ++c) {
            const T diff = xr[c] - yj[c];
            t += diff * diff;
          }
        } else {
          for (index_t c = 0; c < d; ++c) {
            const T diff = a[i * as0 + c * as1] - yj[c];
            t += diff * diff;
          }
        }
        T k = 0, dk = 0;
        for (int s = 0; s < terms; ++s) kern.eval(s, t, pi, tile_par[jj], k, dk);
        if (self && j0 + jj == i) k = dk = T(0);  // the diagonal is not a pair
        v += static_cast<double>(k);
        if (kGrad) {
          if (DT > 0) {
#pragma unroll
            for (int c = 0; c < R; ++c) g[c] += dk * (xr[c] - yj[c]);
          } else {
            wt[jj] = dk;
          }
        }
      }
      if (kGrad && DT == 0) {
        for (index_t c = 0; c < d; ++c) {
          const T xc = a[i * as0 + c * as1];
          T acc = 0;
          for (int jj = 0; jj < count; ++jj) acc += wt[jj] * (xc - tile_pts[jj * d + c]);
          grad[i * d + c] += acc;
        }
      }
    }
    __syncthreads();
  }
  if (kGrad && DT > 0 && active) {
#pragma unroll
    for (int c = 0; c < R; ++c) grad[i * d + c] = g[c];
  }
  if (kValue) {
    const double total = block_sum(v);
    if (threadIdx.x == 0) block_values[blockIdx.x] = total;
  }
}

template <typename T, typename K, int DT, bool kValue, bool kGrad>
void launch_rows(const T* a, index_t na, index_t as0, index_t as1, const T* b, index_t nb, index_t bs0, index_t bs1,
                 index_t d, const T* pa, const T* pb, const K& kern, bool self, double* block_values, T* grad,
                 cudaStream_t stream) {
  const int tile = tile_points<T>(d);
  const std::size_t smem = sizeof(T) * static_cast<std::size_t>(tile) * (d + 1);
  const index_t blocks = ceil_div(na, kRowsPerBlock);
  if (kGrad && DT == 0) check_cuda(cudaMemsetAsync(grad, 0, sizeof(T) * na * d, stream), "zero gradient");
  pair_rows_kernel<T, K, DT, kValue, kGrad><<<static_cast<unsigned>(blocks), kRowsPerBlock, smem, stream>>>(
      a, na, as0, as1, b, nb, bs0, bs1, d, pa, pb, kern, self, tile, block_values, grad);
  check_launch("pair_rows_kernel");
}

// Compile-time D where registers pay (float: 16, 32, 64 hold x_i and its gradient in
// registers), run-time D otherwise; double always takes the run-time path, which keeps
// the build time of the module down (double is the checking precision, not the fast one).
template <typename T, typename F>
void dispatch_dim(index_t d, F&& f) {
  if constexpr (sizeof(T) == 4) {
    if (d == 16) return f(std::integral_constant<int, 16>{});
    if (d == 32) return f(std::integral_constant<int, 32>{});
    if (d == 64) return f(std::integral_constant<int, 64>{});
  }
  return f(std::integral_constant<int, 0>{});
}

template <typename T>
void check_args(const PairSumArgs<T>& a) {
  if (a.n < 1 || a.d < 1 || (a.y != nullptr && a.m < 1))
    throw std::invalid_argument("pair_sum: empty input (n=" + std::to_string(a.n) + ", m=" + std::to_string(a.m) +
                                ", d=" + std::to_string(a.d) + ")");
  if (tile_points<T>(a.d) < 1)
    throw std::invalid_argument("pair_sum (CUDA): D = " + std::to_string(a.d) + " is too large for one shared-memory "
                                "row; the CUDA kernels support D <= " +
                                std::to_string(kSharedBudget / sizeof(T) - 1));
  if (a.x == nullptr) throw std::invalid_argument("pair_sum: null pointer for x");
  if (a.value == nullptr) throw std::invalid_argument("pair_sum: no output for the value");
  if (a.grad_x == nullptr && a.grad_y != nullptr)
    throw std::invalid_argument("pair_sum: a y gradient alone is not computed; swap x and y");
  const std::size_t need = pair_sum_workspace_bytes(a.n, a.y ? a.m : 0);
  if (a.workspace == nullptr || a.workspace_bytes < need)
    throw std::invalid_argument("pair_sum: workspace of " + std::to_string(a.workspace_bytes) + " bytes, need " +
                                std::to_string(need));
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
  dispatch_dim<T>(a.d, [&](auto dim) {
    constexpr int DT = decltype(dim)::value;
    if (a.grad_x != nullptr) {
      launch_rows<T, K, DT, true, true>(a.x, a.n, a.x_stride0, a.x_stride1, y, m, ys0, ys1, a.d, a.px, py, kern, self,
                                        partial, a.grad_x, stream);
      if (!self && a.grad_y != nullptr)
        launch_rows<T, K, DT, false, true>(y, m, ys0, ys1, a.x, a.n, a.x_stride0, a.x_stride1, a.d, py, a.px, kern,
                                           false, nullptr, a.grad_y, stream);
    } else {
      launch_rows<T, K, DT, true, false>(a.x, a.n, a.x_stride0, a.x_stride1, y, m, ys0, ys1, a.d, a.px, py, kern, self,
                                         partial, nullptr, stream);
    }
  });
  // A self sweep visits every unordered pair twice.
  sum_partials_kernel<<<1, 256, 0, stream>>>(partial, blocks_x, self ? 0.5 : 1.0, a.value);
  check_launch("sum_partials_kernel");
}

}  // namespace cuda
}  // namespace gaussreg
