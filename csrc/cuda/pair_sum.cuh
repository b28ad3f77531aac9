// CUDA engine for the pair-kernel sums of SPEC 3, 4 and 5: value and gradient fused in one
// sweep, O((n + m) D) memory, no n x m matrix, no atomics, no host synchronisation. One
// thread owns one row x_i and sweeps y in tiles staged in shared memory (every thread reads
// the same y_j: a broadcast). Two sweeps, both in common/pair_tiles.h (shared with a host
// emulation of a block, tests/host/pair_tiles.cpp):
//
// - float32 with D in {16, 32, 64}: x_i and its gradient live in registers for the whole
//   sweep and the tile holds whole points (pair_rows_kernel);
// - every other D and float64: a chunk of coordinates at a time (a zero-padded chunk
//   changes neither distance nor gradient), so the shared memory a block needs does not
//   grow with D (pair_tiles_kernel).
//
// A self sum visits the ordered pairs j != i (gradient complete in one launch; value
// halved); a cross sum launches a second sweep with the roles of x and y swapped for the y
// gradient. At small n both sweeps split the partners into ranges (common/partner_split.h),
// one row of blocks each, so that the grid fills the GPU; the ranges' partial gradients are
// added in range order by one more kernel.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "common/config.h"
#include "common/pair_sum_args.h"
#include "common/partner_split.h"
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

static_assert(kRowsPerBlock == kSplitRowsPerBlock, "common/partner_split.h counts blocks of kRowsPerBlock rows");

// The partner ranges of a sweep (the same rule for both sweeps: kRowsPerBlock rows a block).
template <typename T>
PartnerSplit sweep_split(index_t rows, index_t partners, index_t d) {
  return partner_split(rows, partners, d, sizeof(T));
}

// The workspace: the x sweep's per-block partial sums (one per block and range) and
// sum_partials' scratch, then the partial-gradient slabs of the larger of the two sweeps.
struct PairSumLayout {
  index_t partials;  // blocks x ranges of the x sweep
  index_t slab;      // elements of the slabs (0: no split)
  std::size_t bytes;
};

template <typename T>
PairSumLayout pair_sum_layout(index_t n, index_t m_or_0, index_t d) {
  const index_t m = m_or_0 == 0 ? n : m_or_0;
  const PartnerSplit xs = sweep_split<T>(n, m, d), ys = sweep_split<T>(m, n, d);
  PairSumLayout l{};
  l.partials = ceil_div(n, kRowsPerBlock) * xs.count;
  const index_t x_slab = xs.count > 1 ? xs.count * n * d : 0;
  const index_t y_slab = m_or_0 != 0 && ys.count > 1 ? ys.count * m * d : 0;
  l.slab = std::max(x_slab, y_slab);
  l.bytes = sizeof(double) * static_cast<std::size_t>(l.partials + sum_partials_scratch(l.partials)) +
            sizeof(T) * static_cast<std::size_t>(l.slab);
  return l;
}

template <typename T>
std::size_t pair_sum_workspace_bytes(index_t n, index_t m_or_0, index_t d) {
  return pair_sum_layout<T>(n, m_or_0, d).bytes;
}

// Points per shared-memory tile of the register sweep: as many as fit, at most kTileMax.
template <typename T>
int tile_points(index_t d) {
  const index_t fit = static_cast<index_t>(kSharedBudget / (sizeof(T) * (d + 1)));
  return static_cast<int>(std::min<index_t>(kTileMax, fit));
}

// G = the sum of the ranges' partial gradients (`ranges` slabs of `count` values), added in
// range order in float64 and rounded once.
template <typename T>
__global__ void sum_gradient_ranges_kernel(const T* __restrict__ slabs, index_t count, index_t ranges,
                                           T* __restrict__ grad) {
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count; e += step) {
    double g = 0;
    for (index_t r = 0; r < ranges; ++r) g += static_cast<double>(slabs[r * count + e]);
    grad[e] = static_cast<T>(g);
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

// The register sweep (compile-time D = DT) of the block's rows over its partner range
// (blockIdx.y, `range_width` partners), tiles of `tile` whole points in dynamic shared
// memory. kValue: per-block partial sums of k; kGrad: G_i = sum_j k'(t_ij) (a_i - b_j) over
// the range into its slab of grad (na, DT) contiguous (SPEC 3, 4, 5 through the kernel K).
template <typename T, typename K, int DT, bool kValue, bool kGrad>
__global__ void __launch_bounds__(kRowsPerBlock)
pair_rows_kernel(PairSweep<T> s, K kern, int tile, index_t range_width, double* __restrict__ block_values,
                 T* __restrict__ grad) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile_pts = reinterpret_cast<T*>(smem_raw);  // (tile, DT)
  DeviceBlock<T> block{tile_pts, tile_pts + tile * DT};
  const PairSweep<T> range = partner_range(s, static_cast<index_t>(blockIdx.y) * range_width, range_width);
  if (kGrad) grad += static_cast<index_t>(blockIdx.y) * s.na * DT;
  const index_t row0 = static_cast<index_t>(blockIdx.x) * kRowsPerBlock;
  const double total = sweep_rows_in_registers<T, K, DT, kValue, kGrad>(range, kern, row0, tile, block, grad);
  if (kValue && threadIdx.x == 0) block_values[static_cast<index_t>(blockIdx.y) * gridDim.x + blockIdx.x] = total;
}

