// pybind11 glue of the cdf pairs engine (SPEC 1), shared by both modules: the same four
// functions with the same arguments, checks and documentation, pointers as Python ints,
// and a last argument that is `num_threads` on the CPU and `stream` (cudaStream_t as an
// int) on CUDA. The CPU module adds its own entry points beside these (the split across
// ranks and the key bins of ks_distances), which CUDA does not have.
//
// A Backend provides: kLastArg (the last argument's name), and
//   workspace_bytes<T>(n, d, capacity, bins, last),
//   entry_bytes(single, pairs),
//   forward<T>(const CdfForwardCall<T>&, last),
//   backward<T>(const CdfBackwardCall<T>&, last),
// forward and backward called with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "common/cdf_attraction.h"
#include "common/config.h"
#include "common/pair_index.h"

namespace gaussreg {

namespace py = pybind11;

// The counters written to a forward's `stats` when the caller asks, in this order (both
// engines; gaussreg/engines/cdf_attraction.py names them).
enum SelectStat {
  kStatSortedPairs = 0,
  kStatPasses = 1,
  kStatBins = 2,
  kStatMixedBins = 3,  // mixed slots: bins and leaves
  kStatRefinedBins = 4,
  kStatCount = 5
};

// One forward: sum over ranks k of |d_(k) - c'_k|^p for contiguous (n, d) points z.
template <typename T>
struct CdfForwardCall {
  const T* z;
  int64_t n, d;
  RankQuantiles<T> quantiles;
  int p;
  double* value;      // out: the sum, float64
  uint64_t* pos;      // p = 1, out: sgn(e) > 0 as a bit set over pair indices k(i, j)
  uint64_t* neg;      // p = 1, out: sgn(e) < 0
  T* residual;        // p = 2, out: e by pair index
  T* sorted;          // optional out: d_(k) by rank (forces the full sort)
  uint64_t capacity;  // sort entries resident at once (several passes below n')
  uint64_t bins;      // p = 1 selection's in-range bins (0: the engine's default)
  int64_t* stats;     // optional out: the engine's counters (see the forward's docstring)
  void* workspace;
  std::size_t ws_bytes;
};

// One backward: grad_i = scale * sum_{j != i} s_ij (z_i - z_j), s the forward's signs or
// residuals; with world > 1, over the pairs rank `rank` signed in the split across ranks.
template <typename T>
struct CdfBackwardCall {
  const T* z;
  int64_t n, d;
  int p;
  const uint64_t* pos;
  const uint64_t* neg;
  const T* residual;
  double scale;
  T* grad;  // out (n, d)
  int64_t rank, world;
};

// The signs (p = 1) or residuals (p = 2) a forward writes and a backward reads.
inline void require_cdf_outputs(const char* what, std::uintptr_t z, int p, std::uintptr_t pos, std::uintptr_t neg,
                                std::uintptr_t residual) {
  require_pointers(what, {{"z", z}});
  if (p == 1)
    require_pointers(what, {{"pos", pos}, {"neg", neg}});
  else
    require_pointers(what, {{"residual", residual}});
}

template <typename Backend>
void bind_cdf_pairs_engine(py::module_& m) {
  m.def(
      "cdf_pairs_workspace_bytes",
      [](int dtype, int64_t n, int64_t d, uint64_t capacity, uint64_t bins, std::uintptr_t last) {
        check_cdf_pairs_sizes(n, d, 1, capacity);
        return by_dtype(dtype, [&](auto t) {
          return Backend::template workspace_bytes<decltype(t)>(n, d, capacity, bins, last);
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("capacity"), py::arg("bins"), py::arg(Backend::kLastArg),
      "Workspace bytes of cdf_pairs_forward (capacity: sort entries per pass; bins: in-range bins of the "
      "p = 1 selection histogram, 0 for the engine's default).");
  m.def(
      "cdf_pairs_entry_bytes",
      [](int dtype, int64_t n) {
        check_cdf_pairs_sizes(n, 1, 1, 1);
        return Backend::entry_bytes(is_float(dtype), pair_count(static_cast<uint64_t>(n)));
      },
      py::arg("dtype"), py::arg("n"), "Bytes one sort entry takes (the unit of the capacity).");
  m.def(
      "cdf_pairs_forward",
      [](int dtype, int64_t n, int64_t d, std::uintptr_t z, int source, std::uintptr_t table, std::uintptr_t values,
         int64_t count, int p, std::uintptr_t value, std::uintptr_t pos, std::uintptr_t neg, std::uintptr_t residual,
         std::uintptr_t sorted, uint64_t capacity, uint64_t bins, std::uintptr_t stats, std::uintptr_t workspace,
         std::size_t ws_bytes, std::uintptr_t last) {
        check_cdf_pairs_sizes(n, d, p, capacity);
        require_cdf_outputs("cdf_pairs_forward", z, p, pos, neg, residual);
        require_pointers("cdf_pairs_forward", {{"value", value}, {"workspace", workspace}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          const CdfForwardCall<T> call{ptr<const T>(z),
                                       n,
                                       d,
                                       rank_quantiles<T>(source, table, values, count,
                                                         pair_count(static_cast<uint64_t>(n))),
                                       p,
                                       ptr<double>(value),
                                       ptr<uint64_t>(pos),
                                       ptr<uint64_t>(neg),
                                       ptr<T>(residual),
                                       ptr<T>(sorted),
                                       capacity,
                                       bins,
                                       ptr<int64_t>(stats),
                                       ptr<void>(workspace),
                                       ws_bytes};
          py::gil_scoped_release release;
          Backend::template forward<T>(call, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("z"), py::arg("source"), py::arg("table"),
      py::arg("values"), py::arg("count"), py::arg("p"), py::arg("value"), py::arg("pos"), py::arg("neg"),
      py::arg("residual"), py::arg("sorted"), py::arg("capacity"), py::arg("bins"), py::arg("stats"),
      py::arg("workspace"), py::arg("ws_bytes"), py::arg(Backend::kLastArg),
      "Sum over ranks of |d_(k) - c'_k|^p for contiguous (n, d) points; p = 1 writes sgn(e) as two bit sets "
      "(pos, neg), p = 2 writes e, both at pair index k(i, j); `sorted` (optional) receives d_(k) by rank and "
      "`stats` (optional, 5 int64 on z's device) the pairs sorted, generation passes, bins, mixed slots and "
      "refined bins (an engine leaves -1 where it does not count). p = 1 without `sorted` and bins > 0 ranks by "
      "selection (csrc/common/cdf_select.h); the CPU engine also does for bins = 0, with its default, and "
      "raises KeyboardInterrupt between chunks on a pending Ctrl-C.");
  m.def(
      "cdf_pairs_backward",
      [](int dtype, int64_t n, int64_t d, std::uintptr_t z, int p, std::uintptr_t pos, std::uintptr_t neg,
         std::uintptr_t residual, double scale, std::uintptr_t grad, std::uintptr_t last, int64_t rank,
         int64_t world) {
        check_cdf_pairs_sizes(n, d, p, 1);
        require_cdf_outputs("cdf_pairs_backward", z, p, pos, neg, residual);
        require_pointers("cdf_pairs_backward", {{"grad", grad}});
        if (world < 1 || rank < 0 || rank >= world || (world > 1 && p != 1))
          throw std::invalid_argument("cdf_pairs_backward: rank outside the group, or a split backward with p != 1");
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          const CdfBackwardCall<T> call{ptr<const T>(z),        n,     d,          p,    ptr<const uint64_t>(pos),
                                        ptr<const uint64_t>(neg), ptr<const T>(residual), scale, ptr<T>(grad),
                                        rank,                     world};
          py::gil_scoped_release release;
          Backend::template backward<T>(call, last);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("z"), py::arg("p"), py::arg("pos"), py::arg("neg"),
      py::arg("residual"), py::arg("scale"), py::arg("grad"), py::arg(Backend::kLastArg), py::arg("rank") = 0,
      py::arg("world") = 1,
      "grad_i = scale * sum_{j != i} s_ij (z_i - z_j) with s from cdf_pairs_forward; with world > 1 (CPU), the "
      "sum over this rank's pairs only (those the cdf_share_* steps signed), for every point i.");
}

}  // namespace gaussreg
