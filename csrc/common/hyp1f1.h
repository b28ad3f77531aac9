// Kummer's function at a negative argument, 1F1(a; b; -s), for the Cramer-Wold
// "exact" kernel (SPEC 5): phi_D(s) = 1F1(1/2; D/2; -s) and its derivative
// d/ds 1F1(a; b; -s) = -(a/b) 1F1(a+1; b+1; -s), i.e. a = 1/2 and a = 3/2.
//
// It runs once per pair of points (n^2 times, on the GPU too), so every branch has a
// bounded, small number of iterations and none sums the alternating Taylor series
// where it cancels catastrophically. Three regions, with kAsymMinS = 40:
//
//   s < kAsymMinS         Kummer's transformation e^{-s} 1F1(b-a; b; s): all terms are
//                         positive, so no cancellation; the sum stays below e^40, so
//                         neither it nor e^{-s} can over/underflow. About s + 10 sqrt(s)
//                         terms: <= 105 (measured).
//   kAsymMinS <= s < b    The plain Taylor series. It alternates, but for s < b and
//                         a <= 3/2 the cancellation factor 1F1(a;b;s)/1F1(a;b;-s) stays
//                         below ~4e2 (measured, b <= 513), a loss of < 3 digits.
//   s >= max(b, 40)       Large-s asymptotic series
//                           Gamma(b)/Gamma(b-a) s^{-a} sum_k (a)_k (a-b+1)_k / (k! s^k).
//                         The neglected recessive term is, relative to this,
//                         ~ Gamma(b-a)/Gamma(a) e^{-s} s^{2a-b} <= 4e-16 for s >= 40
//                         (worst case a = 3/2, b = 2; ~e^{-2b} once s >= b is the binding
//                         bound). For s >= b the terms are bounded by ~(a)_k/k!, so the
//                         cancellation is mild.
//
// Cost: near s = b both the Taylor and the asymptotic series decay like
// exp(-k^2 / (2b)), so the worst case is ~10 sqrt(b) terms: 225 for D = 1024
// (b = 511..513, s just below b), <= 105 whenever s < 40. That is less work than the
// D-dimensional distance each pair needs anyway, so the growth with b is left alone;
// kMaxTerms = 2000 is only a hard stop for every loop, reached near b ~ 45000
// (D ~ 90000), beyond which values near s ~ b lose accuracy instead of taking longer.
//
// Verified (relative error vs mpmath, dps = 40) for a in {1/2, 3/2}, b in {D/2, D/2+1},
// D = 1..1024, s in [0, 1e6]: max 6e-15. Other 0 < a < b are evaluated with the same
// formulas but are outside what was measured (larger a worsens the Taylor-region
// cancellation, b - a << 1 the neglected recessive term).
#pragma once

#include <cmath>

#include "config.h"

