// The selection histogram of the distances term of CDF attraction (SPEC 1, p = 1), shared
// by the CPU and CUDA engines: which bin a key falls in, the value range a bin covers,
// exact per-bin sums, and whether a bin is decided without sorting.
//
// Bins are aligned ranges of 2^shift consecutive IEEE bit patterns of the (non-negative)
// keys d_ij, between the smallest and largest positive key of a sample, plus two clamp bins
// for keys outside (zeros included). The bit pattern of a non-negative float orders like
// its value, so bin b's keys all precede bin b+1's, and the ranks of bin b are exactly
// (A_b, A_b + m_b] with A_b the count of keys in bins before it. With shift at most the
// mantissa width a bin never straddles two exponents, so every key of a bin is an integer
// significand times one power of two and the bin's sum is an exact integer sum: per-thread
// histograms merge in any order to the same bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "config.h"
#include "vmath.h"

namespace gaussreg {

// How a bin's pairs get their sign sgn(d - c') without a sort.
enum BinClass : uint8_t {
  kBinEmpty = 0,
  kBinAbove = 1,    // every key above every target of its ranks: sgn = +1
  kBinBelow = 2,    // every key below every target of its ranks: sgn = -1
  kBinMixed = 3,    // ranks needed: collected and sorted in the current pass
  kBinLater = 4,    // mixed, collected in a later pass (sort memory)
  kBinRefined = 5,  // mixed, cut into leaves (KeyLeaves): its keys are classified by leaf
};

// Integer sum of significands: exact for any bin of float keys (24 + 40 bits), and of
// double keys (53 + 64 bits).
template <typename T>
struct SignificandSum;
template <>
struct SignificandSum<float> {
  using type = uint64_t;
};
template <>
struct SignificandSum<double> {
  using type = unsigned __int128;
};

template <typename T>
struct KeyBins {
  using U = std::make_unsigned_t<typename FloatBits<T>::Int>;
  using B = FloatBits<T>;
  U base;         // first in-range cell: (bits >> shift) == base is bin 1
  int shift;      // log2 of bit patterns per bin, <= B::kMantissa
  uint64_t range; // in-range bins; bins 0 and range + 1 are the clamps

  GAUSSREG_HD uint64_t count() const { return range + 2; }

  GAUSSREG_HD uint64_t bin_of(U bits) const {
    const U cell = bits >> shift;
    if (bits == 0 || cell < base) return 0;
    const uint64_t offset = static_cast<uint64_t>(cell - base);
    return offset >= range ? range + 1 : offset + 1;
  }

  // Smallest and largest key an in-range bin b (1..range) can hold.
  GAUSSREG_HD T low(uint64_t b) const { return value_of(static_cast<U>((base + (b - 1)) << shift)); }
  GAUSSREG_HD T high(uint64_t b) const {
    return value_of(static_cast<U>(((base + b) << shift) - 1));
  }

  // The biased exponent shared by every key of in-range bin b.
  GAUSSREG_HD int64_t exponent(uint64_t b) const {
    return static_cast<int64_t>(static_cast<U>((base + (b - 1)) << shift) >> B::kMantissa);
  }

  // An in-range bin of finite keys (Inf and NaN patterns have the top exponent).
  GAUSSREG_HD bool finite(uint64_t b) const {
    constexpr int64_t top = (int64_t{1} << (8 * sizeof(U) - 1 - B::kMantissa)) - 1;
    return b >= 1 && b <= range && exponent(b) < top;
  }

  // The key's significand as an integer; key = significand * 2^(scale exponent of its bin).
  GAUSSREG_HD static U significand(U bits) {
    const U mantissa = bits & ((U{1} << B::kMantissa) - 1);
    return (bits >> B::kMantissa) == 0 ? mantissa : mantissa | (U{1} << B::kMantissa);
  }

  // 2^e such that every key of in-range bin b is significand * 2^e.
  GAUSSREG_HD double unit(uint64_t b) const {
    const int64_t e = exponent(b);
    return ldexp(1.0, static_cast<int>((e == 0 ? 1 : e) - B::kBias - B::kMantissa));
  }

