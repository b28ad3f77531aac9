// The CUDA pair sums' two sweeps (csrc/common/pair_tiles.h) run on the CPU: a block's threads
// are std::threads that meet at a real barrier, so the staging of tiles and chunks, the zero
// padding past D and past the last partner, the diagonal, the gradient's chunk-by-chunk
// update and the split into partner ranges are checked against a brute-force float64 sum
// without a GPU. tests/test_pair_tiles_host.py
// compiles and runs it; each case prints one JSON line with its relative errors.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emulation.h"
#include "common/gaussian_l2.h"
#include "common/pair_tiles.h"

namespace {

using gaussreg::index_t;

// One thread's view of its block (the Block pair_tiles.h expects).
template <typename T>
struct HostBlock {
  int index, count;
  host::Barrier* barrier;
  T* tile;
  T* params;
  double* sums;
  int thread() const { return index; }
  int threads() const { return count; }
  void sync() const { barrier->wait(); }
  T* ys() const { return tile; }
  T* yp() const { return params; }
  double sum(double v) const {
    sums[index] = v;
    sync();
    double total = 0;
    if (index == 0)
      for (int k = 0; k < count; ++k) total += sums[k];
    sync();
    return total;
  }
};

// One block's sweep: the chunked one (tile == 0), or the register one with tiles of `tile`
// points at D = 16, 32, 64.
template <typename T, typename K, bool kValue, bool kGrad>
double sweep_block(const gaussreg::PairSweep<T>& s, const K& kern, index_t row0, int tile, HostBlock<T>& block,
                   T* grad) {
  if (tile == 0) return gaussreg::sweep_rows<T, K, kValue, kGrad>(s, kern, row0, block, grad);
  if (s.d == 16) return gaussreg::sweep_rows_in_registers<T, K, 16, kValue, kGrad>(s, kern, row0, tile, block, grad);
  if (s.d == 32) return gaussreg::sweep_rows_in_registers<T, K, 32, kValue, kGrad>(s, kern, row0, tile, block, grad);
  if (s.d == 64) return gaussreg::sweep_rows_in_registers<T, K, 64, kValue, kGrad>(s, kern, row0, tile, block, grad);
  std::fprintf(stderr, "the register sweep is compiled for D = 16, 32, 64, not %lld\n", static_cast<long long>(s.d));
  std::exit(2);
}

// Every block of one partner range's launch, one after the other, each with `threads`
// std::threads sharing a tile as large as the sweep stages.
template <typename T, typename K, bool kValue, bool kGrad>
double run_blocks(const gaussreg::PairSweep<T>& s, const K& kern, T* grad, int threads, int tile) {
  using Shape = gaussreg::PairTileShape<T>;
  double value = 0;
  for (index_t row0 = 0; row0 < s.na; row0 += threads) {
    std::vector<T> ys(tile == 0 ? Shape::kTile * Shape::kChunk : tile * s.d), params(tile == 0 ? Shape::kTile : tile);
    std::vector<double> sums(threads), out(threads);
    host::Barrier barrier(threads);
    std::vector<std::thread> team;
    for (int t = 0; t < threads; ++t)
      team.emplace_back([&, t] {
        HostBlock<T> block{t, threads, &barrier, ys.data(), params.data(), sums.data()};
        out[t] = sweep_block<T, K, kValue, kGrad>(s, kern, row0, tile, block, grad);
      });
    for (auto& member : team) member.join();
    value += out[0];
  }
  return value;
}

// The sweep as cuda/pair_sum.cuh launches it: the partners in ranges of `width` (0: one
// range), each range's gradient into its own slab, the slabs added in range order in
// float64 and rounded once.
template <typename T, typename K, bool kValue, bool kGrad>
double run_sweep(const gaussreg::PairSweep<T>& s, const K& kern, T* grad, int threads, index_t width, int tile) {
  if (width == 0) return run_blocks<T, K, kValue, kGrad>(s, kern, grad, threads, tile);
  const index_t ranges = (s.nb + width - 1) / width, count = s.na * s.d;
  std::vector<T> slabs(static_cast<std::size_t>(ranges * count), T(-7));  // garbage, as a workspace
  double value = 0;
  for (index_t r = 0; r < ranges; ++r)
    value += run_blocks<T, K, kValue, kGrad>(gaussreg::partner_range(s, r * width, width), kern,
                                             kGrad ? slabs.data() + r * count : nullptr, threads, tile);
  if (kGrad)
    for (index_t e = 0; e < count; ++e) {
      double g = 0;
      for (index_t r = 0; r < ranges; ++r) g += static_cast<double>(slabs[r * count + e]);
      grad[e] = static_cast<T>(g);
    }
  return value;
}

struct Case {
  std::string name;
  index_t n, m, d;  // m = 0: x with itself
  bool per_point, column_major;
  int threads;
  index_t width;  // partners a range (0: one range)
  int tile;       // the register sweep's points a tile (0: the chunked sweep)
};

// The kernel's value and derivative at squared distance t, written out (SPEC 3, 4).
struct Reference {
  bool per_point;
  double half_dim;
  std::vector<double> coef, weight;
  void eval(double t, double pi, double pj, double& k, double& dk) const {
    k = dk = 0;
    if (per_point) {
      const double a = pi + pj;
      k = std::exp(-t / (2 * a) - half_dim * std::log(a / 2));
      dk = -k / (2 * a);
      return;
    }
    for (size_t s = 0; s < coef.size(); ++s) {
      k += weight[s] * std::exp(-coef[s] * t);
      dk -= coef[s] * weight[s] * std::exp(-coef[s] * t);
    }
  }
};

template <typename T, typename K>
void check(const Case& c, const K& kern, const Reference& ref) {
  const bool self = c.m == 0;
  const index_t m = self ? c.n : c.m;
  std::uint64_t state = 12345 + static_cast<std::uint64_t>(c.n * 31 + c.d);
  std::vector<double> x(c.n * c.d), y(m * c.d), px(c.n), py(m);
  for (auto& v : x) v = 0.6 * host::uniform_pm1(state);
  for (auto& v : y) v = 0.6 * host::uniform_pm1(state);
  for (auto& v : px) v = 0.5 + 0.4 * host::uniform_pm1(state);
  for (auto& v : py) v = 0.5 + 0.4 * host::uniform_pm1(state);
  if (self) y = x, py = px;
  // x as the sweep reads it: row-major, or column-major (strides 1 and n).
  std::vector<T> xs(c.n * c.d), ys(m * c.d), pxs(px.begin(), px.end()), pys(py.begin(), py.end());
  const index_t as0 = c.column_major ? 1 : c.d, as1 = c.column_major ? c.n : 1;
  for (index_t i = 0; i < c.n; ++i)
    for (index_t k = 0; k < c.d; ++k) xs[i * as0 + k * as1] = static_cast<T>(x[i * c.d + k]);
  for (index_t j = 0; j < m * c.d; ++j) ys[j] = static_cast<T>(y[j]);
  // The reference reads the values as the sweep does, rounded to T.
  for (index_t i = 0; i < c.n * c.d; ++i) x[i] = static_cast<double>(static_cast<T>(x[i]));
  for (index_t j = 0; j < m * c.d; ++j) y[j] = static_cast<double>(static_cast<T>(y[j]));
  for (index_t i = 0; i < c.n; ++i) px[i] = static_cast<double>(pxs[i]);
  for (index_t j = 0; j < m; ++j) py[j] = static_cast<double>(pys[j]);
  if (self) y = x, py = px;

  const T* b = self ? xs.data() : ys.data();
  const index_t bs0 = self ? as0 : c.d, bs1 = self ? as1 : 1;
  const gaussreg::PairSweep<T> s{xs.data(), c.n, as0, as1, b, m, bs0, bs1, c.d,
                                 c.per_point ? pxs.data() : nullptr,
                                 c.per_point ? (self ? pxs.data() : pys.data()) : nullptr, self, 0};
  std::vector<T> grad(c.n * c.d, T(-7));  // garbage: the first tile must overwrite it
  const double value = run_sweep<T, K, true, true>(s, kern, grad.data(), c.threads, c.width, c.tile);
  std::vector<T> grad_only(c.n * c.d, T(-7));
  run_sweep<T, K, false, true>(s, kern, grad_only.data(), c.threads, c.width, c.tile);
  const double value_only = run_sweep<T, K, true, false>(s, kern, nullptr, c.threads, c.width, c.tile);

  double want = 0, value_scale = 0, grad_err = 0, grad_scale = 0, same_grad = 0;
  for (index_t i = 0; i < c.n; ++i) {
    std::vector<double> g(c.d, 0.0);
    for (index_t j = 0; j < m; ++j) {
      if (self && i == j) continue;
      double t = 0;
      for (index_t k = 0; k < c.d; ++k) t += (x[i * c.d + k] - y[j * c.d + k]) * (x[i * c.d + k] - y[j * c.d + k]);
      double kv, dk;
      ref.eval(t, c.per_point ? px[i] : 0.0, c.per_point ? py[j] : 0.0, kv, dk);
      want += kv;
      value_scale += std::fabs(kv);
      for (index_t k = 0; k < c.d; ++k) g[k] += dk * (x[i * c.d + k] - y[j * c.d + k]);
    }
    for (index_t k = 0; k < c.d; ++k) {
      grad_err = std::fmax(grad_err, std::fabs(static_cast<double>(grad[i * c.d + k]) - g[k]));
      grad_scale = std::fmax(grad_scale, std::fabs(g[k]));
      same_grad = std::fmax(same_grad, std::fabs(static_cast<double>(grad[i * c.d + k] - grad_only[i * c.d + k])));
    }
  }
  std::printf(
      "{\"case\": \"%s\", \"dtype\": \"%s\", \"value_rel\": %.3e, \"value_only_rel\": %.3e, \"grad_rel\": %.3e, "
      "\"grad_only_diff\": %.3e}\n",
      c.name.c_str(), sizeof(T) == 4 ? "float32" : "float64", std::fabs(value - want) / value_scale,
      std::fabs(value_only - want) / value_scale, grad_err / (grad_scale > 0 ? grad_scale : 1.0), same_grad);
}

template <typename T>
void run_all() {
  const std::vector<double> exp_params = {0.7, 1.0, 0.05, 2.0};  // (c, w) pairs: two terms
  const auto exp_kernel = gaussreg::ExpSumKernel<T>::from_params(exp_params);
  const Reference exp_ref{false, 0.0, {0.7, 0.05}, {1.0, 2.0}};
  const Case cases[] = {
      {"n2_d1_self", 2, 0, 1, false, false, 32, 0, 0},
      {"n5_d3_cross_m1", 5, 1, 3, false, false, 32, 0, 0},
      {"n33_d17_self", 33, 0, 17, false, false, 32, 0, 0},
      {"n70_m45_d8_cross", 70, 45, 8, false, false, 32, 0, 0},
      {"n130_d40_self_128_threads", 130, 0, 40, false, false, 128, 0, 0},
      {"n40_d21_column_major", 40, 0, 21, false, true, 32, 0, 0},
      {"n50_m19_d9_per_point", 50, 19, 9, true, false, 32, 0, 0},
      {"n37_d130_self", 37, 0, 130, false, false, 32, 0, 0},
      // Split into partner ranges of 32 (whole tiles, as common/partner_split.h cuts them):
      // the diagonal moves into later ranges, the last range is short.
      {"n130_d40_self_5_ranges", 130, 0, 40, false, false, 32, 32, 0},
      {"n100_d20_self_column_major_4_ranges", 100, 0, 20, false, true, 64, 32, 0},
      {"n33_m70_d8_cross_3_ranges", 33, 70, 8, false, false, 32, 32, 0},
      {"n50_m80_d9_per_point_3_ranges", 50, 80, 9, true, false, 32, 32, 0},
      // The register sweep (D = 16, 32, 64; the device stages 32 points a tile): whole,
      // split into ranges, and with a tile of 7 that the partners do not fill.
      {"rows_n70_m45_d32_cross", 70, 45, 32, false, false, 32, 0, 32},
      {"rows_n130_d16_self_5_ranges", 130, 0, 16, false, false, 32, 32, 32},
      {"rows_n100_d64_self_128_threads_2_ranges", 100, 0, 64, false, false, 128, 64, 32},
      {"rows_n40_d16_column_major_tile_7", 40, 0, 16, false, true, 32, 0, 7},
      {"rows_n50_m80_d32_per_point_3_ranges", 50, 80, 32, true, false, 32, 32, 32},
  };
  for (const Case& c : cases) {
    if (c.per_point) {
      const auto kern = gaussreg::GaussPerPointKernel<T>::from_params({0.5 * static_cast<double>(c.d)});
      check<T>(c, kern, Reference{true, 0.5 * static_cast<double>(c.d), {}, {}});
    } else {
      check<T>(c, exp_kernel, exp_ref);
    }
  }
}

}  // namespace

int main() {
  run_all<float>();
  run_all<double>();
  return 0;
}