namespace gaussreg {
namespace hyp1f1_detail {

constexpr int kMaxTerms = 2000;
constexpr double kAsymMinS = 40.0;
// Stop once a term is below this fraction of the partial sum: a little below the
// double rounding unit, so truncation never dominates rounding.
constexpr double kTermTol = 1e-17;

// Stirling correction lnGamma(z) - [(z - 1/2) ln z - z + ln(2 pi)/2] for z >= 16;
// truncation error < 1.1e-16 (next term 691 / (360360 z^11)).
GAUSSREG_HD double stirling_correction(double z) {
  const double w = 1.0 / (z * z);
  return (1.0 / 12.0 +
          w * (-1.0 / 360.0 + w * (1.0 / 1260.0 + w * (-1.0 / 1680.0 + w * (1.0 / 1188.0))))) /
         z;
}

// Gamma(b) / Gamma(b - a) * s^{-a}. exp(lgamma(b) - lgamma(b - a) - a ln s) would lose
// ~|lgamma(b)| + |a ln s| ulps (2.7e3 at b = 513, i.e. ~3e-13 relative), so the large
// parts are cancelled analytically: with Stirling's series,
//   Gamma(y)/Gamma(x) = (y/x)^{x-1/2} y^a e^{-a} e^{C(y)-C(x)},  y = x + a,
// and y^a s^{-a} = (y/s)^a goes through pow, leaving only an O(a^2/x) exponent.
GAUSSREG_HD double asymptotic_prefactor(double a, double b, double s) {
  double x = b - a;
  double y = b;
  // Shift both arguments up to >= 16 where Stirling's series is accurate:
  // Gamma(b)/Gamma(x) = Gamma(b+n)/Gamma(x+n) * prod_{j<n} (x+j)/(b+j).
  double shift = 1.0;
  while (x < 16.0) {
    shift *= x / y;
    x += 1.0;
    y += 1.0;
  }
  const double small = (x - 0.5) * std::log1p(a / x) - a +
                       (stirling_correction(y) - stirling_correction(x));
  return std::pow(y / s, a) * std::exp(small) * shift;
}

// e^{-s} sum_k (b-a)_k / (b)_k s^k / k!  (positive terms), s < kAsymMinS.
GAUSSREG_HD double kummer_series(double a, double b, double s) {
  const double c = b - a;
  double term = 1.0;
  double sum = 1.0;
  for (int k = 0; k < kMaxTerms; ++k) {
    term *= (c + k) * s / ((b + k) * (k + 1));
    sum += term;
    // Past k + 1 >= s the term ratio is < 1 and falls, so a small term ends the sum;
    // before that a small term (e.g. c << 1) may still be followed by larger ones.
    if (k + 1 >= s && term <= kTermTol * sum) break;
  }
  return std::exp(-s) * sum;
}

// sum_k (a)_k / (b)_k (-s)^k / k!, for kAsymMinS <= s < b.
GAUSSREG_HD double taylor_series(double a, double b, double s) {
  double term = 1.0;
  double sum = 1.0;
  for (int k = 0; k < kMaxTerms; ++k) {
    const double ratio = (a + k) * s / ((b + k) * (k + 1));
    term *= -ratio;
    sum += term;
    // With s < b the ratio is < 1 from here on (it decreases for a >= 1 and is
    // < s/(b+k) < 1 for a < 1), so the remaining tail is below |term|.
    if (ratio < 1.0 && std::fabs(term) <= kTermTol * std::fabs(sum)) break;
  }
  return sum;
}

// Gamma(b)/Gamma(b-a) s^{-a} sum_k (a)_k (a-b+1)_k / (k! s^k), for s >= max(b, kAsymMinS).
GAUSSREG_HD double asymptotic_series(double a, double b, double s) {
  const double p = a - b + 1.0;
  double term = 1.0;
  double sum = 1.0;
  for (int k = 0; k < kMaxTerms; ++k) {
    const double ratio = (a + k) * (p + k) / ((k + 1) * s);
    // Once p + k > 0 the |ratio| only grows: the series has started to diverge, so
    // stop at the smallest term (optimal truncation; that term is of the order of
    // the neglected e^{-s} part). While p + k < 0 the terms may grow at first (a > 1)
    // but then fall like exp(-k^2 / 2b); a p + k == 0 makes the series terminate.
    if (p + k > 0.0 && std::fabs(ratio) >= 1.0) break;
    term *= ratio;
    sum += term;
    if (std::fabs(ratio) < 1.0 && std::fabs(term) <= kTermTol * std::fabs(sum)) break;
  }
  return asymptotic_prefactor(a, b, s) * sum;
}

}  // namespace hyp1f1_detail

// 1F1(a; b; -s) for s >= 0, 0 < a <= b (Kummer's function at a negative argument), in
// double. a == b (the D = 1 kernel and its derivative) is exactly e^{-s}. Arguments
// outside that domain (or NaN) give NaN: for a > b the function has zeros and a
// recessive part this code does not carry. s = +inf gives 0.
GAUSSREG_HD double hyp1f1_neg(double a, double b, double s) {
  if (!(s >= 0.0 && a > 0.0 && a <= b)) return NAN;
  if (s == 0.0) return 1.0;
  if (a == b) return std::exp(-s);
  if (s < hyp1f1_detail::kAsymMinS) return hyp1f1_detail::kummer_series(a, b, s);
  if (s < b) return hyp1f1_detail::taylor_series(a, b, s);
  return hyp1f1_detail::asymptotic_series(a, b, s);
}

}  // namespace gaussreg