  GAUSSREG_HD static T value_of(U bits) { return bits_to_float<T>(static_cast<typename B::Int>(bits)); }
};

// Bins for keys between the positive bit patterns lo <= hi (the sample's extremes): the
// smallest shift that gives at most max_range bins, never above the mantissa width (so
// bins stay within one exponent; any two positive keys then need at most 2^(exponent
// bits) bins; a smaller budget is met by widening the lower clamp bin, see below).
template <typename T>
GAUSSREG_HD KeyBins<T> choose_key_bins(typename KeyBins<T>::U lo, typename KeyBins<T>::U hi, uint64_t max_range) {
  using U = typename KeyBins<T>::U;
  int shift = 0;
  while (shift < FloatBits<T>::kMantissa && static_cast<uint64_t>((hi >> shift) - (lo >> shift)) + 1 > max_range)
    ++shift;
  if (max_range < 1) max_range = 1;
  // Still too many at the widest bins (a budget below the exponents spanned): the lowest
  // exponents go to the lower clamp bin, which is sorted like a mixed one.
  const U top = hi >> shift;
  const U base = static_cast<uint64_t>(top - (lo >> shift)) + 1 > max_range ? top - (max_range - 1) : lo >> shift;
  return {base, shift, static_cast<uint64_t>(top - base) + 1};
}

// The second histogram level: each refined bin cut into 2^bits leaves, aligned ranges of
// 2^(shift - bits) bit patterns in key order. A leaf lies within its bin's exponent, so its
// sum is exact as the bin's is, and its ranks follow from its bin's first rank and the
// counts of the leaves before it. Leaves occupy consecutive slots after the bins.
template <typename T>
struct KeyLeaves {
  using U = typename KeyBins<T>::U;
  int bits = 0;        // log2 of leaves per refined bin; 0: nothing refined
  uint64_t first = 0;  // slot of the first refined bin's first leaf
  uint64_t used = 0;   // refined bins

  GAUSSREG_HD uint64_t per_bin() const { return uint64_t{1} << bits; }
  GAUSSREG_HD uint64_t slots() const { return used << bits; }

  // The slot of the first leaf of the bin that was refined `refined`-th.
  GAUSSREG_HD uint64_t first_slot(uint64_t refined) const { return first + (refined << bits); }

  // Which leaf of its (refined) bin a key falls in.
  GAUSSREG_HD uint64_t leaf_of(const KeyBins<T>& bins, U key) const {
    return static_cast<uint64_t>((key >> (bins.shift - bits)) & (per_bin() - 1));
  }

  // The slot of a key of the bin that was refined `refined`-th.
  GAUSSREG_HD uint64_t slot_of(const KeyBins<T>& bins, uint64_t refined, U key) const {
    return first_slot(refined) + leaf_of(bins, key);
  }

  // Smallest and largest key that leaf `leaf` of in-range bin b can hold.
  GAUSSREG_HD T low(const KeyBins<T>& bins, uint64_t b, uint64_t leaf) const {
    return KeyBins<T>::value_of(low_bits(bins, b, leaf));
  }
  GAUSSREG_HD T high(const KeyBins<T>& bins, uint64_t b, uint64_t leaf) const {
    return KeyBins<T>::value_of(static_cast<U>(low_bits(bins, b, leaf) + ((U{1} << (bins.shift - bits)) - 1)));
  }

 private:
  GAUSSREG_HD U low_bits(const KeyBins<T>& bins, uint64_t b, uint64_t leaf) const {
    return static_cast<U>(((bins.base + (b - 1)) << bins.shift) + (static_cast<U>(leaf) << (bins.shift - bits)));
  }
};

// The slots of a histogram whose refined bins are cut into leaves, in key order (the CUDA
// engine's layout, where one sort of a pass's mixed pairs must find each slot's keys in one
// run): bin b's slot moves up by the extra leaves of the refined bins before it, and a
// refined bin's leaves take its place. With nothing refined (refined_upto null) a slot is a
// bin. The CPU engine keeps its leaves after its bins (KeyLeaves::first_slot) instead.
template <typename T>
struct OrderedSlots {
  using U = typename KeyBins<T>::U;
  KeyBins<T> bins;
  KeyLeaves<T> leaves;           // bits and used; `first` is not used here
  const uint32_t* refined_upto;  // bins.count() + 1: the refined bins before each bin, then all

