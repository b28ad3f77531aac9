// The CUDA cdf_attraction backward (csrc/common/cdf_backward.h) run on the CPU: a block's
// 256 threads are std::threads that meet at a real barrier, blocks one after the other, and
// the gradient is compared with a brute-force float64 sum g_i = scale sum_{j != i} s_ij
// (z_i - z_j), the s_ij read from random bit sets (p = 1) or residuals (p = 2). Each case
// prints one JSON line with its relative error. tests/test_cdf_backward_host.py compiles
// and runs it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emulation.h"
#include "common/cdf_backward.h"

namespace {

using HostBlock = host::Block<gaussreg::kBackThreads>;

// Every block of the launch, as cuda/cdf_attraction.cu's backward() chooses DPL.
template <typename T, int DPL>
void launch(const gaussreg::SignedDifferences<T>& a) {
  const int64_t blocks = (a.n + gaussreg::kBackRows - 1) / gaussreg::kBackRows;
  for (int64_t b = 0; b < blocks; ++b) {
    gaussreg::BackWeights<T> weights;
    gaussreg::BackColumns<T, DPL> cols;
    host::Barrier barrier(gaussreg::kBackThreads);
    std::vector<std::thread> team;
    for (int t = 0; t < gaussreg::kBackThreads; ++t)
      team.emplace_back([&, t] {
        HostBlock block{t, &barrier};
        gaussreg::signed_differences_rows<T, DPL>(a, b, block, weights, cols);
      });
    for (auto& member : team) member.join();
  }
}

template <typename T>
void run_backward(const gaussreg::SignedDifferences<T>& a) {
  if (a.d <= 32) return launch<T, 1>(a);
  if (sizeof(T) == 4 && a.d > 64) return launch<T, 4>(a);
  launch<T, 2>(a);
}

template <typename T>
void check(const std::string& name, int64_t n, int64_t d, int p) {
  std::uint64_t state = 4242 + static_cast<std::uint64_t>(n * 7 + d * 3 + p);
  std::vector<T> z(static_cast<size_t>(n * d));
  for (auto& v : z) v = static_cast<T>(host::uniform_pm1(state));
  const uint64_t pairs = gaussreg::pair_count(static_cast<uint64_t>(n)), words = (pairs + 63) / 64;
  std::vector<unsigned long long> pos(words, 0), neg(words, 0);
  std::vector<T> residual(pairs);
  std::vector<double> weight(pairs);
  for (uint64_t k = 0; k < pairs; ++k) {
    if (p == 2) {
      residual[k] = static_cast<T>(host::uniform_pm1(state));
      weight[k] = static_cast<double>(residual[k]);
    } else {
      const double u = host::uniform_pm1(state);  // +1, -1 or 0 (a tie with its target)
      weight[k] = u > 0.1 ? 1.0 : (u < -0.1 ? -1.0 : 0.0);
      if (weight[k] > 0) pos[k >> 6] |= 1ull << (k & 63);
      if (weight[k] < 0) neg[k >> 6] |= 1ull << (k & 63);
    }
  }
  const T scale = static_cast<T>(0.37);
  std::vector<T> grad(static_cast<size_t>(n * d), T(-7));  // garbage: every element must be written
  run_backward<T>({z.data(), n, d, p, pos.data(), neg.data(), residual.data(), scale, grad.data()});
  double err = 0, size = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) {
      double g = 0;
      for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const uint64_t k = i < j ? gaussreg::pair_index(n, i, j) : gaussreg::pair_index(n, j, i);
        g += weight[k] * (static_cast<double>(z[i * d + c]) - static_cast<double>(z[j * d + c]));
      }
      g *= static_cast<double>(scale);
      err = std::fmax(err, std::fabs(g - static_cast<double>(grad[i * d + c])));
      size = std::fmax(size, std::fabs(g));
    }
  std::printf("{\"case\": \"%s\", \"dtype\": \"%s\", \"p\": %d, \"grad_rel\": %.3e}\n", name.c_str(),
              sizeof(T) == 4 ? "float32" : "float64", p, err / (size > 0 ? size : 1.0));
}

template <typename T>
void run_all() {
  for (int p : {1, 2}) {
    check<T>("n2_d1", 2, 1, p);
    check<T>("n3_d5", 3, 5, p);
    check<T>("n70_d33", 70, 33, p);            // two row blocks, a tile of 6 partners; DPL 2
    check<T>("n130_d64", 130, 64, p);          // tiles below the diagonal (column-staged weights)
    check<T>("n100_d100", 100, 100, p);        // float32: DPL 4 (one chunk); float64: two chunks
    check<T>("n97_d200", 97, 200, p);          // several chunks of coordinates, the last partial
  }
}

}  // namespace

int main() {
  run_all<float>();
  run_all<double>();
  return 0;
}
