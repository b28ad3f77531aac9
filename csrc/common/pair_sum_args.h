// Arguments of one pair sum (SPEC 3, 4, 5 engines), as they cross the Python boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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

// The checks both engines make before touching memory; `need`: the engine's workspace bytes.
template <typename T>
void check_pair_sum_args(const PairSumArgs<T>& a, std::size_t need) {
  if (a.n < 1 || a.d < 1 || (a.y != nullptr && a.m < 1))
    throw std::invalid_argument("pair_sum: empty input (n=" + std::to_string(a.n) + ", m=" + std::to_string(a.m) +
                                ", d=" + std::to_string(a.d) + ")");
  if (a.x == nullptr) throw std::invalid_argument("pair_sum: null pointer for x");
  if (a.value == nullptr) throw std::invalid_argument("pair_sum: no output for the value");
  if (a.grad_x == nullptr && a.grad_y != nullptr)
    throw std::invalid_argument("pair_sum: a y gradient alone is not computed; swap x and y");
  if (a.workspace == nullptr || a.workspace_bytes < need)
    throw std::invalid_argument("pair_sum: workspace of " + std::to_string(a.workspace_bytes) + " bytes, need " +
                                std::to_string(need));
}

}  // namespace gaussreg
