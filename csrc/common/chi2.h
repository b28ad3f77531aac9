// Chi-squared quantiles Q_df(p) for the CDF-attraction targets (SPEC 1), computed on
// the fly from a rank when a table of n' = n(n-1)/2 quantiles would not fit
// (n' = 8.6e9 at n = 131072). gaussreg/targets.py builds the tables that do fit with
// torch; tests check both against scipy.
//
// With a = df/2 and y = x/2, F_df(x) = P(a, y), the regularized lower incomplete gamma.
//   P by its power series when y < a + 1 (every term positive, the ratio of terms is
//   y/(a+k) < 1), Q = 1 - P by its continued fraction (modified Lentz) otherwise, so
//   the small one of the two is always computed directly and both tails keep their
//   relative accuracy.
// The quantile solves log P(a, y) = log p (p <= 1/2) or log Q(a, y) = log q (q < 1/2)
// by Newton's method inside a bracket that is kept and used for bisection whenever a
// step would leave it, so it cannot diverge; in log space the lower tail is a power
// law and the upper tail nearly linear, so Newton converges in a few steps.
#pragma once

#include <cmath>
#include <cstdint>

#include "config.h"

namespace gaussreg {

constexpr int kGammaMaxTerms = 100000;  // series/fraction hard stop: ~10 sqrt(a) are needed
constexpr double kGammaEps = 1e-16;

// P(a, y) and Q(a, y) = 1 - P(a, y) for a > 0, y >= 0.
struct GammaPQ {
  double p, q;
};

// log(y^a e^-y / Gamma(a)): the common factor of the series and the fraction.
GAUSSREG_HD double log_gamma_kernel(double a, double y) { return a * log(y) - y - lgamma(a); }

GAUSSREG_HD double lower_gamma_series(double a, double y) {
  double term = 1.0, sum = 1.0;
  for (int k = 1; k < kGammaMaxTerms; ++k) {
    term *= y / (a + k);
    sum += term;
    if (term < sum * kGammaEps) break;
  }
  return exp(log_gamma_kernel(a, y) - log(a)) * sum;  // y^a e^-y / Gamma(a+1) * sum
}

GAUSSREG_HD double upper_gamma_fraction(double a, double y) {
  const double tiny = 1e-300;
  double b = y + 1.0 - a;
  double c = 1.0 / tiny;
  double d = 1.0 / b;
  double h = d;
  for (int i = 1; i < kGammaMaxTerms; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double step = d * c;
    h *= step;
    if (fabs(step - 1.0) < kGammaEps) break;
  }
  return exp(log_gamma_kernel(a, y)) * h;
}

GAUSSREG_HD GammaPQ regularized_gamma(double a, double y) {
  if (y <= 0.0) return {0.0, 1.0};
  if (y < a + 1.0) {
    const double p = lower_gamma_series(a, y);
    return {p, 1.0 - p};
  }
  const double q = upper_gamma_fraction(a, y);
  return {1.0 - q, q};
}

// x with F_df(x) = lower, where upper = 1 - lower is passed separately so that it can be
// exact (for Hazen positions (k - 1/2)/m both are). `hint` > 0 starts the search there
// (a neighbouring quantile makes it converge in one or two steps).
GAUSSREG_HD double chi2_quantile(double lower, double upper, double df, double hint = 0.0) {
  if (!(lower > 0.0)) return 0.0;
  if (!(upper > 0.0)) return INFINITY;
  const double a = 0.5 * df;
  const bool lower_tail = lower <= upper;
  const double log_target = log(lower_tail ? lower : upper);
  // F(y) increases in y and vanishes at the root, in both tails.
  auto residual = [&](double y, double* slope) {
    const GammaPQ pq = regularized_gamma(a, y);
    const double log_density = (a - 1.0) * log(y) - y - lgamma(a);  // d/dy P(a, y), logged
    if (lower_tail) {
      *slope = exp(log_density - log(pq.p));
      return log(pq.p) - log_target;
    }
    *slope = exp(log_density - log(pq.q));
    return log_target - log(pq.q);
  };
  // Start: the hint, or the lower-tail power law P(a, y) <= y^a / Gamma(a+1), which never
  // overshoots the root.
  double y = hint > 0.0 ? 0.5 * hint : exp((log(lower) + lgamma(a + 1.0)) / a);
  if (!(y > 0.0 && y < INFINITY)) y = a > 1.0 ? a : 1.0;
  double slope = 0.0;
  double f = residual(y, &slope);
  double lo = 0.0, hi = INFINITY;
  // Bracket the root by doubling or halving from the start.
  for (int i = 0; i < 4000 && (f < 0.0 ? !(hi < INFINITY) : lo == 0.0); ++i) {
    if (f < 0.0) {
      lo = y;
      const double next = 2.0 * y;
      double s2 = 0.0;
      const double f2 = residual(next, &s2);
      if (f2 >= 0.0) { hi = next; break; }
      y = next, f = f2, slope = s2;
    } else {
      hi = y;
      const double next = 0.5 * y;
      if (next <= 0.0) break;
      double s2 = 0.0;
      const double f2 = residual(next, &s2);
      if (f2 < 0.0) { lo = next; break; }
      y = next, f = f2, slope = s2;
    }
  }
  for (int it = 0; it < 200; ++it) {
    if (f == 0.0) break;
    if (f < 0.0) lo = y; else hi = y;
    double next = y - f / slope;
    if (!(next > lo && next < hi)) next = lo > 0.0 && hi < INFINITY ? sqrt(lo * hi) : 0.5 * (lo + hi);
    const bool converged = fabs(next - y) <= 4e-16 * next;
    y = next;
    if (converged || hi - lo <= 4e-16 * hi) break;
    f = residual(y, &slope);
  }
  return 2.0 * y;
}

}  // namespace gaussreg
