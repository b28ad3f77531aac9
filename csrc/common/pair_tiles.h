// The CUDA pair-sum engine's two sweeps (SPEC 3, 4, 5), written once for the device and for
// a host emulation of a thread block (tests/host/pair_tiles.cpp runs them with real
// barriers, so their indexing is checked on any machine). In both, one thread owns one row
// a_i and sweeps the partners b_j in tiles staged in shared memory.
//
// The register sweep (sweep_rows_in_registers, float32 at D = 16, 32, 64): the row and its
// gradient stay in registers for the whole sweep and a tile holds whole points.
//
// The chunked sweep (sweep_rows, every other D and float64): the partners in tiles of
// kTile points, a chunk of kChunk coordinates at a time: any D, float32 or float64. A chunk of
// the tile is staged in shared memory (zero past the tile's points and past D: a zero
// coordinate adds nothing to a distance or a gradient), the row's chunk is held in
// registers and reused by the tile's kTile pairs, and each pair's squared distance stays in
// a register until the tile's last chunk. Then the kernel's value and derivative k'(t) per
// pair, and (kGrad) a second pass over the chunks adds sum_j k'(t_ij)(a_i - b_j) to the
// row's gradient, chunk by chunk: per pair and coordinate, one shared load (vectorisable),
// one subtraction and one fused multiply-add in each pass.
//
// A Block provides: thread(), threads(), sync() (a barrier of every thread of the block),
// ys() (kTile x kChunk values) and yp() (kTile values) shared by the block, and
// sum(double) (the block's sum, valid in thread 0, in a fixed order).
#pragma once

#include <cmath>

#include "config.h"
#include "pair_sum_args.h"

