// The rank pass of the CUDA cdf_attraction engine (SPEC 1: e_r = d_(r) - c'_r for each rank
// r of the sorted distances, written as two sign bits or a residual at the pair's index,
// and sum_r |e_r|^p), written once for the device (csrc/cuda/cdf_attraction.cu's
// rank_kernel) and for a host emulation of a thread block (tests/host/cdf_rank.cpp).
//
// The ranks go in chunks of kRankChunk = 2048 (8 a thread, 256 apart, so a warp reads 32
// entries in a row); each chunk's terms are summed by its block in a fixed order into one
// partial, the partials then added in chunk order. A pass ranks [r0, r1) from entries at
// [0, r1 - r0) of its sorted buffer; a chunk that the pass does not finish parks its terms
// in carry_out, and the next pass, which finishes it, reads them back from carry_in: the
// partials do not depend on where the passes were cut.
//
// A Block (of kRankThreads threads) provides thread(), sum(double) (the block's sum, valid
// in thread 0, in a fixed order) and or_bits(word, bits) (an integer OR of any order: the
// bit sets come out the same whatever the order of the writes).
#pragma once

#include <cstdint>
#include <cstring>

#include "cdf_attraction.h"
#include "config.h"

namespace gaussreg {

constexpr int kRankThreads = 256;
constexpr int kRanksPerThread = 8;
constexpr uint64_t kRankChunk = kRankThreads * kRanksPerThread;  // ranks per partial sum

// A sorted entry: the key's bits (as the sort ordered them) and its pair index.
struct RankEntry {
  uint64_t key_bits, index;
};

// The key whose bits the sort ordered (d >= 0: IEEE bits order like the values).
template <typename T>
GAUSSREG_HD T key_of_bits(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __uint_as_float(static_cast<uint32_t>(bits));
  else return __longlong_as_double(static_cast<long long>(bits));
#else
  T key;
  if constexpr (sizeof(T) == 4) {
    const uint32_t word = static_cast<uint32_t>(bits);
    std::memcpy(&key, &word, sizeof key);
  } else {
    std::memcpy(&key, &bits, sizeof key);
  }
  return key;
#endif
}

template <typename T>
struct RankArgs {
  RankQuantiles<T> quantiles;
  int p;
  unsigned long long* pos_bits;  // p = 1: sgn(e) > 0
  unsigned long long* neg_bits;  // p = 1: sgn(e) < 0
  T* residual;                   // p = 2
  T* sorted;                     // optional: d_(k) by rank
  uint64_t pairs;
};

// e of rank r (entry at `pos` of the sorted pass) written out; returns |e|^p.
template <typename T, typename Reader, typename Block>
GAUSSREG_HD double rank_one(const Reader& entries, const RankArgs<T>& a, uint64_t r, uint64_t pos, int64_t* segment,
                            const Block& block) {
  const RankEntry entry = entries(pos);
  const T key = key_of_bits<T>(entry.key_bits);
  const T e = key - a.quantiles(r, segment);
  if (a.sorted != nullptr) a.sorted[r] = key;
  if (a.p == 2) {
    a.residual[entry.index] = e;
  } else if (e != T(0)) {
    block.or_bits((e > T(0) ? a.pos_bits : a.neg_bits) + (entry.index >> 6), 1ull << (entry.index & 63));
  }
  return abs_power(e, a.p);
}

// The chunks of ranks [r0, r1) that block `block_index` of `blocks` owns (every blocks-th
// from the pass's first): partials[c] for the chunks the pass finishes, carry_out for the
// one it leaves open, carry_in for the terms an earlier pass left of its first chunk.
template <typename T, typename Reader, typename Block>
GAUSSREG_HD void rank_chunks(const Reader& entries, const RankArgs<T>& a, uint64_t r0, uint64_t r1,
                             const double* carry_in, double* carry_out, double* partials, uint64_t block_index,
                             uint64_t blocks, Block& block) {
  const uint64_t first = r0 / kRankChunk, last = (r1 - 1) / kRankChunk;
  for (uint64_t c = first + block_index; c <= last; c += blocks) {
    const uint64_t start = c * kRankChunk, end = start + kRankChunk < a.pairs ? start + kRankChunk : a.pairs;
    const bool closes = end <= r1;
    double sum = 0.0;
    int64_t segment = -1;  // the anchors' hint: this thread's ranks ascend
    for (int q = 0; q < kRanksPerThread; ++q) {
      const uint64_t r = start + static_cast<uint64_t>(q) * kRankThreads + static_cast<uint64_t>(block.thread());
      if (r >= end || r >= r1) break;
      const double term = r < r0 ? carry_in[r - start] : rank_one(entries, a, r, r - r0, &segment, block);
      if (closes) sum += term; else carry_out[r - start] = term;
    }
    if (closes) {  // block-uniform
      const double total = block.sum(sum);
      if (block.thread() == 0) partials[c] = total;
    }
  }
}

}  // namespace gaussreg
