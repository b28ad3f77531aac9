// Pair kernels of WAE-MMD (SPEC 4). The RBF kernel is ExpSumKernel from gaussian_l2.h.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "gaussian_l2.h"
#include "pair_kernel.h"

namespace gaussreg {

enum class MmdKind : int { Imq = 0, Rbf = 1 };

// SPEC 4 "imq": k(t) = sum_s C_s / (C_s + t), C_s = 2 D s.
template <typename T>
struct ImqSumKernel {
  int terms = 0;
  T scale[kMaxKernelTerms];

  // params = [C_0, C_1, ...]
  static ImqSumKernel from_params(const std::vector<double>& params) {
    require_params(params, 1, kMaxKernelTerms, "imq kernel");
    ImqSumKernel k;
    k.terms = static_cast<int>(params.size());
    for (int s = 0; s < k.terms; ++s) k.scale[s] = static_cast<T>(params[s]);
    return k;
  }
  GAUSSREG_HD int num_terms() const { return terms; }
  GAUSSREG_HD void eval(int s, T t, T, T, T& k, T& dk) const {
    const T q = scale[s] / (scale[s] + t);
    k += q;
    dk -= q * q / scale[s];
  }
};

// Kernel selection of the stem, shared by the CPU and CUDA modules: calls f(kernel).
struct MmdStem {
  template <typename T, typename F>
  static void with_kernel(int kind, const std::vector<double>& params, F&& f) {
    switch (static_cast<MmdKind>(kind)) {
      case MmdKind::Imq:
        return f(ImqSumKernel<T>::from_params(params));
      case MmdKind::Rbf:
        return f(ExpSumKernel<T>::from_params(params));
    }
    throw std::invalid_argument("mmd: unknown kernel kind " + std::to_string(kind));
  }
};

}  // namespace gaussreg