namespace gaussreg {

// One sweep of rows a (na points) against partners b (nb points). self: the partners are
// the rows from row partner0 on (b = a + partner0 rows, a range of them when the sweep is
// split), and the diagonal, partner j = row partner0 + j, is not a pair.
template <typename T>
struct PairSweep {
  const T* a;
  index_t na, as0, as1;
  const T* b;
  index_t nb, bs0, bs1;
  index_t d;
  const T* pa;  // optional per-point parameters of a and b
  const T* pb;
  bool self;
  index_t partner0;  // the row that partner 0 is (self sweeps only)
};

// The partners [begin, begin + width) of a sweep (clipped to its partners), as a sweep.
template <typename T>
GAUSSREG_HD PairSweep<T> partner_range(PairSweep<T> s, index_t begin, index_t width) {
  s.b += begin * s.bs0;
  if (s.pb != nullptr) s.pb += begin;
  s.nb = s.nb - begin < width ? s.nb - begin : width;
  s.partner0 += begin;
  return s;
}

template <typename T>
struct PairTileShape {
  // Partners per tile (their distances stay in registers) and coordinates per chunk (64
  // bytes of a row); float64 holds half as many partners, to stay within 128 registers.
  static constexpr int kTile = sizeof(T) == 4 ? 32 : 16;
  static constexpr int kChunk = sizeof(T) == 4 ? 16 : 8;
};

// Coordinates [c0, c0 + kChunk) of the tile's points j0 .. j0 + kTile into ys, this
// thread's share of them (consecutive threads read consecutive coordinates of a point).
template <typename T, typename Block>
GAUSSREG_HD void stage_chunk(const PairSweep<T>& s, Block& block, index_t j0, index_t c0) {
  constexpr int C = PairTileShape<T>::kChunk;
  T* ys = block.ys();
  for (int e = block.thread(); e < PairTileShape<T>::kTile * C; e += block.threads()) {
    const index_t j = j0 + e / C, c = c0 + e % C;
    ys[e] = (j < s.nb && c < s.d) ? s.b[j * s.bs0 + c * s.bs1] : T(0);
  }
}

// The tile's per-point parameters into yp (0 past the tile and without parameters).
template <typename T, typename Block>
GAUSSREG_HD void stage_parameters(const PairSweep<T>& s, Block& block, index_t j0) {
  T* yp = block.yp();
  for (int e = block.thread(); e < PairTileShape<T>::kTile; e += block.threads())
    yp[e] = (s.pb != nullptr && j0 + e < s.nb) ? s.pb[j0 + e] : T(0);
}

// Row i's coordinates [c0, c0 + kChunk), 0 past D (and for a thread without a row).
template <typename T>
GAUSSREG_HD void load_row_chunk(const PairSweep<T>& s, index_t i, bool active, index_t c0,
                                T (&x)[PairTileShape<T>::kChunk]) {
  GAUSSREG_UNROLL
  for (int k = 0; k < PairTileShape<T>::kChunk; ++k)
    x[k] = (active && c0 + k < s.d) ? s.a[i * s.as0 + (c0 + k) * s.as1] : T(0);
}

// t_j += sum over the chunk of (x_k - y_jk)^2 for the tile's points.
template <typename T>
GAUSSREG_HD void add_chunk_distances(const T (&x)[PairTileShape<T>::kChunk], const T* ys,
                                     T (&t)[PairTileShape<T>::kTile]) {
  constexpr int C = PairTileShape<T>::kChunk;
  GAUSSREG_UNROLL
  for (int jj = 0; jj < PairTileShape<T>::kTile; ++jj) {
    T acc = t[jj];
    GAUSSREG_UNROLL
    for (int k = 0; k < C; ++k) {
      const T diff = x[k] - ys[jj * C + k];
      acc = fused_multiply_add(diff, diff, acc);
    }
    t[jj] = acc;
  }
}

// Bit jj set for the tile's partners j0 + jj that make a pair with the row: within the
// partners, and not partner `diagonal` (the row itself in a self sweep, else -1). The
// unrolled tile tests a bit of one word, not two 64-bit comparisons a partner: with those,
// ptxas took 40 more registers (25% -> 18.75% occupancy) once the partner count was a
// block's own (a range) rather than a kernel argument.
template <typename T>
GAUSSREG_HD unsigned tile_pairs(const PairSweep<T>& s, index_t diagonal, bool active, index_t j0) {
  constexpr int J = PairTileShape<T>::kTile;
  static_assert(J <= 32, "one bit a partner");
  const index_t left = s.nb - j0, d = diagonal - j0;
  const int count = active ? static_cast<int>(left < J ? left : J) : 0;
  const int skip = (d >= 0 && d < J) ? static_cast<int>(d) : 32;
  unsigned mask = count == 32 ? ~0u : (1u << count) - 1u;
  if (skip < 32) mask &= ~(1u << skip);
  return mask;
}

// The tile's kernel values into v and derivatives k'(t_ij) into t (0 for the partners
// that tile_pairs leaves out).
template <typename T, typename K>
GAUSSREG_HD void finish_tile(const K& kern, unsigned pairs, T pi, const T* yp, T (&t)[PairTileShape<T>::kTile],
                             double& v) {
  const int terms = kern.num_terms();
  GAUSSREG_UNROLL
  for (int jj = 0; jj < PairTileShape<T>::kTile; ++jj) {
    T k = 0, dk = 0;
    if ((pairs >> jj) & 1u) {
      GAUSSREG_NO_UNROLL  // one compact loop in each of the kTile unrolled copies
      for (int term = 0; term < terms; ++term) kern.eval(term, t[jj], pi, yp[jj], k, dk);
    }
    v += static_cast<double>(k);
    t[jj] = dk;
  }
}

// g_k += sum_j k'(t_ij) (x_k - y_jk) over the tile, for the chunk's coordinates.
template <typename T>
GAUSSREG_HD void add_chunk_gradient(const T (&x)[PairTileShape<T>::kChunk], const T* ys,
                                    const T (&dk)[PairTileShape<T>::kTile], T (&g)[PairTileShape<T>::kChunk]) {
  constexpr int C = PairTileShape<T>::kChunk;
  GAUSSREG_UNROLL
  for (int jj = 0; jj < PairTileShape<T>::kTile; ++jj) {
    GAUSSREG_UNROLL
    for (int k = 0; k < C; ++k) g[k] = fused_multiply_add(dk[jj], x[k] - ys[jj * C + k], g[k]);
  }
}

// The sweep of one block (rows block_row0 .. + block.threads()): kValue returns the block's
// sum of k over its rows' pairs (valid in thread 0); kGrad writes G_i = sum_j k'(t_ij)(a_i - b_j)
// into grad (na x d, contiguous), the first tile's chunk written, later tiles' added.
template <typename T, typename K, bool kValue, bool kGrad, typename Block>
GAUSSREG_HD double sweep_rows(const PairSweep<T>& s, const K& kern, index_t block_row0, Block& block, T* grad) {
  constexpr int C = PairTileShape<T>::kChunk, J = PairTileShape<T>::kTile;
  const index_t i = block_row0 + block.thread();
  const bool active = i < s.na;
  const T pi = (active && s.pa != nullptr) ? s.pa[i] : T(0);
  const index_t diagonal = s.self ? i - s.partner0 : index_t(-1);
  double v = 0;
  // Every bound below is the same for all threads of the block: each reaches every sync().
  for (index_t j0 = 0; j0 < s.nb; j0 += J) {
    T t[J];
    GAUSSREG_UNROLL
    for (int jj = 0; jj < J; ++jj) t[jj] = T(0);
    for (index_t c0 = 0; c0 < s.d; c0 += C) {
      block.sync();  // the previous chunk's readers are done with ys (and yp)
      stage_chunk(s, block, j0, c0);
      if (c0 == 0) stage_parameters(s, block, j0);
      block.sync();
      T x[C];
      load_row_chunk(s, i, active, c0, x);
      add_chunk_distances(x, block.ys(), t);
    }
    finish_tile(kern, tile_pairs(s, diagonal, active, j0), pi, block.yp(), t, v);
    if (kGrad) {
      for (index_t c0 = 0; c0 < s.d; c0 += C) {
        block.sync();
        stage_chunk(s, block, j0, c0);
        block.sync();
        T x[C], g[C];
        load_row_chunk(s, i, active, c0, x);
        GAUSSREG_UNROLL
        for (int k = 0; k < C; ++k) g[k] = (active && j0 > 0 && c0 + k < s.d) ? grad[i * s.d + c0 + k] : T(0);
        add_chunk_gradient(x, block.ys(), t, g);
        GAUSSREG_UNROLL
        for (int k = 0; k < C; ++k)
          if (active && c0 + k < s.d) grad[i * s.d + c0 + k] = g[k];
      }
    }
  }
  if (!kValue) return 0.0;
  return block.sum(v);
}

// The register sweep at compile-time D = DT: rows block_row0 .. + block.threads() against
// the partners in tiles of `tile` whole points (ys(): tile x DT values, yp(): tile values).
// kValue returns the block's sum of k over its rows' pairs (valid in thread 0); kGrad writes
// G_i = sum_j k'(t_ij)(a_i - b_j) into grad (na x DT, contiguous).
template <typename T, typename K, int DT, bool kValue, bool kGrad, typename Block>
GAUSSREG_HD double sweep_rows_in_registers(const PairSweep<T>& s, const K& kern, index_t block_row0, int tile,
                                           Block& block, T* grad) {
  T* tile_pts = block.ys();
  T* tile_par = block.yp();
  const index_t i = block_row0 + block.thread();
  const bool active = i < s.na;
  const T pi = (active && s.pa != nullptr) ? s.pa[i] : T(0);
  const index_t diagonal = s.self ? i - s.partner0 : index_t(-1);
  T xr[DT];
  T g[DT];
  GAUSSREG_UNROLL
  for (int c = 0; c < DT; ++c) {
    xr[c] = active ? s.a[i * s.as0 + c * s.as1] : T(0);
    g[c] = T(0);
  }
  const int terms = kern.num_terms();
  double v = 0;
  // Every bound below is the same for all threads of the block: each reaches every sync().
  for (index_t j0 = 0; j0 < s.nb; j0 += tile) {
    const int count = static_cast<int>(s.nb - j0 < tile ? s.nb - j0 : tile);
    for (index_t e = block.thread(); e < static_cast<index_t>(count) * DT; e += block.threads()) {
      const index_t jj = e / DT, c = e - jj * DT;
      tile_pts[e] = s.b[(j0 + jj) * s.bs0 + c * s.bs1];
    }
    for (int jj = block.thread(); jj < count; jj += block.threads())
      tile_par[jj] = s.pb != nullptr ? s.pb[j0 + jj] : T(0);
    block.sync();
    if (active) {
      for (int jj = 0; jj < count; ++jj) {
        const T* yj = tile_pts + jj * DT;
        T t = 0;
        GAUSSREG_UNROLL
        for (int c = 0; c < DT; ++c) {
          const T diff = xr[c] - yj[c];
          t = fused_multiply_add(diff, diff, t);
        }
        T k = 0, dk = 0;
        for (int term = 0; term < terms; ++term) kern.eval(term, t, pi, tile_par[jj], k, dk);
        if (j0 + jj == diagonal) k = dk = T(0);  // the row itself is not a pair
        v += static_cast<double>(k);
        if (kGrad) {
          GAUSSREG_UNROLL
          for (int c = 0; c < DT; ++c) g[c] = fused_multiply_add(dk, xr[c] - yj[c], g[c]);
        }
      }
    }
    block.sync();  // the tile's readers are done before the next tile is staged
  }
  if (kGrad && active) {
    GAUSSREG_UNROLL
    for (int c = 0; c < DT; ++c) grad[i * DT + c] = g[c];
  }
  if (!kValue) return 0.0;
  return block.sum(v);
}

}  // namespace gaussreg
