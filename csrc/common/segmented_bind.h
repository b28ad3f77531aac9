// pybind11 glue of the segmented engine (SPEC 2, 6, 7), shared by both modules: the same
// three functions with the same arguments, checks and documentation, pointers as Python
// ints, and a last argument that is `num_threads` on the CPU and `stream` (cudaStream_t as
// an int) on CUDA.
//
// A Backend provides: kLastArg (the last argument's name), and
//   workspace_bytes<T>(segments, n, last),
//   sorted_gaps<T>(const SortedGapsCall<T>&, last),
//   counts<T>(values, segments, n, counts, workspace, ws_bytes, last),
// each called with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "common/config.h"
#include "common/segmented.h"

namespace gaussreg {

namespace py = pybind11;

// One sorted_gaps call: e = key_(r) - t_r per rank r of each segment (SPEC 2, 6).
template <typename T>
struct SortedGapsCall {
  const T* values;  // (segments, n), contiguous
  int64_t segments, n;
  bool torus;
  RankTargets<T> targets;
  int p;
  double* value;    // out: sum over all elements of |e|^p
  T* slope;         // out (segments, n): d|e|^p/de at each value's own position
  T* sorted_slope;  // optional out (segments, n): the same by rank
  void* workspace;
  std::size_t ws_bytes;
};

template <typename Backend>
void bind_segmented_engine(py::module_& m) {
  m.def(
      "segmented_workspace_bytes",
      [](int dtype, int64_t segments, int64_t n, std::uintptr_t last) {
        check_segmented_sizes(segments, n, 1);
        return by_dtype(dtype, [&](auto t) { return Backend::template workspace_bytes<decltype(t)>(segments, n, last); });
      },
      py::arg("dtype"), py::arg("segments"), py::arg("n"), py::arg(Backend::kLastArg),
      "Workspace bytes of segmented_forward and segmented_counts.");
  m.def(
      "segmented_forward",
      [](int dtype, int64_t segments, int64_t n, std::uintptr_t values, bool torus, int targets_kind,
         std::uintptr_t targets, int p, std::uintptr_t value, std::uintptr_t slope, std::uintptr_t sorted_slope,
         std::uintptr_t workspace, std::size_t ws_bytes, std::uintptr_t last) {
        check_segmented_sizes(segments, n, p);
        if (targets_kind != 0 && targets_kind != 1)
          throw std::invalid_argument("segmented_forward: targets_kind must be 0 (shared) or 1 (per segment)");
        require_pointers("segmented_forward", {{"values", values}, {"targets", targets}, {"value", value},
                                               {"slope", slope}, {"workspace", workspace}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          const SortedGapsCall<T> call{ptr<const T>(values),
                                       segments,
                                       n,
                                       torus,
                                       RankTargets<T>{static_cast<SegmentTargets>(targets_kind), ptr<const T>(targets), n},
                                       p,
                                       ptr<double>(value),
                                       ptr<T>(slope),
                                       ptr<T>(sorted_slope),
                                       ptr<void>(workspace),
                                       ws_bytes};
          py::gil_scoped_release release;
          Backend::template sorted_gaps<T>(call, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("segments"), py::arg("n"), py::arg("values"), py::arg("torus"),
      py::arg("targets_kind"), py::arg("targets"), py::arg("p"), py::arg("value"), py::arg("slope"),
      py::arg("sorted_slope"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg(Backend::kLastArg),
      "Sort each contiguous segment of n values; value = sum |key_(r) - t_r|^p (wrapped residual on the torus), "
      "slope[s, i] = d|e|^p/de at value i, sorted_slope (optional, 0 skips) the same by rank.");
  m.def(
      "segmented_counts",
      [](int dtype, int64_t segments, int64_t n, std::uintptr_t values, std::uintptr_t counts,
         std::uintptr_t workspace, std::size_t ws_bytes, std::uintptr_t last) {
        check_segmented_sizes(segments, n, 1);
        require_pointers("segmented_counts", {{"values", values}, {"counts", counts}, {"workspace", workspace}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          py::gil_scoped_release release;
          Backend::template counts<T>(ptr<const T>(values), segments, n, ptr<int64_t>(counts), ptr<void>(workspace),
                                      ws_bytes, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("segments"), py::arg("n"), py::arg("values"), py::arg("counts"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg(Backend::kLastArg),
      "counts[s, i] = #{i' : v[s, i'] <= v[s, i]} (int64) for each contiguous segment of n values.");
}

}  // namespace gaussreg
