// The contract every pair-kernel functor fulfils, shared by the CPU and CUDA engines.
//
// A kernel is k(t; p_i, p_j) of the squared distance t = ||x_i - y_j||^2 and optional
// per-point parameters, written as a sum of `num_terms()` terms so that multi-scale
// kernels vectorize term by term. `eval(s, t, pi, pj, k, dk)` ADDS term s's value to k
// and its derivative d/dt to dk. The engines compute, for the pairs they are asked for,
//   value = sum k(t_ij)   and   G_i = sum_j dk(t_ij) (x_i - y_j),  H_j = sum_i dk(t_ij) (y_j - x_i),
// and the Python front scales them (dt/dx_i = 2 (x_i - y_j)).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"

namespace gaussreg {

constexpr int kMaxKernelTerms = 16;

// Host-side check of the number of scalar options handed over from Python.
inline void require_params(const std::vector<double>& params, std::size_t min_count, std::size_t max_count,
                           const char* what) {
  if (params.size() < min_count || params.size() > max_count) {
    throw std::invalid_argument(std::string(what) + ": expected between " + std::to_string(min_count) + " and " +
                                std::to_string(max_count) + " parameters, got " + std::to_string(params.size()));
  }
}

}  // namespace gaussreg
