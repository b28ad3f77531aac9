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
#include "common/epps_pulley_bind.h"

namespace py = pybind11;

namespace gaussreg {
namespace cpu {
namespace {

constexpr int64_t kChunk = 2048;
// Below this many projections a call takes microseconds: waking a thread team costs more.
constexpr int64_t kParallelMinValues = int64_t{1} << 14;

int team_for(int requested, int64_t values) { return values < kParallelMinValues ? 1 : requested; }

template <typename T>
void moments(const MomentsCall<T>& a, int threads) {
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
  const int64_t tasks = a.slices * chunks;
  const int64_t K = a.knots;
  std::vector<double> partial(static_cast<std::size_t>(tasks * 2 * K), 0.0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team_for(threads, a.slices * a.n))
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

// dL/du_il = sum_k t_k (-grad_cos_lk sin(t_k u_il) + grad_sin_lk cos(t_k u_il)).
template <typename T>
void moments_backward(const MomentsBackwardCall<T>& a, int threads) {
  const int64_t total = a.slices * a.n;
#pragma omp parallel for schedule(static) num_threads(team_for(threads, total))
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

int threads_of(std::uintptr_t requested) { return requested < 1 ? 1 : static_cast<int>(requested); }

// The CPU side of the shared bindings (common/epps_pulley_bind.h).
struct EppsPulleyCpu {
  static constexpr const char* kLastArg = "num_threads";

  template <typename T>
  static void moments(const MomentsCall<T>& c, std::uintptr_t threads) {
    cpu::moments(c, threads_of(threads));
  }

  template <typename T>
  static void moments_backward(const MomentsBackwardCall<T>& c, std::uintptr_t threads) {
    cpu::moments_backward(c, threads_of(threads));
  }
};

}  // namespace

void bind_epps_pulley(py::module_& m) { bind_epps_pulley_engine<EppsPulleyCpu>(m); }

}  // namespace cpu
}  // namespace gaussreg
