// The CUDA cdf_attraction selection (p = 1) run on the CPU, end to end: the steps of
// cuda/cdf_attraction.cu's select_forward in its order and slot layout, each kernel's
// per-thread step taken from csrc/common/cdf_select_slots.h and csrc/common/cdf_select.h
// (the same code the kernels run), one thread after another; CUB's scans and sorts, the
// atomics and the block sums are plain loops here. Checked against a brute force: every
// pair's sign bit (the keys ranked by bits, ties by pair index, against table targets) and
// the value. Each case prints one JSON line; tests/test_cdf_select_host.py compiles and
// runs it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "emulation.h"
#include "common/cdf_select_slots.h"

namespace {

using namespace gaussreg;

template <typename T>
using U = typename KeyBins<T>::U;

// One slot array of the workspace: counts and the significand sums (low word, carries).
struct SlotSums {
  std::vector<unsigned long long> count, lo, hi;
  explicit SlotSums(uint64_t slots) : count(slots, 0), lo(slots, 0), hi(slots, 0) {}
  template <typename T>
  void add(uint64_t s, U<T> bits) {  // count_key, without the atomics
    ++count[s];
    const unsigned long long sig = static_cast<unsigned long long>(KeyBins<T>::significand(bits));
    const unsigned long long before = lo[s];
    lo[s] += sig;
    if (lo[s] < before) ++hi[s];
  }
};

struct Outcome {
  std::vector<unsigned long long> pos, neg;
  double value = 0.0;
  uint64_t passes = 0, sorted = 0, refined = 0, mixed_slots = 0;
  bool refused = false;
};

// Step 3 (classify_slots): first ranks (scan of the counts), each slot's class and share
// (classify_slot), then the mixed slots' first entries (scan of the mixed counts).
template <typename T>
void classify_slots(const OrderedSlots<T>& slots, const SlotSums& sums, const RankQuantiles<T>& quantiles,
                    std::vector<unsigned char>& cls, std::vector<unsigned long long>& first,
                    std::vector<unsigned long long>& mixed, std::vector<unsigned long long>& mixed_start,
                    std::vector<double>& shares) {
  const uint64_t all = slots.count();
  first.assign(all + 1, 0);
  for (uint64_t s = 0; s < all; ++s) first[s + 1] = first[s] + sums.count[s];
  cls.assign(all, 0);
  mixed.assign(all, 0);
  shares.assign(2 * all, 0.0);
  for (uint64_t s = 0; s < all; ++s) {
    const SlotClass c = classify_slot(slots, s, sums.count[s], first[s], sums.lo[s], sums.hi[s], quantiles);
    cls[s] = static_cast<unsigned char>(c.cls);
    mixed[s] = c.mixed;
    shares[s] = c.share;
  }
  mixed_start.assign(all + 1, 0);
  for (uint64_t s = 0; s < all; ++s) mixed_start[s + 1] = mixed_start[s] + mixed[s];
}

// select_forward over the keys of pairs 0..n'-1 (keys[k] is pair k's key), with `bins`
// in-range bins and sort entries for `capacity` pairs per pass.
template <typename T>
Outcome select(const std::vector<T>& keys, const RankQuantiles<T>& quantiles, uint64_t bins, uint64_t capacity) {
  const uint64_t pairs = keys.size();
  const uint64_t bin_count = bins + 2, slot_budget = bin_count + leaf_slots_of(bin_count);
  Outcome out;
  out.pos.assign((pairs + 63) / 64, 0);
  out.neg.assign((pairs + 63) / 64, 0);
  auto bits_of = [&](uint64_t k) { return static_cast<U<T>>(float_to_bits(keys[k])); };

  // Steps 1-2: the bins from a strided sample's extremes (sample_keys_kernel, choose_bins_kernel).
  const uint64_t sample = select_sample_size(pairs);
  U<T> lo = ~U<T>{0}, hi = 0;
  for (uint64_t s = 0; s < sample; ++s) {
    const auto k = static_cast<uint64_t>((static_cast<unsigned __int128>(2 * s + 1) * pairs) / (2 * sample));
    const U<T> b = bits_of(k);
    if (b == 0) continue;
    lo = std::min(lo, b);
    hi = std::max(hi, b);
  }
  if (hi == 0) lo = hi = 1;
  const KeyBins<T> chosen = choose_key_bins<T>(lo, hi, bin_count - 2);
  SlotSums bin_sums(chosen.count());
  for (uint64_t k = 0; k < pairs; ++k) bin_sums.add<T>(chosen.bin_of(bits_of(k)), bits_of(k));

  // Step 3 over the bins.
  OrderedSlots<T> slots{chosen, KeyLeaves<T>{}, nullptr};
  std::vector<unsigned char> cls;
  std::vector<unsigned long long> first, mixed, mixed_start;
  std::vector<double> shares;
  classify_slots(slots, bin_sums, quantiles, cls, first, mixed, mixed_start, shares);

  // Step 4b (refine_mixed_bins): leaves for the bins choose_refinement picks, counted again.
  const uint64_t count = chosen.count();
  std::vector<RefineCandidate> candidates;
  for (uint64_t b = 0; b < count; ++b)
    if (mixed[b] > 1 && chosen.finite(b)) candidates.push_back({mixed[b], b});
  const Refinement refinement =
      choose_refinement(std::move(candidates), mixed_start[count], chosen.shift, slot_budget - count, pairs, capacity);
  std::vector<uint32_t> upto(count + 1, 0);
  if (!refinement.bins.empty()) {
    for (const uint64_t b : refinement.bins) upto[b + 1] = 1;
    for (uint64_t b = 0; b < count; ++b) upto[b + 1] += upto[b];
    slots.leaves.bits = refinement.bits;
    slots.leaves.used = refinement.bins.size();
    slots.refined_upto = upto.data();
    const uint64_t all = slots.count();
    if (all > slot_budget) throw std::logic_error("more leaves than the workspace holds");
    SlotSums slot_sums(all);
    for (uint64_t b = 0; b < count; ++b)
      spread_bin(b, slots.refined(b), slots.first_slot(b), bin_sums.count.data(), bin_sums.lo.data(),
                 bin_sums.hi.data(), slot_sums.count.data(), slot_sums.lo.data(), slot_sums.hi.data());
    for (uint64_t k = 0; k < pairs; ++k)  // LeafCountEmitter
      if (slots.refined(chosen.bin_of(bits_of(k)))) slot_sums.add<T>(slots.slot_of(bits_of(k)), bits_of(k));
    classify_slots(slots, slot_sums, quantiles, cls, first, mixed, mixed_start, shares);
    out.refined = slots.leaves.used;
  }
  const uint64_t all = slots.count();
  if (first[all] != pairs) throw std::logic_error("the slots do not hold every pair once");

  // Step 5: the passes. Decided pairs get their signs in the first; each sorts the mixed
  // pairs of its slots by (key bits, pair index), ranks them in their slots and sums |e| per slot.
  uint64_t largest = 0;
  for (unsigned long long m : mixed) {
    out.mixed_slots += m != 0;
    largest = std::max<uint64_t>(largest, m);
  }
  try {
    if (largest > capacity) refuse_tied_bin(largest, capacity);
    bool first_pass = true;
    out.passes = slots.refined_upto != nullptr ? 2 : 1;
    for (uint64_t s0 = 0; first_pass || s0 < all;) {
      while (!first_pass && s0 < all && mixed[s0] == 0) ++s0;
      if (!first_pass && s0 == all) break;
      const uint64_t s1 = first_pass && mixed_start[all] == 0 ? all : next_mixed_run(mixed, s0, capacity);
      std::vector<std::pair<uint64_t, uint64_t>> entries;  // (key bits, pair index): the composite's order
      for (uint64_t k = 0; k < pairs; ++k) {
        const CollectedKey c = collect_key(slots, cls.data(), s0, s1, bits_of(k));
        if (first_pass && c.cls == kBinAbove) out.pos[k >> 6] |= 1ull << (k & 63);
        if (first_pass && c.cls == kBinBelow) out.neg[k >> 6] |= 1ull << (k & 63);
        if (c.keep) entries.emplace_back(bits_of(k), k);
      }
      if (entries.size() > capacity) throw std::logic_error("a pass collected more than its capacity");
      ++out.passes;
      std::sort(entries.begin(), entries.end());
      std::vector<double> terms(entries.size());
      for (uint64_t p = 0; p < entries.size(); ++p) {
        const T e = mixed_entry_residual(slots, entries[p].first, p, mixed_start[s0], first.data(),
                                         mixed_start.data(), quantiles);
        const uint64_t k = entries[p].second;
        if (e != T(0)) (e > T(0) ? out.pos : out.neg)[k >> 6] |= 1ull << (k & 63);
        terms[p] = abs_power(e, 1);
      }
      for (uint64_t s = s0; s < s1; ++s)  // sum_mixed_bins_kernel, in entry order
        for (uint64_t e = mixed_start[s] - mixed_start[s0]; e < mixed_start[s + 1] - mixed_start[s0]; ++e)
          shares[all + s] += terms[e];
      out.sorted += entries.size();
      first_pass = false;
      s0 = s1;
    }
  } catch (const std::overflow_error&) {
    out.refused = true;
  }
  for (double share : shares) out.value += share;
  return out;
}

template <typename T>
struct Problem {
  std::vector<T> keys, table;
};

// Counts of wrong signs and the value's error against ranking every pair directly.
template <typename T>
void check(const std::string& name, const Problem<T>& problem, uint64_t bins, uint64_t capacity) {
  const uint64_t pairs = problem.keys.size();
  RankQuantiles<T> quantiles{};
  quantiles.source = QuantileSource::Table;
  quantiles.table = problem.table.data();
  quantiles.m = pairs;
  const Outcome got = select<T>(problem.keys, quantiles, bins, capacity);

  std::vector<uint64_t> order(pairs);
  for (uint64_t k = 0; k < pairs; ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) {
    const uint64_t x = float_to_bits(problem.keys[a]), y = float_to_bits(problem.keys[b]);
    return x != y ? x < y : a < b;
  });
  uint64_t wrong = 0, zero = 0;
  double value = 0.0, scale = 0.0;
  for (uint64_t r = 0; r < pairs; ++r) {
    const uint64_t k = order[r];
    const double key = problem.keys[k], target = problem.table[r];  // exact: float32's difference is in double
    const bool pos = (got.pos[k >> 6] >> (k & 63)) & 1, neg = (got.neg[k >> 6] >> (k & 63)) & 1;
    wrong += pos != (key > target) || neg != (key < target);
    zero += key == target;
    value += std::fabs(key - target);
    scale += std::fabs(key) + std::fabs(target);
  }
  std::printf("{\"case\": \"%s\", \"dtype\": \"%s\", \"pairs\": %llu, \"bins\": %llu, \"capacity\": %llu, "
              "\"refused\": %s, \"wrong\": %llu, \"zero_residuals\": %llu, \"value_err\": %.3e, \"passes\": %llu, "
              "\"sorted\": %llu, \"refined\": %llu, \"mixed_slots\": %llu}\n",
              name.c_str(), sizeof(T) == 4 ? "float32" : "float64", static_cast<unsigned long long>(pairs),
              static_cast<unsigned long long>(bins), static_cast<unsigned long long>(capacity),
              got.refused ? "true" : "false", static_cast<unsigned long long>(wrong),
              static_cast<unsigned long long>(zero), std::fabs(got.value - value) / std::max(scale, 1e-300),
              static_cast<unsigned long long>(got.passes), static_cast<unsigned long long>(got.sorted),
              static_cast<unsigned long long>(got.refined), static_cast<unsigned long long>(got.mixed_slots));
}

