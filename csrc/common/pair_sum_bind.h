// pybind11 glue shared by the pair-sum stems (gaussian_l2, mmd, cramer_wold) of both
// modules: every stem exports <stem>_workspace_bytes and <stem>_forward with the same
// arguments, pointers as Python ints, and a last argument that is `num_threads` on the
// CPU and `stream` (cudaStream_t as an int) on CUDA. The forward computes the gradients in
// the same pass when their pointers are non-zero; the backward is a scaling done in Python.
//
// A Backend provides: kLastArg (the last argument's name), workspace_bytes<T>(n, m, d, last)
// and run<T, Stem>(kind, params, args, last).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/pair_sum_args.h"

namespace gaussreg {

namespace py = pybind11;

template <typename T>
PairSumArgs<T> make_pair_sum_args(std::uintptr_t x, index_t n, index_t d, index_t x_stride0, index_t x_stride1,
                                  std::uintptr_t y, index_t m, index_t y_stride0, index_t y_stride1,
                                  std::uintptr_t px, std::uintptr_t py, std::uintptr_t value, std::uintptr_t grad_x,
                                  std::uintptr_t grad_y, std::uintptr_t workspace, std::size_t workspace_bytes) {
  PairSumArgs<T> a;
  a.x = reinterpret_cast<const T*>(x);
  a.n = n;
  a.d = d;
  a.x_stride0 = x_stride0;
  a.x_stride1 = x_stride1;
  a.y = reinterpret_cast<const T*>(y);
  a.m = m;
  a.y_stride0 = y_stride0;
  a.y_stride1 = y_stride1;
  a.px = reinterpret_cast<const T*>(px);
  a.py = reinterpret_cast<const T*>(py);
  a.value = reinterpret_cast<double*>(value);
  a.grad_x = reinterpret_cast<T*>(grad_x);
  a.grad_y = reinterpret_cast<T*>(grad_y);
  a.workspace = reinterpret_cast<void*>(workspace);
  a.workspace_bytes = workspace_bytes;
  return a;
}

inline DType checked_dtype(int code) {
  if (code != static_cast<int>(DType::Float32) && code != static_cast<int>(DType::Float64))
    throw std::invalid_argument("dtype code " + std::to_string(code) + " is neither float32 (0) nor float64 (1)");
  return static_cast<DType>(code);
}

template <typename Backend, typename Stem>
void bind_pair_sum_stem(py::module_& m, const std::string& stem) {
  m.def(
      (stem + "_workspace_bytes").c_str(),
      [](int dtype, index_t n, index_t m_or_0, index_t d, std::uintptr_t last) -> std::size_t {
        return checked_dtype(dtype) == DType::Float64 ? Backend::template workspace_bytes<double>(n, m_or_0, d, last)
                                                      : Backend::template workspace_bytes<float>(n, m_or_0, d, last);
      },
      py::arg("dtype"), py::arg("n"), py::arg("m"), py::arg("d"), py::arg(Backend::kLastArg),
      "Workspace bytes of the forward (m = 0: pairs of x with itself).");
  m.def(
      (stem + "_forward").c_str(),
      [](int dtype, int kind, std::uintptr_t x, index_t n, index_t d, index_t x_stride0, index_t x_stride1,
         std::uintptr_t y, index_t m, index_t y_stride0, index_t y_stride1, const std::vector<double>& params,
         std::uintptr_t px, std::uintptr_t py, std::uintptr_t value, std::uintptr_t grad_x, std::uintptr_t grad_y,
         std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t last) {
        const DType code = checked_dtype(dtype);
        py::gil_scoped_release release;
        if (code == DType::Float64) {
          Backend::template run<double, Stem>(kind, params,
                                              make_pair_sum_args<double>(x, n, d, x_stride0, x_stride1, y, m,
                                                                         y_stride0, y_stride1, px, py, value, grad_x,
                                                                         grad_y, workspace, workspace_bytes),
                                              last);
        } else {
          Backend::template run<float, Stem>(kind, params,
                                             make_pair_sum_args<float>(x, n, d, x_stride0, x_stride1, y, m, y_stride0,
                                                                       y_stride1, px, py, value, grad_x, grad_y,
                                                                       workspace, workspace_bytes),
                                             last);
        }
      },
      py::arg("dtype"), py::arg("kind"), py::arg("x"), py::arg("n"), py::arg("d"), py::arg("x_stride0"),
      py::arg("x_stride1"), py::arg("y"), py::arg("m"), py::arg("y_stride0"), py::arg("y_stride1"),
      py::arg("params"), py::arg("px"), py::arg("py"), py::arg("value"), py::arg("grad_x"), py::arg("grad_y"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg(Backend::kLastArg),
      "Pair sum of the stem's kernel `kind`: value (float64) and, when grad pointers are non-zero, the raw "
      "gradients G (n, d) and H (m, d). y = 0: unordered pairs of x with itself.");
}

}  // namespace gaussreg
