// The per-rank math of the distances term of CDF attraction (SPEC 1), shared by the CPU
// and CUDA engines: the target quantile c'_k of a rank, the residual e = d_(k) - c'_k,
// and how the backward pass reads back sgn(e) (p = 1, two bit sets) or e (p = 2).
#pragma once

#include <cmath>
#include <cstdint>

#include "chi2.h"
#include "config.h"

namespace gaussreg {

// Where c'_k comes from, as gaussreg/losses/cdf_attraction.py numbers it.
enum class QuantileSource : int { Table = 0, Chi2 = 1, Empirical = 2 };

// The m target quantiles Q'((k - 1/2) / m), k = 1..m, read or computed by 0-based rank.
template <typename T>
struct RankQuantiles {
  QuantileSource source;
  const T* table;        // Table: m values in the loss dtype
  double df;             // Chi2: degrees of freedom
  const double* values;  // Empirical: the reference sample, sorted
  int64_t count;         //   and its size
  uint64_t m;

  // `hint` carries the previous chi-squared quantile between calls for neighbouring ranks.
  GAUSSREG_HD T operator()(uint64_t rank, double* hint) const {
    if (source == QuantileSource::Table) return table[rank];
    const double lower = (static_cast<double>(rank) + 0.5) / static_cast<double>(m);
    if (source == QuantileSource::Chi2) {
      const double upper = (static_cast<double>(m - rank) - 0.5) / static_cast<double>(m);
      *hint = chi2_quantile(lower, upper, df, *hint);
      return static_cast<T>(*hint);
    }
    return static_cast<T>(empirical_quantile(lower));
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
