// pybind11 glue of the Epps-Pulley moments (SPEC 7b), shared by both modules: the same two
// functions with the same arguments, checks and documentation, pointers as Python ints,
// and a last argument that is `num_threads` on the CPU and `stream` (cudaStream_t as an
// int) on CUDA.
//
// A Backend provides: kLastArg (the last argument's name), moments<T>(const MomentsCall<T>&,
// last) and moments_backward<T>(const MomentsBackwardCall<T>&, last), each called with the
// GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/config.h"
#include "common/epps_pulley.h"

namespace gaussreg {

namespace py = pybind11;

template <typename T>
struct MomentsCall {
  const T* u;  // (slices, n) projections, contiguous
  int64_t slices, n;
  int knots;
  double delta;
  double* cos_sums;  // out (slices, knots)
  double* sin_sums;  // out (slices, knots)
};

template <typename T>
struct MomentsBackwardCall {
  const T* u;
  int64_t slices, n;
  int knots;
  double delta;
  const double* grad_cos;  // (slices, knots): dL/d(cos sum)
  const double* grad_sin;  // (slices, knots): dL/d(sin sum)
  T* grad_u;               // out (slices, n)
};

template <typename Backend>
void bind_epps_pulley_engine(py::module_& m) {
  m.def(
      "epps_pulley_forward",
      [](int dtype, int64_t slices, int64_t n, std::uintptr_t u, int knots, double delta, std::uintptr_t cos_sums,
         std::uintptr_t sin_sums, std::uintptr_t last) {
        check_epps_pulley_sizes(slices, n, knots);
        require_pointers("epps_pulley_forward", {{"u", u}, {"cos_sums", cos_sums}, {"sin_sums", sin_sums}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          const MomentsCall<T> call{ptr<const T>(u), slices, n, knots, delta, ptr<double>(cos_sums),
                                    ptr<double>(sin_sums)};
          py::gil_scoped_release release;
          Backend::template moments<T>(call, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("slices"), py::arg("n"), py::arg("u"), py::arg("knots"), py::arg("delta"),
      py::arg("cos_sums"), py::arg("sin_sums"), py::arg(Backend::kLastArg),
      "Sums over i of cos(k delta u[l, i]) and sin(k delta u[l, i]), (slices, knots) float64 each.");
  m.def(
      "epps_pulley_backward",
      [](int dtype, int64_t slices, int64_t n, std::uintptr_t u, int knots, double delta, std::uintptr_t grad_cos,
         std::uintptr_t grad_sin, std::uintptr_t grad_u, std::uintptr_t last) {
        check_epps_pulley_sizes(slices, n, knots);
        require_pointers("epps_pulley_backward",
                         {{"u", u}, {"grad_cos", grad_cos}, {"grad_sin", grad_sin}, {"grad_u", grad_u}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          const MomentsBackwardCall<T> call{ptr<const T>(u),        slices, n, knots, delta, ptr<const double>(grad_cos),
                                            ptr<const double>(grad_sin), ptr<T>(grad_u)};
          py::gil_scoped_release release;
          Backend::template moments_backward<T>(call, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("slices"), py::arg("n"), py::arg("u"), py::arg("knots"), py::arg("delta"),
      py::arg("grad_cos"), py::arg("grad_sin"), py::arg("grad_u"), py::arg(Backend::kLastArg),
      "grad_u[l, i] = sum_k k delta (grad_sin[l, k] cos(k delta u) - grad_cos[l, k] sin(k delta u)).");
}

}  // namespace gaussreg
