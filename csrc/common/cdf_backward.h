// The backward of the CUDA cdf_attraction engine (SPEC 1, the distances term's gradient):
// g_i = scale * sum_{j != i} s_ij (z_i - z_j), s_ij = sgn(e) of pair k(i, j) from the bit sets
// (p = 1) or its residual e (p = 2). Written once for the device (csrc/cuda/cdf_attraction.cu's
// signed_differences_kernel) and for a host emulation of a thread block
// (tests/host/cdf_backward.cpp runs it with real barriers against a brute-force sum).
//
// A block owns kBackRows = 64 rows, each of its 8 warps 8 rows with the lanes along D (DPL
// coordinates a lane, a chunk of 32 DPL coordinates at a time), and sweeps j in tiles of 32
// whose z_j and s_ij are staged in shared memory (the s_ij read along consecutive pair
// indices). Every row's sum runs over j in increasing order in one thread with fma.
//
// A Block provides thread(), threads() and sync() (a barrier of every thread of the block).
#pragma once

#include <cstdint>

#include "config.h"
#include "pair_index.h"

namespace gaussreg {

constexpr int kBackThreads = 256;
constexpr int kBackRows = 64;  // 8 warps x 8 rows
constexpr int kRowsPerWarp = 8;
constexpr int kBackCols = 32;

template <typename T>
constexpr int kWeightPad = 16 / static_cast<int>(sizeof(T));  // keeps rows 16-byte aligned for vector loads

template <typename T>
using BackWeights = T[kBackCols][kBackRows + kWeightPad<T>];

template <typename T, int DPL>
using BackColumns = T[kBackCols][32 * DPL];

template <typename T>
struct SignedDifferences {
  const T* z;
  int64_t n, d;
  int p;
  const unsigned long long* pos_bits;
  const unsigned long long* neg_bits;
  const T* residual;
  T scale;
  T* grad;
};

// s_ij: sgn(e) from the bit sets (p = 1) or e (p = 2) at k(min, max); 0 off the pairs.
template <typename T>
GAUSSREG_HD T signed_weight(const SignedDifferences<T>& a, int64_t i, int64_t j) {
  if (i == j || i >= a.n || j >= a.n) return T(0);
  const uint64_t n = static_cast<uint64_t>(a.n);
  const uint64_t k = i < j ? pair_index(n, i, j) : pair_index(n, j, i);
  if (a.p == 2) return a.residual[k];
  const unsigned long long bit = 1ull << (k & 63);
  if (a.pos_bits[k >> 6] & bit) return T(1);
  return (a.neg_bits[k >> 6] & bit) ? T(-1) : T(0);
}

// weights[jj][r] = s(i0 + r, j0 + jj). Left of the diagonal, k(j, i0 + r) runs along r;
// elsewhere k(i, j0 + jj) runs along jj: the lanes follow whichever is consecutive.
template <typename T, typename Block>
GAUSSREG_HD void stage_signed_weights(const SignedDifferences<T>& a, int64_t i0, int64_t j0, BackWeights<T>& weights,
                                      const Block& block) {
  if (j0 + kBackCols <= i0) {
    for (int e = block.thread(); e < kBackCols * kBackRows; e += block.threads()) {
      const int r = e % kBackRows, jj = e / kBackRows;
      weights[jj][r] = signed_weight(a, i0 + r, j0 + jj);
    }
  } else {
    const int lane = block.thread() & 31, warp = block.thread() >> 5;
    for (int q = 0; q < kRowsPerWarp; ++q) {
      const int r = warp * kRowsPerWarp + q;
      weights[lane][r] = signed_weight(a, i0 + r, j0 + lane);
    }
  }
}

// The 8 weights of a warp's rows against one partner (16-byte aligned: vector loads on the device).
GAUSSREG_HD void load_row_weights(const float* p, float (&s)[kRowsPerWarp]) {
#if defined(__CUDA_ARCH__)
  const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
  s[0] = lo.x, s[1] = lo.y, s[2] = lo.z, s[3] = lo.w, s[4] = hi.x, s[5] = hi.y, s[6] = hi.z, s[7] = hi.w;
#else
  for (int q = 0; q < kRowsPerWarp; ++q) s[q] = p[q];
#endif
}

GAUSSREG_HD void load_row_weights(const double* p, double (&s)[kRowsPerWarp]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
  for (int h = 0; h < kRowsPerWarp / 2; ++h) {
    const double2 v = reinterpret_cast<const double2*>(p)[h];
    s[2 * h] = v.x, s[2 * h + 1] = v.y;
  }
#else
  for (int q = 0; q < kRowsPerWarp; ++q) s[q] = p[q];
#endif
}

// The block of rows [i0, i0 + 64) (i0 = block_index * 64): g_i for its rows, coordinates in
// chunks of 32 * DPL (DPL per lane, kept in registers), written to a.grad.
template <typename T, int DPL, typename Block>
GAUSSREG_HD void signed_differences_rows(const SignedDifferences<T>& a, int64_t block_index, Block& block,
                                         BackWeights<T>& weights, BackColumns<T, DPL>& cols) {
  constexpr int W = 32 * DPL;
  const int lane = block.thread() & 31, warp = block.thread() >> 5;
  const int64_t i0 = block_index * kBackRows;
  const int64_t first_row = i0 + warp * kRowsPerWarp;
  for (int64_t c0 = 0; c0 < a.d; c0 += W) {
    T zi[kRowsPerWarp][DPL], acc[kRowsPerWarp][DPL];
    GAUSSREG_UNROLL
    for (int q = 0; q < kRowsPerWarp; ++q) {
      GAUSSREG_UNROLL
      for (int u = 0; u < DPL; ++u) {
        const int64_t i = first_row + q, c = c0 + lane + 32 * u;
        zi[q][u] = i < a.n && c < a.d ? a.z[i * a.d + c] : T(0);
        acc[q][u] = T(0);
      }
    }
    for (int64_t j0 = 0; j0 < a.n; j0 += kBackCols) {
      block.sync();  // the previous tile has been read
      for (int e = block.thread(); e < kBackCols * W; e += block.threads()) {
        const int jj = e / W, c = e % W;
        const int64_t j = j0 + jj;
        cols[jj][c] = j < a.n && c0 + c < a.d ? a.z[j * a.d + c0 + c] : T(0);
      }
      stage_signed_weights(a, i0, j0, weights, block);
      block.sync();
      const int width = static_cast<int>(a.n - j0 < kBackCols ? a.n - j0 : kBackCols);
      for (int jj = 0; jj < width; ++jj) {
        T zj[DPL], s[kRowsPerWarp];
        GAUSSREG_UNROLL
        for (int u = 0; u < DPL; ++u) zj[u] = cols[jj][lane + 32 * u];
        load_row_weights(&weights[jj][warp * kRowsPerWarp], s);
        // Branch-free: s = 0 adds an exact zero, as skipping the pair would.
        GAUSSREG_UNROLL
        for (int q = 0; q < kRowsPerWarp; ++q)
          GAUSSREG_UNROLL
          for (int u = 0; u < DPL; ++u) acc[q][u] = fused_multiply_add(s[q], zi[q][u] - zj[u], acc[q][u]);
      }
    }
    GAUSSREG_UNROLL
    for (int q = 0; q < kRowsPerWarp; ++q) {
      GAUSSREG_UNROLL
      for (int u = 0; u < DPL; ++u) {
        const int64_t i = first_row + q, c = c0 + lane + 32 * u;
        if (i < a.n && c < a.d) a.grad[i * a.d + c] = a.scale * acc[q][u];
      }
    }
  }
}

}  // namespace gaussreg
