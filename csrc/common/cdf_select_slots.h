// The CUDA engine's selection steps of the distances term of CDF attraction (SPEC 1, p = 1)
// for one slot, one bin, one key or one sorted mixed pair, in the slot layout of
// OrderedSlots (csrc/common/cdf_select.h: refined bins cut into leaves, numbered in key
// order). csrc/cuda/cdf_attraction.cu runs each as one thread of its kernel (classify_slots,
// spread_bins, the collect pass's emitter, rank_mixed); tests/host/cdf_select.cpp runs them
// on the CPU, end to end with stand-ins for CUB's scans and sorts, against a brute force.
#pragma once

#include <cstdint>
#include <vector>

#include "cdf_attraction.h"
#include "cdf_rank.h"
#include "cdf_select.h"
#include "config.h"

namespace gaussreg {

// The exact sum of a slot's keys from its significand sum (low 64 bits, and the carries out
// of them for double keys), times the unit of its bin: every key of a bin is an integer
// significand times that one power of two.
template <typename T>
GAUSSREG_HD double slot_key_sum(unsigned long long lo, unsigned long long hi, double unit) {
  typename SignificandSum<T>::type sum = lo;
  if constexpr (sizeof(T) == 8) sum |= static_cast<unsigned __int128>(hi) << 64;
  (void)hi;
  return integer_to_double(sum) * unit;
}

// What the classification of one slot gives: its class, its count when mixed (0 otherwise,
// so that a scan of these places every mixed pair among all mixed pairs), and a decided
// slot's share of the value, +/-(sum of its keys - sum of the targets of its ranks).
struct SlotClass {
  BinClass cls;
  uint64_t mixed;
  double share;
};

// Slot s holding m keys with ranks [first, first + m) (0-based) and significand sum (lo, hi).
// A slot outside the finite in-range bins (a clamp bin, Inf or NaN patterns) is mixed.
template <typename T>
GAUSSREG_HD SlotClass classify_slot(const OrderedSlots<T>& slots, uint64_t s, uint64_t m, uint64_t first,
                                    unsigned long long lo, unsigned long long hi, const RankQuantiles<T>& quantiles) {
  if (m == 0) return {kBinEmpty, 0, 0.0};
  const typename OrderedSlots<T>::Range range = slots.range(s);
  BinClass c = kBinMixed;
  if (range.finite) {
    int64_t segment = -1;
    const T first_target = quantiles(first, &segment);
    const T last_target = quantiles(first + m - 1, &segment);
    c = classify_bin(range.low, range.high, first_target, last_target);
  }
  if (c == kBinMixed) return {kBinMixed, m, 0.0};
  const double keys = slot_key_sum<T>(lo, hi, range.unit);
  const double targets = quantiles.range_sum(first, m);
  return {c, 0, c == kBinAbove ? keys - targets : targets - keys};
}

// The second level: an unrefined bin's count and sums move to its slot (a refined bin's
// leaves are counted by the leaf pass).
GAUSSREG_HD void spread_bin(uint64_t b, bool refined, uint64_t slot, const unsigned long long* count,
                            const unsigned long long* sum_lo, const unsigned long long* sum_hi,
                            unsigned long long* slot_count, unsigned long long* slot_lo, unsigned long long* slot_hi) {
  if (refined) return;
  slot_count[slot] = count[b];
  slot_lo[slot] = sum_lo[b];
  slot_hi[slot] = sum_hi[b];
}

// What a collection pass does with one key: the sign of a decided pair (its slot's class),
// and whether it is one of the mixed pairs of slots [s0, s1) that this pass sorts.
struct CollectedKey {
  BinClass cls;
  bool keep;
};

template <typename T>
GAUSSREG_HD CollectedKey collect_key(const OrderedSlots<T>& slots, const unsigned char* cls, uint64_t s0, uint64_t s1,
                                     typename KeyBins<T>::U bits) {
  const uint64_t s = slots.slot_of(bits);
  const BinClass c = static_cast<BinClass>(cls[s]);
  return {c, c == kBinMixed && s >= s0 && s < s1};
}

// A pass's sorted entry `pos` (its mixed slots start at entry `offset` among all mixed
// pairs): its residual e = d - c'_rank. Its rank is its slot's first rank plus its place in
// the slot: slots are in key order, so a slot's keys are one run of the sorted pass, which
// begins at entry mixed_start[slot] - offset.
template <typename T>
GAUSSREG_HD T mixed_entry_residual(const OrderedSlots<T>& slots, uint64_t key_bits, uint64_t pos, uint64_t offset,
                                   const unsigned long long* first, const unsigned long long* mixed_start,
                                   const RankQuantiles<T>& quantiles) {
  const uint64_t s = slots.slot_of(static_cast<typename KeyBins<T>::U>(key_bits));
  const uint64_t rank = first[s] + (offset + pos - mixed_start[s]);
  int64_t segment = -1;
  return key_of_bits<T>(key_bits) - quantiles(rank, &segment);
}

// ---- host: the passes over the mixed slots

// The end of the pass that starts at slot s0: the mixed slots from s0 whose pairs fit
// `capacity` together (`mixed`: every slot's mixed count, 0 when not mixed; the CPU's
// plan_mixed_pass). A slot alone above `capacity` is refused.
inline uint64_t next_mixed_run(const std::vector<unsigned long long>& mixed, uint64_t s0, uint64_t capacity) {
  uint64_t used = 0, s = s0;
  for (; s < mixed.size(); ++s) {
    if (used + mixed[s] > capacity) break;
    used += mixed[s];
  }
  if (s < mixed.size() && used == 0) refuse_tied_bin(mixed[s], capacity);
  return s;
}

}  // namespace gaussreg
