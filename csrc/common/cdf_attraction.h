// The per-rank math of the distances term of CDF attraction (SPEC 1), shared by the CPU
// and CUDA engines: the target quantile c'_k of a rank, the residual e = d_(k) - c'_k,
// and how the backward pass reads back sgn(e) (p = 1, two bit sets) or e (p = 2).
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "config.h"

namespace gaussreg {

// Where c'_k comes from, as gaussreg/engines/cdf_attraction.py numbers it.
enum class QuantileSource : int { Table = 0, Anchors = 1, Empirical = 2 };

// One cubic piece of the anchored quantiles, in powers of the rank offset u = k - first:
// q(u) = x0 + u (c1 + u (c2 + u c3)) for ranks in [first, end). Past the last anchor the
// piece is constant (c1 = c2 = c3 = 0).
struct HermitePiece {
  int64_t first;
  int64_t end;
  double x0, c1, c2, c3;

  GAUSSREG_HD bool holds(int64_t k) const { return k >= first && k < end; }
  GAUSSREG_HD double at(int64_t k) const {
    const double u = static_cast<double>(k - first);
    return x0 + u * (c1 + u * (c2 + u * c3));
  }
};

// Exact quantiles at a few thousand anchor ranks (gaussreg.targets.chi2_anchors) and
// their slopes dQ/dk; every other rank is a cubic Hermite interpolation between its two
// anchors, within 1e-9 relative of the exact quantile: no table of n' values, no solve
// per rank.
struct HermiteAnchors {
  const int64_t* rank;  // ascending, first 0, last m - 1
  const double* x;
  const double* slope;
  int64_t count;

  // The piece holding rank k. `segment` is a hint carried between calls: ranks visited in
  // ascending order (a bucket's, a thread's run) advance it by a step or two instead of a
  // binary search each.
  GAUSSREG_HD HermitePiece piece_at(int64_t k, int64_t* segment) const {
    if (count == 1 || k >= rank[count - 1])
      return {rank[count - 1], INT64_MAX, x[count - 1], 0.0, 0.0, 0.0};
    int64_t lo = *segment;
    if (lo < 0 || lo >= count - 1 || rank[lo] > k) {
      lo = 0;
      int64_t hi = count - 1;  // rank[lo] <= k < rank[hi]
      while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (rank[mid] <= k) lo = mid; else hi = mid;
      }
    }
    while (rank[lo + 1] <= k) ++lo;
    *segment = lo;
    return piece(lo);
  }

  // The Hermite cubic through (rank, x, slope) at anchors lo and lo + 1, in powers of the
  // offset from rank[lo]; the same coefficients as gaussreg.targets.hermite_quantiles.
  GAUSSREG_HD HermitePiece piece(int64_t lo) const {
    const int64_t hi = lo + 1;
    const double inv_width = 1.0 / static_cast<double>(rank[hi] - rank[lo]);
    const double mean_slope = (x[hi] - x[lo]) * inv_width;
    const double s0 = slope[lo], s1 = slope[hi];
    return {rank[lo], rank[hi], x[lo], s0, (3 * mean_slope - 2 * s0 - s1) * inv_width,
            (s0 + s1 - 2 * mean_slope) * inv_width * inv_width};
  }

  GAUSSREG_HD double operator()(uint64_t r, int64_t* segment) const {
    const int64_t k = static_cast<int64_t>(r);
    return piece_at(k, segment).at(k);
  }
};

// A walk over ascending ranks (a bucket's, a bin's): the anchors' current piece is kept, so
// a rank inside it costs three FMAs; single calls evaluate the same pieces.
struct QuantileWalk {
  int64_t segment = -1;
  HermitePiece piece{0, 0, 0.0, 0.0, 0.0, 0.0};  // holds no rank
};

// The m target quantiles Q'((k - 1/2) / m), k = 1..m, read or computed by 0-based rank.
template <typename T>
struct RankQuantiles {
  QuantileSource source;
  const T* table;          // Table: m values in the loss dtype
  HermiteAnchors anchors;  // Anchors
  const double* values;    // Empirical: the reference sample, sorted
  int64_t count;           //   and its size
  uint64_t m;

  // `segment`: the anchors' hint (see HermiteAnchors); start it at -1.
  GAUSSREG_HD T operator()(uint64_t rank, int64_t* segment) const {
    if (source == QuantileSource::Table) return table[rank];
    if (source == QuantileSource::Anchors) return static_cast<T>(anchors(rank, segment));
    return static_cast<T>(empirical_quantile((static_cast<double>(rank) + 0.5) / static_cast<double>(m)));
  }

  // The same value as operator(), for ranks walked in ascending order.
  GAUSSREG_HD T operator()(uint64_t rank, QuantileWalk* walk) const {
    if (source != QuantileSource::Anchors) return (*this)(rank, &walk->segment);
    const int64_t k = static_cast<int64_t>(rank);
    if (!walk->piece.holds(k)) walk->piece = anchors.piece_at(k, &walk->segment);
    return static_cast<T>(walk->piece.at(k));
  }

