// The per-projection math of the sliced Epps-Pulley statistic (SPEC 7b), shared by the
// CPU and CUDA engines: cos(t_k u) and sin(t_k u) at the K evenly spaced knots
// t_k = k * delta from one sincos and K - 1 rotations (the knots are multiples of one
// angle), so a projection costs one transcendental call instead of 2K.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "config.h"

namespace gaussreg {

// Knots per call are bounded so the CUDA kernel keeps its K running sums in registers.
constexpr int kEppsPulleyMaxKnots = 64;

// Calls visit(k, cos(k delta u), sin(k delta u)) for k = 0..knots-1 (knots <= MaxKnots).
// Each rotation adds about one rounding, so after K <= 64 steps the error stays below 1e-13
// in double. On CUDA the knot loop is unrolled to the compile-time bound, so a caller
// receives a constant k and can keep per-knot sums in registers.
template <int MaxKnots, typename Visit>
GAUSSREG_HD void visit_knots_unrolled(double u, double delta, int knots, Visit&& visit) {
  double s1, c1;
#if defined(__CUDA_ARCH__)
  sincos(delta * u, &s1, &c1);
#else
  s1 = std::sin(delta * u);
  c1 = std::cos(delta * u);
#endif
  double c = 1.0, s = 0.0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < MaxKnots; ++k) {
    if (k >= knots) break;
    visit(k, c, s);
    const double next_c = c * c1 - s * s1;
    s = s * c1 + c * s1;
    c = next_c;
  }
}

// The same rotations for any knots <= kEppsPulleyMaxKnots (the CPU engine, the CUDA backward).
template <typename Visit>
GAUSSREG_HD void visit_knots(double u, double delta, int knots, Visit&& visit) {
  visit_knots_unrolled<kEppsPulleyMaxKnots>(u, delta, knots, visit);
}

inline void check_epps_pulley_sizes(int64_t slices, int64_t n, int knots) {
  if (slices < 1 || n < 1)
    throw std::invalid_argument("epps_pulley: needs at least one slice of at least one projection, got " +
                                std::to_string(slices) + " slices of " + std::to_string(n));
  if (knots < 2 || knots > kEppsPulleyMaxKnots)
    throw std::invalid_argument("epps_pulley: num_points must be in [2, " + std::to_string(kEppsPulleyMaxKnots) +
                                "], got " + std::to_string(knots));
}

}  // namespace gaussreg