// The chunked sweep of the block's rows over its partner range (blockIdx.y, `range_width`
// partners). kValue: per-block partial sums of k; kGrad: G_i = sum_j k'(t_ij) (a_i - b_j) over
// the range into its slab of grad (na, d) contiguous (SPEC 3, 4, 5 through the kernel K).
template <typename T, typename K, bool kValue, bool kGrad>
__global__ void __launch_bounds__(kRowsPerBlock)
pair_tiles_kernel(PairSweep<T> s, K kern, index_t range_width, double* __restrict__ block_values,
                  T* __restrict__ grad) {
  using Shape = PairTileShape<T>;
  __shared__ __align__(16) T tile[Shape::kTile * Shape::kChunk];
  __shared__ T params[Shape::kTile];
  DeviceBlock<T> block{tile, params};
  const PairSweep<T> range = partner_range(s, static_cast<index_t>(blockIdx.y) * range_width, range_width);
  if (kGrad) grad += static_cast<index_t>(blockIdx.y) * s.na * s.d;
  const index_t row0 = static_cast<index_t>(blockIdx.x) * kRowsPerBlock;
  const double total = sweep_rows<T, K, kValue, kGrad>(range, kern, row0, block, grad);
  if (kValue && threadIdx.x == 0) block_values[static_cast<index_t>(blockIdx.y) * gridDim.x + blockIdx.x] = total;
}

// The register sweep at compile-time D = DT on `grid` (row blocks x partner ranges).
template <typename T, typename K, int DT, bool kValue, bool kGrad>
void launch_rows(const PairSweep<T>& s, const K& kern, dim3 grid, index_t range_width, double* block_values, T* out,
                 cudaStream_t stream) {
  const int tile = tile_points<T>(DT);
  const std::size_t smem = sizeof(T) * static_cast<std::size_t>(tile) * (DT + 1);
  pair_rows_kernel<T, K, DT, kValue, kGrad><<<grid, kRowsPerBlock, smem, stream>>>(s, kern, tile, range_width,
                                                                                   block_values, out);
  check_launch("pair_rows_kernel");
}

// Launches the sweep on `grid` into `out`: float32 at D = 16, 32, 64 the register sweep (its
// row and gradient fit the registers), every other D and float64 the chunked one.
template <typename T, typename K, bool kValue, bool kGrad>
void launch_kernel(const PairSweep<T>& s, const K& kern, dim3 grid, index_t range_width, double* block_values, T* out,
                   cudaStream_t stream) {
  if constexpr (sizeof(T) == 4) {
    if (s.d == 16) return launch_rows<T, K, 16, kValue, kGrad>(s, kern, grid, range_width, block_values, out, stream);
    if (s.d == 32) return launch_rows<T, K, 32, kValue, kGrad>(s, kern, grid, range_width, block_values, out, stream);
    if (s.d == 64) return launch_rows<T, K, 64, kValue, kGrad>(s, kern, grid, range_width, block_values, out, stream);
  }
  pair_tiles_kernel<T, K, kValue, kGrad><<<grid, kRowsPerBlock, 0, stream>>>(s, kern, range_width, block_values, out);
  check_launch("pair_tiles_kernel");
}

// One sweep over sweep_split's partner ranges: a grid of row blocks x ranges; with more than
// one range the blocks write partial gradients into `slabs`, then added into grad in range
// order.
template <typename T, typename K, bool kValue, bool kGrad>
void launch_sweep(const PairSweep<T>& s, const K& kern, double* block_values, T* grad, T* slabs, cudaStream_t stream) {
  const PartnerSplit split = sweep_split<T>(s.na, s.nb, s.d);
  const dim3 grid(static_cast<unsigned>(ceil_div(s.na, kRowsPerBlock)), static_cast<unsigned>(split.count));
  const bool slabbed = kGrad && split.count > 1;
  launch_kernel<T, K, kValue, kGrad>(s, kern, grid, split.width, block_values, slabbed ? slabs : grad, stream);
  if (slabbed) {
    const index_t count = s.na * s.d;
    const auto blocks = static_cast<unsigned>(std::min<index_t>(ceil_div(count, 256), 4096));
    sum_gradient_ranges_kernel<T><<<blocks, 256, 0, stream>>>(slabs, count, split.count, grad);
    check_launch("sum_gradient_ranges_kernel");
  }
}

template <typename T>
void check_args(const PairSumArgs<T>& a) {
  check_pair_sum_args(a, pair_sum_workspace_bytes<T>(a.n, a.y ? a.m : 0, a.d));
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
  const PairSumLayout layout = pair_sum_layout<T>(a.n, a.y ? a.m : 0, a.d);
  double* partial = static_cast<double*>(a.workspace);
  double* scratch = partial + layout.partials;
  T* slabs = reinterpret_cast<T*>(scratch + sum_partials_scratch(layout.partials));
  const PairSweep<T> xs{a.x, a.n, a.x_stride0, a.x_stride1, y, m, ys0, ys1, a.d, a.px, py, self, 0};
  if (a.grad_x != nullptr) {
    launch_sweep<T, K, true, true>(xs, kern, partial, a.grad_x, slabs, stream);
    if (!self && a.grad_y != nullptr) {
      const PairSweep<T> swapped{y, m, ys0, ys1, a.x, a.n, a.x_stride0, a.x_stride1, a.d, py, a.px, false, 0};
      launch_sweep<T, K, false, true>(swapped, kern, nullptr, a.grad_y, slabs, stream);
    }
  } else {
    launch_sweep<T, K, true, false>(xs, kern, partial, nullptr, slabs, stream);
  }
  // A self sweep visits every unordered pair twice.
  sum_partials(partial, layout.partials, self ? 0.5 : 1.0, a.value, scratch, stream);
}

}  // namespace cuda
}  // namespace gaussreg