  // sum of Q'((k - 1/2)/m) over the 0-based ranks [first, first + count), in double: what
  // a bin decided without a sort subtracts from its keys' sum. Anchored targets sum each
  // cubic piece in closed form (its Taylor expansion at the run's first rank over the
  // power sums of 0..count-1: all terms stay local, so no cancellation between large
  // sums); tables and samples add rank by rank.
  GAUSSREG_HD double range_sum(uint64_t first, uint64_t count) const {
    double total = 0.0;
    if (source == QuantileSource::Anchors) {
      uint64_t k = first;
      const uint64_t end = first + count;
      int64_t segment = -1;
      while (k < end) {
        const HermitePiece piece = anchors.piece_at(static_cast<int64_t>(k), &segment);
        const uint64_t stop = static_cast<uint64_t>(piece.end) < end ? static_cast<uint64_t>(piece.end) : end;
        total += piece_run_sum(piece, k, stop - k);
        k = stop;
      }
      return total;
    }
    for (uint64_t k = first; k < first + count; ++k)
      total += source == QuantileSource::Table
                   ? static_cast<double>(table[k])
                   : empirical_quantile((static_cast<double>(k) + 0.5) / static_cast<double>(m));
    return total;
  }

  // sum over j = 0..run-1 of `piece` at rank k + j: its Taylor expansion at k over the
  // power sums of 0..run-1.
  GAUSSREG_HD static double piece_run_sum(const HermitePiece& piece, uint64_t k, uint64_t run) {
    const double u0 = static_cast<double>(static_cast<int64_t>(k) - piece.first);
    const double q0 = piece.at(static_cast<int64_t>(k));
    const double d1 = piece.c1 + u0 * (2 * piece.c2 + 3 * piece.c3 * u0);  // q'(u0)
    const double d2 = piece.c2 + 3 * piece.c3 * u0;                         // q''(u0) / 2
    const double r = static_cast<double>(run);
    const double s1 = r * (r - 1) / 2, s2 = (r - 1) * r * (2 * r - 1) / 6, s3 = s1 * s1;  // sum j, j^2, j^3
    return r * q0 + d1 * s1 + d2 * s2 + piece.c3 * s3;
  }

  // Hazen plotting positions: v_(i) sits at (i - 1/2)/N; linear in between, constant outside.
  GAUSSREG_HD double empirical_quantile(double probability) const {
    double position = probability * static_cast<double>(count) - 0.5;
    const double last = static_cast<double>(count - 1);
    position = position < 0.0 ? 0.0 : (position > last ? last : position);
    const int64_t lo = static_cast<int64_t>(floor(position));
    const int64_t hi = lo + 1 < count ? lo + 1 : count - 1;
    return values[lo] + (position - static_cast<double>(lo)) * (values[hi] - values[lo]);
  }
};

// The quantile source of a binding call (host side): `values`/`count` are the empirical
// sample, or for anchors the packed (ranks, x, slope) arrays of
// gaussreg/engines/cdf_attraction.pack_anchors, x and slope following the ranks at count and
// 2 count words. Pointers arrive as integers.
template <typename T>
inline RankQuantiles<T> rank_quantiles(int source, uintptr_t table, uintptr_t values, int64_t count, uint64_t m) {
  if (source < 0 || source > 2) throw std::invalid_argument("cdf_attraction: unknown quantile source");
  const auto src = static_cast<QuantileSource>(source);
  if (src == QuantileSource::Table && table == 0) throw std::invalid_argument("cdf_attraction: no quantile table");
  if (src != QuantileSource::Table && (values == 0 || count < 1))
    throw std::invalid_argument("cdf_attraction: no reference values or anchors");
  HermiteAnchors anchors{nullptr, nullptr, nullptr, 0};
  if (src == QuantileSource::Anchors) {
    const auto* base = reinterpret_cast<const int64_t*>(values);
    anchors = {base, reinterpret_cast<const double*>(base + count), reinterpret_cast<const double*>(base + 2 * count),
               count};
  }
  return {src, reinterpret_cast<const T*>(table), anchors, reinterpret_cast<const double*>(values), count, m};
}

// The sizes every binding call checks before touching memory.
inline void check_cdf_pairs_sizes(int64_t n, int64_t d, int p, uint64_t capacity) {
  if (n < 2 || d < 1) throw std::invalid_argument("cdf_attraction: needs n >= 2 points of D >= 1");
  if (n >= (int64_t{1} << 31)) throw std::invalid_argument("cdf_attraction: n must be below 2^31");
  if (p != 1 && p != 2) throw std::invalid_argument("cdf_attraction: p must be 1 or 2");
  if (capacity == 0) throw std::invalid_argument("cdf_attraction: capacity must be positive");
}

// |e|^p for p in {1, 2}, accumulated in double.
template <typename T>
GAUSSREG_HD double abs_power(T e, int p) {
  const double v = static_cast<double>(e);
  return p == 1 ? fabs(v) : v * v;
}

// `count` <= 64 bits of a bit set starting at bit `start`, as the low bits of a word.
GAUSSREG_HD uint64_t extract_bits(const uint64_t* words, uint64_t start, int count) {
  const uint64_t word = start >> 6;
  const int offset = static_cast<int>(start & 63);
  uint64_t v = words[word] >> offset;
  if (offset != 0 && offset + count > 64) v |= words[word + 1] << (64 - offset);
  return count == 64 ? v : v & ((uint64_t{1} << count) - 1);
}

GAUSSREG_HD uint64_t bit_words(uint64_t bits) { return (bits + 63) / 64; }

}  // namespace gaussreg
