// The per-element math of the segmented-sort losses (SPEC 2, 6, 7), shared by the CPU and
// CUDA engines: sort keys that order like the values, the torus wrap, the residual of a
// rank's target and the slope the backward pass scales.
//
// A segment is one column of z (coordinate CDF attraction, GMM KS) or one direction's
// projections (sliced Wasserstein), stored contiguously: segment s holds values
// v[s * n .. s * n + n - 1].
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "config.h"
#include "vmath.h"

namespace gaussreg {

// The unsigned integer of T's width: sort keys whose unsigned order is T's value order.
template <typename T>
struct OrderedBits {
  using type = std::make_unsigned_t<typename FloatBits<T>::Int>;
};

// IEEE bits mapped so that unsigned order is value order (negatives reversed, sign
// flipped); -0 sorts just below +0 and is equal in value, so ranks of ties stay exact.
template <typename T>
GAUSSREG_HD typename OrderedBits<T>::type ordered_bits(T v) {
  using U = typename OrderedBits<T>::type;
  constexpr U sign = U{1} << (8 * sizeof(U) - 1);
  const U u = static_cast<U>(float_to_bits(v));
  return (u & sign) ? ~u : (u | sign);
}

template <typename T>
GAUSSREG_HD T value_of_ordered(typename OrderedBits<T>::type k) {
  using U = typename OrderedBits<T>::type;
  constexpr U sign = U{1} << (8 * sizeof(U) - 1);
  const U u = (k & sign) ? (k & ~sign) : ~k;
  return bits_to_float<T>(static_cast<typename FloatBits<T>::Int>(u));
}

template <typename T>
GAUSSREG_HD T floor_of(T v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// SPEC 2 torus: w = v mod 1 as torch.remainder computes it (v - floor(v)), so ranks match
// the reference even where rounding gives 1.0 for a tiny negative v.
template <typename T>
GAUSSREG_HD T torus_wrap(T v) {
  return v - floor_of(v);
}

// SPEC 2, 6: e = v - t, or on the torus the wrapped ((w - t + 1/2) mod 1) - 1/2.
template <typename T>
GAUSSREG_HD T segment_residual(T v, T target, bool torus) {
  if (!torus) return v - target;
  const T shifted = v - target + T(0.5);
  return (shifted - floor_of(shifted)) - T(0.5);
}

// d|e|^p / de: sgn(e) (sgn(0) = 0) or 2e.
template <typename T>
GAUSSREG_HD T residual_slope(T e, int p) {
  if (p == 2) return T(2) * e;
  return e > T(0) ? T(1) : (e < T(0) ? T(-1) : T(0));
}

template <typename T>
GAUSSREG_HD double residual_power(T e, int p) {
  const double x = static_cast<double>(e);
  return p == 1 ? (x < 0 ? -x : x) : x * x;
}

// Where a rank's target comes from, as gaussreg/engines/segmented.py numbers it.
enum class SegmentTargets : int {
  Shared = 0,     // one table t[r] for every segment (normal/uniform quantiles, bit cells)
  PerSegment = 1  // t[s * n + r]: e.g. the sorted projections of a prior sample (SWAE)
};

template <typename T>
struct RankTargets {
  SegmentTargets kind;
  const T* values;
  int64_t n;
  GAUSSREG_HD T operator()(int64_t segment, int64_t rank) const {
    return kind == SegmentTargets::Shared ? values[rank] : values[segment * n + rank];
  }
};

inline void check_segmented_sizes(int64_t segments, int64_t n, int p) {
  if (segments < 1 || n < 1)
    throw std::invalid_argument("segmented sort: needs at least one segment of at least one value, got " +
                                std::to_string(segments) + " segments of " + std::to_string(n));
  if (n > (int64_t{1} << 31) - 1)
    throw std::invalid_argument("segmented sort: segments of more than 2^31 - 1 values are not supported, got " +
                                std::to_string(n));
  if (p != 1 && p != 2) throw std::invalid_argument("segmented sort: p must be 1 or 2, got " + std::to_string(p));
}

}  // namespace gaussreg