// Keys for n' pairs: `draw` gives each key, the targets are another draw's sorted keys
// (`shift` and `scale` move them), or the sorted keys themselves (on_keys: every slot mixed).
template <typename T, typename Draw>
Problem<T> make(uint64_t pairs, uint64_t seed, Draw draw, double shift, double scale, bool on_keys) {
  Problem<T> p;
  std::uint64_t state = seed;
  p.keys.resize(pairs);
  for (auto& k : p.keys) k = static_cast<T>(draw(state));
  if (on_keys) {
    p.table = p.keys;
  } else {
    p.table.resize(pairs);
    for (auto& t : p.table) t = static_cast<T>(draw(state) * scale + shift);
  }
  std::sort(p.table.begin(), p.table.end());
  return p;
}

double chi2ish(std::uint64_t& state) {  // a positive, skewed key: half a sum of squares
  double s = 0.0;
  for (int c = 0; c < 8; ++c) {
    const double u = host::uniform_pm1(state);
    s += u * u;
  }
  return 0.5 * s;
}

template <typename T>
void run_all() {
  const uint64_t n = 400, pairs = n * (n - 1) / 2;  // 79800 pairs: past select_sample_size's 2^16
  auto ties = [](std::uint64_t& state) { return std::floor(host::uniform01(state) * 40.0) / 8.0; };  // 0 included
  auto clusters = [](std::uint64_t& state) {
    return host::uniform01(state) < 0.5 ? 1.0 + 0.01 * host::uniform01(state) : 900.0 + host::uniform01(state);
  };
  const auto crossing = make<T>(pairs, 1, chi2ish, 0.0, 1.0, false);
  check<T>("crossing", crossing, 1024, pairs);
  check<T>("crossing_small_budget", crossing, 1024, 3000);
  check<T>("crossing_one_bin", crossing, 1, pairs);
  check<T>("crossing_one_bin_small_budget", crossing, 1, 2500);
  check<T>("far_below_targets", make<T>(pairs, 2, chi2ish, 50.0, 1.0, false), 1024, pairs);
  check<T>("far_above_targets", make<T>(pairs, 3, chi2ish, 0.0, 1e-3, false), 1024, pairs);
  check<T>("on_its_own_targets", make<T>(pairs, 4, chi2ish, 0.0, 1.0, true), 1024, pairs);
  check<T>("on_its_own_targets_small_budget", make<T>(pairs, 4, chi2ish, 0.0, 1.0, true), 64, 5000);
  check<T>("ties_and_zeros", make<T>(pairs, 5, ties, 0.0, 1.0, false), 1024, pairs);
  check<T>("ties_on_targets", make<T>(pairs, 6, ties, 0.0, 1.0, true), 256, pairs);
  check<T>("ties_refused", make<T>(pairs, 7, ties, 0.0, 1.0, false), 1024, 100);
  check<T>("two_clusters", make<T>(pairs, 8, clusters, 0.0, 1.0, false), 1024, pairs);
  check<T>("two_clusters_small_budget", make<T>(pairs, 9, clusters, 0.3, 1.0, false), 4096, 700);
  check<T>("two_pairs", make<T>(3, 10, chi2ish, 0.0, 1.0, false), 1024, 3);
  check<T>("one_pair", make<T>(1, 11, chi2ish, 0.0, 1.0, false), 1024, 1);
}

}  // namespace

int main() {
  run_all<float>();
  run_all<double>();
  return 0;
}
