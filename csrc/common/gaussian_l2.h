// Pair kernels of the Gaussian-smoothed L2 distance (SPEC 3) and the RBF kernel of
// WAE-MMD (SPEC 4), which is the same sum of exponentials.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "pair_kernel.h"
#include "vmath.h"

namespace gaussreg {

enum class GaussianL2Kind : int { ExpSum = 0, PerPoint = 1 };

// SPEC 3 eq. (7)/(10) with a scalar sigma, SPEC 4 "rbf": k(t) = sum_s w_s exp(-c_s t).
template <typename T>
struct ExpSumKernel {
  int terms = 0;
  T coef[kMaxKernelTerms];
  T weight[kMaxKernelTerms];

  // params = [c_0, w_0, c_1, w_1, ...]
  static ExpSumKernel from_params(const std::vector<double>& params) {
    require_params(params, 2, 2 * kMaxKernelTerms, "exp-sum kernel");
    if (params.size() % 2 != 0) throw std::invalid_argument("exp-sum kernel: parameters come in (coef, weight) pairs");
    ExpSumKernel k;
    k.terms = static_cast<int>(params.size() / 2);
    for (int s = 0; s < k.terms; ++s) {
      k.coef[s] = static_cast<T>(params[2 * s]);
      k.weight[s] = static_cast<T>(params[2 * s + 1]);
    }
    return k;
  }
  GAUSSREG_HD int num_terms() const { return terms; }
  GAUSSREG_HD void eval(int s, T t, T, T, T& k, T& dk) const {
    const T e = weight[s] * vexp<T>(-coef[s] * t);
    k += e;
    dk -= coef[s] * e;
  }
};

// SPEC 3 with one sigma per point: a = sigma_i^2 + sigma_j^2 (p = sigma^2 per point),
// k = exp(-t / (2a)) (a/2)^(-D/2), the power taken in log space so large D cannot overflow
// or underflow before the product.
template <typename T>
struct GaussPerPointKernel {
  T half_dim = 0;

  // params = [D / 2]
  static GaussPerPointKernel from_params(const std::vector<double>& params) {
    require_params(params, 1, 1, "per-point Gaussian kernel [D/2]");
    GaussPerPointKernel k;
    k.half_dim = static_cast<T>(params[0]);
    return k;
  }
  GAUSSREG_HD int num_terms() const { return 1; }
  GAUSSREG_HD void eval(int, T t, T pi, T pj, T& k, T& dk) const {
    const T a = pi + pj;
    const T inv_2a = T(0.5) / a;
    const T e = vexp<T>(-t * inv_2a - half_dim * vlog<T>(T(0.5) * a));
    k += e;
    dk -= e * inv_2a;
  }
};

// Kernel selection of the stem, shared by the CPU and CUDA modules: calls f(kernel).
struct GaussianL2Stem {
  template <typename T, typename F>
  static void with_kernel(int kind, const std::vector<double>& params, F&& f) {
    switch (static_cast<GaussianL2Kind>(kind)) {
      case GaussianL2Kind::ExpSum:
        return f(ExpSumKernel<T>::from_params(params));
      case GaussianL2Kind::PerPoint:
        return f(GaussPerPointKernel<T>::from_params(params));
    }
    throw std::invalid_argument("gaussian_l2: unknown kernel kind " + std::to_string(kind));
  }
};

}  // namespace gaussreg
