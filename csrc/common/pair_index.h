// Numbering of the n' = n(n-1)/2 unordered pairs i < j (SPEC 1), row by row:
//   k(i, j) = i (2n - i - 1) / 2 + (j - i - 1),   0 <= k < n'.
// 64-bit throughout: n' passes 2^31 at n = 65537. Valid for n < 2^31.
#pragma once

#include <cmath>
#include <cstdint>

#include "config.h"

namespace gaussreg {

GAUSSREG_HD uint64_t pair_count(uint64_t n) { return n * (n - 1) / 2; }

// Index of the first pair of row i, i.e. of (i, i + 1).
GAUSSREG_HD uint64_t pair_row_start(uint64_t n, uint64_t i) { return i * (2 * n - i - 1) / 2; }

GAUSSREG_HD uint64_t pair_index(uint64_t n, uint64_t i, uint64_t j) { return pair_row_start(n, i) + (j - i - 1); }

// The row i of pair k: the largest i with pair_row_start(n, i) <= k. The closed form
// i = ((2n - 1) - sqrt((2n - 1)^2 - 8k)) / 2 is off by one at most after rounding in
// double, which the two loops correct.
GAUSSREG_HD uint64_t pair_row(uint64_t n, uint64_t k) {
  const double b = 2.0 * static_cast<double>(n) - 1.0;
  const double disc = b * b - 8.0 * static_cast<double>(k);
  double guess = 0.5 * (b - sqrt(disc > 0.0 ? disc : 0.0));
  uint64_t i = guess > 0.0 ? static_cast<uint64_t>(guess) : 0;
  if (i > n - 2) i = n - 2;
  while (i > 0 && pair_row_start(n, i) > k) --i;
  while (i + 2 < n && pair_row_start(n, i + 1) <= k) ++i;
  return i;
}

struct PairIJ {
  uint64_t i, j;
};

GAUSSREG_HD PairIJ pair_of(uint64_t n, uint64_t k) {
  const uint64_t i = pair_row(n, k);
  return {i, k - pair_row_start(n, i) + i + 1};
}

}  // namespace gaussreg