  GAUSSREG_HD uint64_t extra() const { return leaves.per_bin() - 1; }
  GAUSSREG_HD uint64_t count() const { return bins.count() + (refined_upto ? leaves.used * extra() : 0); }
  GAUSSREG_HD bool refined(uint64_t b) const { return refined_upto && refined_upto[b + 1] != refined_upto[b]; }

  // The first slot of bin b (its only one unless refined).
  GAUSSREG_HD uint64_t first_slot(uint64_t b) const { return refined_upto ? b + refined_upto[b] * extra() : b; }

  GAUSSREG_HD uint64_t slot_of(U key) const {
    const uint64_t b = bins.bin_of(key);
    return refined(b) ? first_slot(b) + leaves.leaf_of(bins, key) : first_slot(b);
  }

  // The bin holding slot s: the last bin whose first slot is at most s.
  GAUSSREG_HD uint64_t bin_of_slot(uint64_t s) const {
    if (!refined_upto) return s;
    uint64_t lo = 0, hi = bins.count() - 1;  // first_slot(lo) <= s < first_slot(hi + 1)
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo + 1) / 2;
      if (first_slot(mid) <= s)
        lo = mid;
      else
        hi = mid - 1;
    }
    return lo;
  }

  // The keys slot s can hold, for classify_bin: finite (an in-range bin of finite keys, or a
  // leaf of one), smallest and largest key, and the unit of its significand sums.
  struct Range {
    bool finite;
    T low, high;
    double unit;
  };
  GAUSSREG_HD Range range(uint64_t s) const {
    const uint64_t b = bin_of_slot(s);
    if (!bins.finite(b)) return {false, T(0), T(0), 0.0};
    if (!refined(b)) return {true, bins.low(b), bins.high(b), bins.unit(b)};
    const uint64_t leaf = s - first_slot(b);
    return {true, leaves.low(bins, b, leaf), leaves.high(bins, b, leaf), bins.unit(b)};
  }
};

// ---- the first level's size (both engines' defaults)

// In-range bins when the caller gives none: about one per 32 pairs, from 2^10 to 2^16, and
// 2^18 beyond n' = 2^26. The mixed pairs are about proportional to the bin width, and the
// empirical CDF of a sample near its target comes closer to it as n grows, so large n needs
// finer bins; but every bin costs a clearing, a merge of the threads' rows and a
// classification, and a histogram beyond the L2 cache slows every pair's count. Measured on
// 2 cores, D = 64, N(0, I) samples, forward: 2^16 bins took 3.2 ms at n = 64 (2016 pairs)
// against 0.34 ms with 2^10, and 7.7 against 3.3 ms (2^12) at n = 512, with 5.3% and 3.8%
// of the pairs mixed; 2^16 is best from n ~ 2048 up to n' ~ 2^26; at n = 32768 (n' = 5.4e8)
// 2^18 bins sorted 1.8% of the pairs instead of 7.9% (forward 6.8 s, not 8.2 s), and 2^20
// sorted 0.4% but took 9.2 s.
constexpr uint64_t kSelectPairsPerBin = 32;
inline uint64_t default_select_bins(uint64_t pairs) {
  if (pairs > (uint64_t{1} << 26)) return uint64_t{1} << 18;
  uint64_t bins = uint64_t{1} << 10;
  while (bins < (uint64_t{1} << 16) && bins * kSelectPairsPerBin < pairs) bins <<= 1;
  return bins;
}

// Keys sampled (at evenly spaced pair indices) for the bins' range: 2^16, or every pair. A
// key outside the sample's range lands in a clamp bin, which is sorted and which no leaf can
// cut: with m keys sampled about n'/m keys lie beyond each extreme. (1 in 64 pairs, at least
// 2^12, left 120 keys in a clamp bin at n = 600, more than a sort budget of 50 entries holds
// in one pass.)
inline uint64_t select_sample_size(uint64_t pairs) { return std::min<uint64_t>(pairs, uint64_t{1} << 16); }

