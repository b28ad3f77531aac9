// Host checks of the selection's shared slot code (csrc/common/cdf_select.h) that the CUDA
// engine's second level rests on, run without a GPU: OrderedSlots (refined bins cut into
// leaves in key order) and choose_refinement (which bins, how many leaves). Prints one JSON
// line per case with the number of violations found; tests/test_cdf_slots_host.py reads it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "common/cdf_select.h"

using namespace gaussreg;

template <typename T>
struct Case {
  std::mt19937_64 rng;
  uint64_t refined_bins = 0, chosen_bins = 0;  // how much each check exercised
  explicit Case(uint64_t seed) : rng(seed) {}

  using U = typename KeyBins<T>::U;

  // Positive finite bit patterns lo <= hi a few exponents apart.
  std::pair<U, U> extremes() {
    const T a = static_cast<T>(std::ldexp(1.0 + 0.5 * uniform(), static_cast<int>(rng() % 20) - 10));
    const T b = a * static_cast<T>(std::ldexp(1.0 + uniform(), static_cast<int>(rng() % 12)));
    return {static_cast<U>(float_to_bits(a)), static_cast<U>(float_to_bits(b))};
  }
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

  // Violations of OrderedSlots' promises for one random choice of bins and refined bins.
  long check_slots(bool refine) {
    auto [lo, hi] = extremes();
    const KeyBins<T> bins = choose_key_bins<T>(lo, hi, 1 + rng() % 3000);
    const uint64_t count = bins.count();
    std::vector<uint32_t> upto(count + 1, 0);
    OrderedSlots<T> slots{bins, KeyLeaves<T>{}, nullptr};
    if (refine && bins.shift > 0) {
      slots.leaves.bits = 1 + static_cast<int>(rng() % std::min(bins.shift, 6));  // at most 64 leaves a bin
      for (uint64_t b = 1; b + 1 < count; ++b) upto[b + 1] = (rng() % 3 == 0);
      upto[2] = 1;  // bin 1 always refined: a refined first in-range bin
      for (uint64_t b = 0; b < count; ++b) upto[b + 1] += upto[b];
      slots.leaves.used = upto[count];
      refined_bins = slots.leaves.used;
      slots.refined_upto = upto.data();
    }
    long bad = 0;
    const uint64_t all = slots.count();
    // Every slot: its bin's first slot is at or before it, its range within its bin, leaves
    // of a bin adjacent (one bit pattern apart).
    for (uint64_t s = 0; s < all; ++s) {
      const uint64_t b = slots.bin_of_slot(s);
      bad += b >= count || slots.first_slot(b) > s || (b + 1 < count && slots.first_slot(b + 1) <= s);
      const auto r = slots.range(s);
      bad += r.finite != bins.finite(b);
      if (!r.finite) continue;
      bad += r.low > r.high || r.low < bins.low(b) || r.high > bins.high(b);
      if (slots.refined(b) && s + 1 < all && slots.bin_of_slot(s + 1) == b)
        bad += float_to_bits(slots.range(s + 1).low) != float_to_bits(r.high) + 1;
    }
    // Keys in increasing order: slots never decrease, stay below count(), and hold the key.
    std::vector<U> keys{0, 1, lo, hi, static_cast<U>(hi + 1), static_cast<U>(lo - 1)};
    const U top = static_cast<U>(hi + (hi - lo) / 4 + 2);
    for (int k = 0; k < 20000; ++k) keys.push_back(static_cast<U>(rng() % top));
    for (uint64_t b = 1; b + 1 < count; ++b) {  // every bin edge, both sides
      keys.push_back(float_to_bits(bins.low(b)));
      keys.push_back(float_to_bits(bins.high(b)));
    }
    std::set<U> sorted(keys.begin(), keys.end());
    uint64_t previous = 0;
    for (const U key : sorted) {
      const uint64_t s = slots.slot_of(key);
      bad += s >= all || s < previous || slots.bin_of_slot(s) != bins.bin_of(key);
      const auto r = slots.range(s);
      const T value = KeyBins<T>::value_of(key);
      if (r.finite) bad += value < r.low || value > r.high;
      previous = s;
    }
    if (!refine) bad += all != count || slots.slot_of(hi) != bins.bin_of(hi);
    return bad;
  }

  // Violations of choose_refinement's promises for random candidates.
  long check_refinement() {
    const uint64_t bins = 3 + rng() % 5000;
    const uint64_t budget = std::max<uint64_t>(bins - 2, 1 + rng() % 4096);
    const int shift = static_cast<int>(rng() % 24);
    std::vector<RefineCandidate> candidates;
    uint64_t mixed = rng() % 1000;  // pairs of mixed bins no leaf can cut
    for (uint64_t b = 1; b + 1 < bins; ++b)
      if (rng() % 2 == 0) {
        const uint64_t c = 2 + rng() % (rng() % 8 == 0 ? 100000 : 50);
        candidates.push_back({c, b});
        mixed += c;
      }
    const uint64_t pairs = mixed * (1 + rng() % 40);
    const uint64_t capacity = 1 + rng() % (2 * mixed + 1);
    const Refinement r = choose_refinement(candidates, mixed, shift, budget, pairs, capacity);
    long bad = 0;
    chosen_bins = r.bins.size();
    if (r.bins.empty()) return bad + (r.bits != 0);
    const uint64_t k = r.bins.size();
    bad += r.bits < 1 || r.bits > shift || (k << r.bits) > budget;
    bad += choose_leaf_bits(shift, k, budget) != r.bits;  // the split steps rebuild bits from k
    for (uint64_t i = 1; i < k; ++i) bad += r.bins[i] <= r.bins[i - 1];
    // The refined bins are the k of most keys, ties to the lower bin.
    std::vector<RefineCandidate> order = candidates;
    std::sort(order.begin(), order.end(), [](const RefineCandidate& x, const RefineCandidate& y) {
      return x.count != y.count ? x.count > y.count : x.bin < y.bin;
    });
    std::set<uint64_t> top;
    uint64_t covered = 0;
    for (uint64_t i = 0; i < k; ++i) top.insert(order[i].bin), covered += order[i].count;
    for (const uint64_t b : r.bins) bad += top.count(b) == 0;
    bad += !worth_refining(covered, mixed, pairs, capacity);
    return bad;
  }
};

template <typename T>
void run(const char* dtype) {
  for (uint64_t seed = 0; seed < 40; ++seed) {
    Case<T> c(seed);
    const long plain = c.check_slots(false), refined = c.check_slots(true), choice = c.check_refinement();
    std::printf(
        "{\"dtype\": \"%s\", \"seed\": %llu, \"plain\": %ld, \"refined\": %ld, \"choice\": %ld, "
        "\"refined_bins\": %llu, \"chosen_bins\": %llu}\n",
        dtype, static_cast<unsigned long long>(seed), plain, refined, choice,
        static_cast<unsigned long long>(c.refined_bins), static_cast<unsigned long long>(c.chosen_bins));
  }
}

int main() {
  run<float>("float32");
  run<double>("float64");
  return 0;
}
