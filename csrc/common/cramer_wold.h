// Pair kernels of the Cramer-Wold distance (SPEC 5): phi_D(c t) with c = 1 / (4 gamma)
// for sample pairs (the point-to-prior sum is O(n) and stays in Python).
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "hyp1f1.h"
#include "pair_kernel.h"

namespace gaussreg {

enum class CramerWoldKind : int { Approx = 0, Exact = 1 };

// SPEC 5 "approx": phi_D(s) = (1 + 4 s / (2D - 3))^(-1/2); with s = c t this is
// (1 + q t)^(-1/2), q = 4 c / (2D - 3) precomputed on the host.
template <typename T>
struct CwApproxKernel {
  T q = 0;

  // params = [q]
  static CwApproxKernel from_params(const std::vector<double>& params) {
    require_params(params, 1, 1, "Cramer-Wold approx kernel [q]");
    CwApproxKernel k;
    k.q = static_cast<T>(params[0]);
    return k;
  }
  GAUSSREG_HD int num_terms() const { return 1; }
  GAUSSREG_HD void eval(int, T t, T, T, T& k, T& dk) const {
    const T u = T(1) + q * t;
    const T r = T(1) / std::sqrt(u);
    k += r;
    dk -= T(0.5) * q * r / u;
  }
};

// SPEC 5 "exact": phi_D(s) = 1F1(1/2; D/2; -s), d/ds = -(1/D) 1F1(3/2; D/2 + 1; -s).
// Evaluated in double whatever T is: the series are not the hot path of small-D use.
template <typename T>
struct CwExactKernel {
  double c = 0;
  double b = 0;

  // params = [c, D/2]
  static CwExactKernel from_params(const std::vector<double>& params) {
    require_params(params, 2, 2, "Cramer-Wold exact kernel [c, D/2]");
    CwExactKernel k;
    k.c = params[0];
    k.b = params[1];
    return k;
  }
  GAUSSREG_HD int num_terms() const { return 1; }
  GAUSSREG_HD void eval(int, T t, T, T, T& k, T& dk) const {
    const double s = c * static_cast<double>(t);
    k += static_cast<T>(hyp1f1_neg(0.5, b, s));
    dk -= static_cast<T>(c * (0.5 / b) * hyp1f1_neg(1.5, b + 1.0, s));
  }
};

// Kernel selection of the stem, shared by the CPU and CUDA modules: calls f(kernel).
struct CramerWoldStem {
  template <typename T, typename F>
  static void with_kernel(int kind, const std::vector<double>& params, F&& f) {
    switch (static_cast<CramerWoldKind>(kind)) {
      case CramerWoldKind::Approx:
        return f(CwApproxKernel<T>::from_params(params));
      case CramerWoldKind::Exact:
        return f(CwExactKernel<T>::from_params(params));
    }
    throw std::invalid_argument("cramer_wold: unknown kernel kind " + std::to_string(kind));
  }
};

}  // namespace gaussreg
