// Arguments of one pair sum (SPEC 3, 4, 5 engines), as they cross the Python boundary.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gaussreg {

using index_t = std::int64_t;

template <typename T>
struct PairSumArgs {
  const T* x = nullptr;
  index_t n = 0, d = 0, x_stride0 = 0, x_stride1 = 0;  // element strides, any layout
  const T* y = nullptr;  // nullptr: the pairs of x with itself, i != j, each unordered pair once
  index_t m = 0, y_stride0 = 0, y_stride1 = 0;
  const T* px = nullptr;    // per-point kernel parameter of x (n), or nullptr
  const T* py = nullptr;    // per-point kernel parameter of y (m), or nullptr
  double* value = nullptr;  // out: sum of k over the pairs
  T* grad_x = nullptr;      // out (n, d) contiguous: G_i = sum_j k'(t_ij) (x_i - y_j), or nullptr
  T* grad_y = nullptr;      // out (m, d) contiguous: H_j = sum_i k'(t_ij) (y_j - x_i), or nullptr (cross sums only)
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int num_threads = 1;  // CPU only
};

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

}  // namespace gaussreg
