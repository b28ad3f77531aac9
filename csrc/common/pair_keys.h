// The keys of the CUDA cdf_attraction engine (SPEC 1: d_ij = |z_i - z_j|^2 / 2 for every pair
// i < j), generated tile by tile, written once for the device (csrc/cuda/cdf_attraction.cu's
// pair_keys_kernel) and for a host emulation of a thread block (tests/host/pair_keys.cpp
// runs it with real barriers, so the tile numbering, the staging and the pair indices are
// checked on any machine).
//
// A tile is 128 rows x 128 columns of pairs, the upper triangle's tiles numbered as pairs
// (bi, bj + 1) of nb + 1 items (bi <= bj); a block of 256 threads (16 x 16) owns a tile, a
// thread 8 x 8 of its pairs (rows ty + 16 r, columns tx + 16 s). The coordinates are
// staged 64 bytes of each point at a time, transposed; each pair's sum runs over the
// coordinates 0..D-1 in order with one fused multiply-add each, as the CPU loop contracts it.
//
// A Block provides thread(), threads() and sync() (a barrier of every thread of the block).
#pragma once

#include <cstdint>

#include "config.h"
#include "pair_index.h"

namespace gaussreg {

constexpr int kKeyTile = 128;    // rows and columns of pairs per key tile
constexpr int kKeyThreads = 256; // 16 x 16 threads a block
constexpr int kKeyMicro = 8;     // 8 x 8 pairs a thread
constexpr int kKeySide = 16;     // threads along a side of the tile

template <typename T>
constexpr int kKeySlab = 64 / static_cast<int>(sizeof(T));  // coordinates staged per step

template <typename T>
using KeySlab = T[kKeySlab<T>][kKeyTile + 1];  // (coordinate, point), padded against bank conflicts

// Tiles of the upper triangle (diagonal tiles included) of n points.
GAUSSREG_HD uint64_t key_tiles(int64_t n) {
  const uint64_t nb = (static_cast<uint64_t>(n) + kKeyTile - 1) / kKeyTile;
  return nb * (nb + 1) / 2;
}

// Coordinates [c0, c0 + width) of points [row0, row0 + kKeyTile), zero past n.
template <typename T, typename Block>
GAUSSREG_HD void stage_key_slab(const T* z, int64_t n, int64_t d, int64_t row0, int64_t c0, int width,
                                KeySlab<T>& slab, const Block& block) {
  for (int e = block.thread(); e < kKeyTile * width; e += block.threads()) {
    const int r = e / width, c = e - r * width;
    const int64_t row = row0 + r;
    slab[c][r] = row < n ? z[row * d + c0 + c] : T(0);
  }
}

// acc[r][s] += (z_i[c] - z_j[c])^2 over the slab, rows ty + 16 r against columns tx + 16 s.
template <typename T>
GAUSSREG_HD void accumulate_key_slab(const KeySlab<T>& rows, const KeySlab<T>& cols, int width, int ty, int tx,
                                     T (&acc)[kKeyMicro][kKeyMicro]) {
  GAUSSREG_UNROLL_TWICE
  for (int c = 0; c < width; ++c) {
    T a[kKeyMicro], b[kKeyMicro];
    GAUSSREG_UNROLL
    for (int r = 0; r < kKeyMicro; ++r) a[r] = rows[c][ty + kKeySide * r];
    GAUSSREG_UNROLL
    for (int s = 0; s < kKeyMicro; ++s) b[s] = cols[c][tx + kKeySide * s];
    GAUSSREG_UNROLL
    for (int r = 0; r < kKeyMicro; ++r) {
      GAUSSREG_UNROLL
      for (int s = 0; s < kKeyMicro; ++s) {
        const T diff = a[r] - b[s];
        acc[r][s] = fused_multiply_add(diff, diff, acc[r][s]);
      }
    }
  }
}

// Every d_ij (i < j) of tile t goes to emit(valid, k(i, j), d_ij); every thread of the
// block calls emit kKeyMicro^2 times (valid = false outside the triangle and past n), so
// emitters may use warp votes. rows and cols: the block's shared staging.
template <typename T, typename Block, typename Emit>
GAUSSREG_HD void emit_key_tile(const T* z, int64_t n, int64_t d, uint64_t t, Block& block, KeySlab<T>& rows,
                               KeySlab<T>& cols, Emit& emit) {
  const unsigned thread = static_cast<unsigned>(block.thread());  // unsigned: / and % are shifts
  const int tx = static_cast<int>(thread % kKeySide), ty = static_cast<int>(thread / kKeySide);
  const uint64_t nb = (static_cast<uint64_t>(n) + kKeyTile - 1) / kKeyTile;
  const PairIJ tile = pair_of(nb + 1, t);  // pairs (bi, bj + 1) of nb + 1 items number the tiles bi <= bj
  const int64_t i0 = static_cast<int64_t>(tile.i) * kKeyTile, j0 = static_cast<int64_t>(tile.j - 1) * kKeyTile;
  T acc[kKeyMicro][kKeyMicro];
  GAUSSREG_UNROLL
  for (int r = 0; r < kKeyMicro; ++r)
    GAUSSREG_UNROLL
    for (int s = 0; s < kKeyMicro; ++s) acc[r][s] = T(0);
  for (int64_t c0 = 0; c0 < d; c0 += kKeySlab<T>) {
    const int width = static_cast<int>(d - c0 < kKeySlab<T> ? d - c0 : kKeySlab<T>);
    block.sync();  // the previous slab has been read
    stage_key_slab<T>(z, n, d, i0, c0, width, rows, block);
    stage_key_slab<T>(z, n, d, j0, c0, width, cols, block);
    block.sync();
    accumulate_key_slab<T>(rows, cols, width, ty, tx, acc);
  }
  GAUSSREG_UNROLL
  for (int r = 0; r < kKeyMicro; ++r) {
    const int64_t i = i0 + ty + kKeySide * r;
    const uint64_t row_start = i < n ? pair_row_start(static_cast<uint64_t>(n), static_cast<uint64_t>(i)) : 0;
    GAUSSREG_UNROLL
    for (int s = 0; s < kKeyMicro; ++s) {
      const int64_t j = j0 + tx + kKeySide * s;
      const bool valid = i < j && j < n;
      emit(valid, row_start + static_cast<uint64_t>(j - i - 1), T(0.5) * acc[r][s]);
    }
  }
}

}  // namespace gaussreg