// Leaf slots of the second level: as many as in-range bins, and at least 2^16 so that a small
// bin budget (tests, diagnostics) still refines finely. `bin_count` counts the clamp bins.
// (A minimum of the size's default bins instead, 4096 leaves at n = 301 with 4096 bins, was
// cheaper to count and classify, but left 1802 mixed pairs instead of 106: 67 passes over
// the pairs instead of 6 with a sort budget of 30 entries.)
constexpr uint64_t kMinLeaves = uint64_t{1} << 16;
GAUSSREG_HD uint64_t leaf_slots_of(uint64_t bin_count) {
  return bin_count - 2 > kMinLeaves ? bin_count - 2 : kMinLeaves;
}

// log2 of leaves per refined bin: as many as `refined` bins may have within `budget` leaves,
// and no more than a bin's 2^shift bit patterns.
GAUSSREG_HD int choose_leaf_bits(int shift, uint64_t refined, uint64_t budget) {
  int bits = 0;
  while (bits < shift && bits < 62 && refined <= (budget >> (bits + 1))) ++bits;
  return bits;
}

// ---- which mixed bins the second level cuts (host code, shared by both engines)

// A mixed bin the second level may cut: finite, of more than one key, and with bit patterns
// to cut (shift > 0). The clamp bins and bins of one bit pattern stay as they are.
struct RefineCandidate {
  uint64_t count;  // the bin's keys
  uint64_t bin;
};

struct Refinement {
  int bits = 0;               // log2 of leaves per refined bin; 0: nothing refined
  std::vector<uint64_t> bins; // the refined bins, ascending
};

// Whether one more pass over the pairs pays for itself, when refining would take `covered`
// of the `mixed` pairs out of the sort (at best): when they are more than 1/refine_fraction
// of all pairs, or when the mixed pairs need more than one collection pass (each a pass over
// every pair) and refining could save one. The mixed pairs it cannot take (clamp bins, bins
// of one bit pattern) do not count for it.
//
// Collecting, sorting and ranking a mixed pair costs as much as generating a few keys, more
// as n' grows (the sort leaves the caches, a key's share of a pass shrinks). Measured on 2
// cores, float32: 0.5 (D = 256) to 1.7 keys at n = 1024, 1.6 to 3.9 at n = 2048 (D = 4 to
// 256), and at D = 64 6 at n = 8192 and 18 at n = 131072. log2(n') - 17 follows that,
// between 2 and 16: at small n refining pays only when most pairs are mixed; from n' ~ 2^33,
// 1/16 of the pairs is also where their sort entries (8 or 16 bytes) pass twice the 2-bit
// signs the backward keeps.
inline uint64_t refine_fraction(uint64_t pairs) {
  int width = 0;
  while (width < 64 && (pairs >> width) != 0) ++width;
  return static_cast<uint64_t>(std::min(16, std::max(2, width - 17)));
}

inline bool worth_refining(uint64_t covered, uint64_t mixed, uint64_t pairs, uint64_t capacity) {
  const uint64_t c = capacity > 0 ? capacity : 1;
  auto passes = [c](uint64_t m) { return m / c + (m % c != 0); };
  return covered > pairs / refine_fraction(pairs) || (mixed > capacity && passes(mixed - covered) < passes(mixed));
}

// A bucket (bin or leaf) holding more pairs than one pass may sort: the call cannot rank them
// within its sort memory (both engines; the Python front turns it into a MemoryError).
[[noreturn]] inline void refuse_tied_bin(uint64_t count, uint64_t capacity) {
  throw std::overflow_error("cdf_attraction: " + std::to_string(count) + " distances share one bucket, more than the " +
                            std::to_string(capacity) + " a pass may hold (heavily tied distances); allow more sort "
                            "memory");
}

// Whether the pairs left mixed after the second level are so many that sorting every pair
// costs less than collecting and ranking them slot by slot (a sample placed on its own
// targets, heavy ties): more than half of them (the CPU engine, with its default bins and
// a sort budget that holds every pair). Measured on 2 cores, n = 2048, D = 64, an
// Empirical target of the sample's own distances: 104 ms ranking all pairs in their slots,
// 60 ms sorting all after the two histogram passes (53 ms for the full sort alone); with
// targets 1e-5 above them and half the pairs left mixed, the two took about as long.
// (Deciding after the first level instead lost the second level's gains where it does
// clean up: 1.5e-5 above, 2.2% left to sort, 54 ms, against 68 ms sorting everything.)
inline bool sort_all_instead(uint64_t mixed, uint64_t pairs) { return mixed > pairs / 2; }

