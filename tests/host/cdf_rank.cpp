// The CUDA cdf_attraction rank pass (csrc/common/cdf_rank.h) run on the CPU: a block's 256
// threads are std::threads (their sum meets at a real barrier), the blocks of a pass one
// after the other, the passes cut where the multi-pass forward may cut them (anywhere,
// also inside a chunk, several times in one chunk), with the two carry buffers alternating
// as cuda/cdf_attraction.cu's launch_rank alternates them. Checked against a direct loop
// over the ranks: every sign bit or residual, every sorted value, and every chunk's
// partial sum the same bits as the one-pass run. Each case prints one JSON line.
// tests/test_cdf_rank_host.py compiles and runs it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emulation.h"
#include "common/cdf_rank.h"

namespace {

using gaussreg::kRankChunk;
using gaussreg::kRankThreads;

struct HostBlock {
  int index;
  host::Barrier* barrier;
  double* sums;
  int thread() const { return index; }
  double sum(double v) const {  // in thread order, valid in thread 0
    sums[index] = v;
    barrier->wait();
    double total = 0;
    if (index == 0)
      for (int k = 0; k < kRankThreads; ++k) total += sums[k];
    barrier->wait();
    return total;
  }
  void or_bits(unsigned long long* word, unsigned long long bits) const {
    reinterpret_cast<std::atomic<unsigned long long>*>(word)->fetch_or(bits);
  }
};

// The entries of one pass: its slice of the sorted (key bits, pair index) arrays, all the
// device's buffer holds; a read past it is counted (and answered with a zero entry).
struct SliceReader {
  const uint64_t* key_bits;
  const uint64_t* index;
  uint64_t count;
  std::atomic<uint64_t>* outside;
  gaussreg::RankEntry operator()(uint64_t pos) const {
    if (pos >= count) {
      outside->fetch_add(1);
      return {0, 0};
    }
    return {key_bits[pos], index[pos]};
  }
};

template <typename T>
uint64_t bits_of(T key) {
  if constexpr (sizeof(T) == 4) {
    uint32_t word;
    std::memcpy(&word, &key, sizeof word);
    return word;
  } else {
    uint64_t word;
    std::memcpy(&word, &key, sizeof word);
    return word;
  }
}

template <typename T>
struct Outcome {
  std::vector<unsigned long long> pos, neg;
  std::vector<T> residual, sorted;
  std::vector<double> partials;
  std::atomic<uint64_t> outside{0};
};

// Ranks [0, pairs) in passes cut at `cuts` (ascending, inside (0, pairs)).
template <typename T>
void run_passes(const std::vector<uint64_t>& key_bits, const std::vector<uint64_t>& index,
                const gaussreg::RankQuantiles<T>& quantiles, int p, std::vector<uint64_t> cuts, Outcome<T>& out) {
  const uint64_t pairs = key_bits.size();
  out.pos.assign((pairs + 63) / 64, 0);
  out.neg.assign((pairs + 63) / 64, 0);
  out.residual.assign(pairs, T(-7));
  out.sorted.assign(pairs, T(-7));
  out.partials.assign((pairs + kRankChunk - 1) / kRankChunk, -1.0);
  std::vector<double> carry(2 * kRankChunk, -1.0);
  const gaussreg::RankArgs<T> a{quantiles, p, out.pos.data(), out.neg.data(), out.residual.data(), out.sorted.data(),
                                pairs};
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(pairs);
  for (size_t pass = 0; pass + 1 < cuts.size(); ++pass) {
    const uint64_t r0 = cuts[pass], r1 = cuts[pass + 1];
    if (r0 == r1) continue;
    const SliceReader entries{key_bits.data() + r0, index.data() + r0, r1 - r0, &out.outside};
    const double* carry_in = carry.data() + (pass & 1) * kRankChunk;
    double* carry_out = carry.data() + ((pass + 1) & 1) * kRankChunk;
    const uint64_t blocks = (r1 - 1) / kRankChunk - r0 / kRankChunk + 1;
    for (uint64_t b = 0; b < blocks; ++b) {
      host::Barrier barrier(kRankThreads);
      std::vector<double> sums(kRankThreads);
      std::vector<std::thread> team;
      for (int t = 0; t < kRankThreads; ++t)
        team.emplace_back([&, t] {
          HostBlock block{t, &barrier, sums.data()};
          gaussreg::rank_chunks<T>(entries, a, r0, r1, carry_in, carry_out, out.partials.data(), b, blocks, block);
        });
      for (auto& member : team) member.join();
    }
  }
}

template <typename T>
void check(const std::string& name, uint64_t pairs, int p, const std::vector<uint64_t>& cuts) {
  std::uint64_t state = 99 + pairs * 5 + static_cast<uint64_t>(p);
  // Sorted keys with ties, a random permutation of the pair indices, ascending targets
  // (some equal to their key: e = 0, neither bit).
  std::vector<T> keys(pairs), table(pairs);
  for (auto& k : keys) k = static_cast<T>(std::floor(host::uniform01(state) * 300.0) / 64.0);
  std::sort(keys.begin(), keys.end());
  for (uint64_t r = 0; r < pairs; ++r)
    table[r] = host::uniform01(state) < 0.1 ? keys[r] : static_cast<T>((static_cast<double>(r) + 0.5) / pairs * 4.7);
  std::sort(table.begin(), table.end());
  std::vector<uint64_t> key_bits(pairs), index(pairs);
  for (uint64_t r = 0; r < pairs; ++r) key_bits[r] = bits_of(keys[r]), index[r] = r;
  for (uint64_t r = pairs; r > 1; --r)  // a shuffle: the pair indices in a random order
    std::swap(index[r - 1], index[static_cast<uint64_t>(host::uniform01(state) * static_cast<double>(r))]);
  gaussreg::RankQuantiles<T> quantiles{};
  quantiles.source = gaussreg::QuantileSource::Table;
  quantiles.table = table.data();
  quantiles.m = pairs;

  Outcome<T> one, cut;
  run_passes<T>(key_bits, index, quantiles, p, {}, one);
  run_passes<T>(key_bits, index, quantiles, p, cuts, cut);
  uint64_t wrong = 0, zero_signs = 0;
  double direct = 0, value = 0;
  for (uint64_t r = 0; r < pairs; ++r) {
    const T e = keys[r] - table[r];
    const uint64_t k = index[r], bit = 1ull << (k & 63);
    direct += p == 1 ? std::fabs(static_cast<double>(e)) : static_cast<double>(e) * static_cast<double>(e);
    wrong += !(one.sorted[r] == keys[r]);
    if (p == 2) {
      wrong += !(one.residual[k] == e);
    } else {
      const bool pos = (one.pos[k >> 6] & bit) != 0, neg = (one.neg[k >> 6] & bit) != 0;
      wrong += pos != (e > T(0)) || neg != (e < T(0));
      zero_signs += e == T(0);
    }
  }
  for (double partial : one.partials) value += partial;
  const bool same = one.pos == cut.pos && one.neg == cut.neg && one.sorted == cut.sorted &&
                    (p == 1 || one.residual == cut.residual) && one.partials == cut.partials;
  std::printf("{\"case\": \"%s\", \"dtype\": \"%s\", \"p\": %d, \"pairs\": %llu, \"passes\": %zu, \"wrong\": %llu, "
              "\"zero_signs\": %llu, \"value_rel\": %.3e, \"passes_same_bits\": %s, \"outside\": %llu}\n",
              name.c_str(), sizeof(T) == 4 ? "float32" : "float64", p, static_cast<unsigned long long>(pairs),
              cuts.size() + 1, static_cast<unsigned long long>(wrong), static_cast<unsigned long long>(zero_signs),
              std::fabs(value - direct) / direct, same ? "true" : "false",
              static_cast<unsigned long long>(one.outside + cut.outside));
}

template <typename T>
void run_all() {
  for (int p : {1, 2}) {
    check<T>("one_chunk_short", 1000, p, {1, 999});
    check<T>("chunk_edges", 3 * kRankChunk, p, {kRankChunk, 2 * kRankChunk});
    check<T>("cuts_inside_chunks", 5 * kRankChunk + 77, p, {300, 2500, 2600, 2601, 7000, 9000});
    check<T>("three_cuts_in_one_chunk", 2 * kRankChunk + 5, p, {100, 900, 1800, kRankChunk + 3});
  }
}

}  // namespace

int main() {
  run_all<float>();
  run_all<double>();
  return 0;
}
