// exp and log that vectorize inside `#pragma omp simd` loops on the CPU (branch-free,
// bit manipulation instead of library calls) and map to the precise CUDA intrinsics on
// the device. Accuracy: < 2 ulp-ish in float (degree-7 / atanh-9 polynomials), ~1e-15
// relative in double (degree-13 / atanh-23).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "config.h"

namespace gaussreg {

template <typename T> struct FloatBits;
template <> struct FloatBits<float> {
  using Int = std::int32_t;
  static constexpr int kMantissa = 23;
  static constexpr int kBias = 127;
  static constexpr float kMinExpArg = -87.3f;   // below this exp(x) is subnormal: flush to 0
  static constexpr float kMaxExpArg = 88.72f;   // above this exp(x) overflows float
};
template <> struct FloatBits<double> {
  using Int = std::int64_t;
  static constexpr int kMantissa = 52;
  static constexpr int kBias = 1023;
  static constexpr double kMinExpArg = -708.0;
  static constexpr double kMaxExpArg = 709.78;
};

// Bit casts: the device's reinterpret intrinsics there, memcpy (which compiles to a move) on the host.
template <typename T>
GAUSSREG_HD T bits_to_float(typename FloatBits<T>::Int i) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __int_as_float(i); else return __longlong_as_double(i);
#else
  T f;
  std::memcpy(&f, &i, sizeof(T));
  return f;
#endif
}

template <typename T>
GAUSSREG_HD typename FloatBits<T>::Int float_to_bits(T f) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __float_as_int(f); else return __double_as_longlong(f);
#else
  typename FloatBits<T>::Int i;
  std::memcpy(&i, &f, sizeof(T));
  return i;
#endif
}

// exp(x): x = k ln2 + r with |r| <= ln2/2, Taylor polynomial for e^r, 2^k from exponent bits.
// Returns 0 below kMinExpArg (kernel values that far out are negligible against the
// others) and +inf above kMaxExpArg, as the true exp does.
template <typename T>
GAUSSREG_HD T vexp(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  using B = FloatBits<T>;
  // NaN goes to the clamp too (x >= min is false for it): converting a NaN k to an integer
  // is undefined; the NaN is given back at the end.
  const T xc = x >= B::kMinExpArg ? (x > B::kMaxExpArg ? T(B::kMaxExpArg) : x) : T(B::kMinExpArg);
  const T kf = std::nearbyint(xc * T(1.4426950408889634));
  // Cody-Waite split of ln2 keeps r exact to working precision.
  const T r = (xc - kf * T(0.693145751953125)) - kf * T(1.4286068203094173e-06);
  T p;
  if constexpr (sizeof(T) == 4) {
    p = T(1.0 / 5040);
    p = p * r + T(1.0 / 720);
    p = p * r + T(1.0 / 120);
    p = p * r + T(1.0 / 24);
    p = p * r + T(1.0 / 6);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  } else {
    p = T(1.0 / 6227020800.0);
    p = p * r + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  }
  using I = typename B::Int;
  // 2^k as 2^(k/2) * 2^(k - k/2): each half stays a normal number over the whole clamped
  // range, so results near the overflow and underflow ends are not lost to the scale.
  const I k = static_cast<I>(kf);
  const I k1 = k / 2;
  const T scale1 = bits_to_float<T>((k1 + B::kBias) << B::kMantissa);
  const T scale2 = bits_to_float<T>((k - k1 + B::kBias) << B::kMantissa);
  T y = (p * scale1) * scale2;
  y = x < B::kMinExpArg ? T(0) : y;
  y = x > B::kMaxExpArg ? std::numeric_limits<T>::infinity() : y;
  y = x == x ? y : x;
  return y;
#endif
}

// log(x) for finite x > 0 (callers guarantee it): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh((m-1)/(m+1)) as an odd series in s = (m-1)/(m+1), |s| <= 0.172.
template <typename T>
GAUSSREG_HD T vlog(T x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  using B = FloatBits<T>;
  using I = typename B::Int;
  const I bits = float_to_bits<T>(x);
  // Exponent counted from sqrt(1/2), so that the remaining mantissa lands in [sqrt(1/2), sqrt(2)).
  const I shifted = bits - float_to_bits<T>(T(0.70710678118654752));
  const I e = shifted >> B::kMantissa;
  // e * 2^kMantissa, not e << kMantissa: e is negative for x < sqrt(1/2), and a left shift
  // of a negative value is undefined before C++20 (UBSan flags it). Same machine code.
  const T m = bits_to_float<T>(bits - e * (I(1) << B::kMantissa));
  const T s = (m - T(1)) / (m + T(1));
  const T s2 = s * s;
  T p;
  if constexpr (sizeof(T) == 4) {
    p = T(1.0 / 9);
    p = p * s2 + T(1.0 / 7);
    p = p * s2 + T(1.0 / 5);
    p = p * s2 + T(1.0 / 3);
    p = p * s2 + T(1);
  } else {
    p = T(1.0 / 23);
    for (int k = 21; k >= 1; k -= 2) p = p * s2 + T(1) / T(k);
  }
  return T(2) * s * p + static_cast<T>(e) * T(0.69314718055994531);
#endif
}

}  // namespace gaussreg