// Whether cutting mixed bins into `leaf_slots` leaves costs more than sorting every pair: when
// the leaves are more than a quarter of the pairs, clearing, merging and classifying them
// outweighs the sort (with the default bins, at least 2^16 leaves: n below ~725). The same
// condition of the CPU engine as sort_all_instead. Measured on 2 cores, D = 64: N(0, I)
// samples at n = 256 that took the second level (about 7%) 2.7-4.2 ms, sorting every pair
// 1.6-2.3 ms; n = 400, a sample that refined, 5.9-8.4 against 3.4-4.4 ms.
inline bool sort_all_rather_than_refine(uint64_t leaf_slots, uint64_t pairs) { return 4 * leaf_slots > pairs; }

// The bins to refine and their leaves, within `budget` leaf slots: the `K` candidates of most
// keys (ties: the lower bin) cut into 2^bits leaves each, bits <= shift, K = min(candidates,
// budget >> bits). Of the possible bits it takes the one that would take the most pairs out
// of the sort if each refined bin kept one mixed leaf, covered(K) * (1 - 2^-bits): every
// candidate at the finest cut they all fit, or, when more bins are mixed than that allows
// (the budget below twice the candidates), the most crowded ones at a finer cut, not none.
// Returns nothing when refining would not pay (worth_refining). The same counts give the
// same bins on every rank of a split; choose_leaf_bits(shift, K, budget) gives back `bits`.
inline Refinement choose_refinement(std::vector<RefineCandidate> candidates, uint64_t mixed, int shift,
                                    uint64_t budget, uint64_t pairs, uint64_t capacity) {
  Refinement r;
  uint64_t refinable = 0;
  for (const RefineCandidate& c : candidates) refinable += c.count;
  if (candidates.empty() || shift <= 0 || !worth_refining(refinable, mixed, pairs, capacity)) return r;
  std::sort(candidates.begin(), candidates.end(), [](const RefineCandidate& x, const RefineCandidate& y) {
    return x.count != y.count ? x.count > y.count : x.bin < y.bin;
  });
  std::vector<uint64_t> covered(candidates.size() + 1, 0);
  for (size_t k = 0; k < candidates.size(); ++k) covered[k + 1] = covered[k] + candidates[k].count;
  double best = 0.0;
  uint64_t take = 0;
  for (int bits = 1; bits <= shift && bits < 62; ++bits) {
    const uint64_t k = std::min<uint64_t>(candidates.size(), budget >> bits);
    if (k == 0) break;
    const double score = static_cast<double>(covered[k]) * (1.0 - std::ldexp(1.0, -bits));
    if (score > best) {
      best = score;
      r.bits = bits;
      take = k;
    }
  }
  if (take == 0 || !worth_refining(covered[take], mixed, pairs, capacity)) return Refinement{};
  r.bins.reserve(take);
  for (uint64_t k = 0; k < take; ++k) r.bins.push_back(candidates[k].bin);
  std::sort(r.bins.begin(), r.bins.end());
  return r;
}

// Bin [low, high] holding the ranks whose targets run from first to last (non-decreasing):
// decided when the two ranges do not meet. sgn(d - c) is exact in floating point (the
// difference of two floats is zero only when they are equal), so comparing with the
// targets as the engine rounds them gives the engine's own signs.
template <typename T>
GAUSSREG_HD BinClass classify_bin(T low, T high, T first_target, T last_target) {
  if (low > last_target) return kBinAbove;
  if (high < first_target) return kBinBelow;
  return kBinMixed;
}

// An unsigned 64- or 128-bit integer as a double (correctly rounded to 2^-52 relative).
GAUSSREG_HD double integer_to_double(uint64_t v) { return static_cast<double>(v); }
GAUSSREG_HD double integer_to_double(unsigned __int128 v) {
  return static_cast<double>(static_cast<uint64_t>(v >> 64)) * 18446744073709551616.0 +
         static_cast<double>(static_cast<uint64_t>(v));
}

}  // namespace gaussreg
