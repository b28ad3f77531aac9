// CPU engine of the sliced Epps-Pulley statistic (SPEC 7b): the sums over points of
// cos(t_k u_il) and sin(t_k u_il) per slice l and knot k, and their backward, in one pass
// over the (S, n) projections each (no n x S x K tensor).
//
// Work is cut into chunks of a slice's projections so that one slice (or a few) still
// uses every thread; chunk sums are kept and added in chunk order, so the result does
// not depend on the thread count.
#include "common/epps_pulley.h"

#include <pybind11/pybind11.h>

#include <vector>

#include "common/config.h"

namespace py = pybind11;

namespace gaussreg {
namespace cpu {
namespace {

constexpr int64_t kChunk = 2048;
// Below this many projections a call takes microseconds: waking a thread team costs more.
constexpr int64_t kParallelMinValues = int64_t{1} << 14;

int team_for(int requested, int64_t values) { return values < kParallelMinValues ? 1 : requested; }

template <typename T>
struct MomentsArgs {
  const T* u;  // (slices, n) projections, contiguous
  int64_t slices, n;
  int knots;
  double delta;
  double* cos_sums;  // out (slices, knots)
  double* sin_sums;  // out (slices, knots)
  int threads;
};

template <typename T>
void moments(const MomentsArgs<T>& a) {
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
  const int64_t tasks = a.slices * chunks;
  const int64_t K = a.knots;
  std::vector<double> partial(static_cast<std::size_t>(tasks * 2 * K), 0.0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_for(a.threads, a.slices * a.n))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t l = task / chunks, first = (task % chunks) * kChunk;
    const int64_t last = first + kChunk < a.n ? first + kChunk : a.n;
    double* c_sum = partial.data() + task * 2 * K;
    double* s_sum = c_sum + K;
    for (int64_t i = first; i < last; ++i) {
      visit_knots(static_cast<double>(a.u[l * a.n + i]), a.delta, a.knots, [&](int k, double c, double s) {
        c_sum[k] += c;
        s_sum[k] += s;
      });
    }
  }
  for (int64_t l = 0; l < a.slices; ++l) {
    for (int64_t k = 0; k < K; ++k) {
      double c = 0.0, s = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        c += partial[(l * chunks + chunk) * 2 * K + k];
        s += partial[(l * chunks + chunk) * 2 * K + K + k];
      }
      a.cos_sums[l * K + k] = c;
      a.sin_sums[l * K + k] = s;
    }
  }
}

template <typename T>
struct MomentsBackwardArgs {
  const T* u;
  int64_t slices, n;
  int knots;
  double delta;
  const double* grad_cos;  // (slices, knots): dL/d(cos sum)
  const double* grad_sin;  // (slices, knots): dL/d(sin sum)
  T* grad_u;               // out (slices, n)
  int threads;
};

// dL/du_il = sum_k t_k (-grad_cos_lk sin(t_k u_il) + grad_sin_lk cos(t_k u_il)).
template <typename T>
void moments_backward(const MomentsBackwardArgs<T>& a) {
  const int64_t total = a.slices * a.n;
#pragma omp parallel for schedule(static) num_threads(team_for(a.threads, total))
  for (int64_t idx = 0; idx < total; ++idx) {
    const int64_t l = idx / a.n;
    const double* gc = a.grad_cos + l * a.knots;
    const double* gs = a.grad_sin + l * a.knots;
    double g = 0.0;
    visit_knots(static_cast<double>(a.u[idx]), a.delta, a.knots, [&](int k, double c, double s) {
      g += (k * a.delta) * (gs[k] * c - gc[k] * s);
    });
    a.grad_u[idx] = static_cast<T>(g);
  }
}

int threads_of(int requested) { return requested < 1 ? 1 : requested; }

}  // namespace

void bind_epps_pulley(py::module_& m) {
  m.def(
      "epps_pulley_forward",
      [](int dtype, int64_t slices, int64_t n, uintptr_t u, int knots, double delta, uintptr_t cos_sums,
         uintptr_t sin_sums, int threads) {
        check_epps_pulley_sizes(slices, n, knots);
        require_pointers("epps_pulley_forward", {{"u", u}, {"cos_sums", cos_sums}, {"sin_sums", sin_sums}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          py::gil_scoped_release release;
          moments(MomentsArgs<T>{ptr<const T>(u), slices, n, knots, delta, ptr<double>(cos_sums),
                                 ptr<double>(sin_sums), threads_of(threads)});
          return 0;
        });
      },
      py::arg("dtype"), py::arg("slices"), py::arg("n"), py::arg("u"), py::arg("knots"), py::arg("delta"),
      py::arg("cos_sums"), py::arg("sin_sums"), py::arg("num_threads"),
      "Sums over i of cos(k delta u[l, i]) and sin(k delta u[l, i]), (slices, knots) float64 each.");
  m.def(
      "epps_pulley_backward",
      [](int dtype, int64_t slices, int64_t n, uintptr_t u, int knots, double delta, uintptr_t grad_cos,
         uintptr_t grad_sin, uintptr_t grad_u, int threads) {
        check_epps_pulley_sizes(slices, n, knots);
        require_pointers("epps_pulley_backward",
                         {{"u", u}, {"grad_cos", grad_cos}, {"grad_sin", grad_sin}, {"grad_u", grad_u}});
        by_dtype(dtype, [&](auto t) {
          using T = decltype(t);
          py::gil_scoped_release release;
          moments_backward(MomentsBackwardArgs<T>{ptr<const T>(u), slices, n, knots, delta,
                                                  ptr<const double>(grad_cos), ptr<const double>(grad_sin),
                                                  ptr<T>(grad_u), threads_of(threads)});
          return 0;
        });
      },
      py::arg("dtype"), py::arg("slices"), py::arg("n"), py::arg("u"), py::arg("knots"), py::arg("delta"),
      py::arg("grad_cos"), py::arg("grad_sin"), py::arg("grad_u"), py::arg("num_threads"),
      "grad_u[l, i] = sum_k k delta (grad_sin[l, k] cos(k delta u) - grad_cos[l, k] sin(k delta u)).");
}

}  // namespace cpu
}  // namespace gaussreg
