// Stable LSD radix sorts of (key, index) entries by key, shared by the CPU sort engines
// (cdf_attraction.cpp: buckets of pair distances; segmented.cpp: columns and projections).
#pragma once

#include <algorithm>
#include <cstdint>

namespace gaussreg {
namespace cpu {

// float key and pair index < 2^32 in one integer: the sort compares one word.
struct PackedEntries {
  using Entry = uint64_t;
  static Entry make(uint64_t key, uint64_t index) { return (key << 32) | index; }
  static uint64_t key(Entry e) { return e >> 32; }
  static uint64_t index(Entry e) { return e & 0xffffffffu; }
};

struct WideEntry {
  uint64_t key, index;
  bool operator<(const WideEntry& o) const { return key < o.key || (key == o.key && index < o.index); }
};

struct WideEntries {
  using Entry = WideEntry;
  static Entry make(uint64_t key, uint64_t index) { return {key, index}; }
  static uint64_t key(const Entry& e) { return e.key; }
  static uint64_t index(const Entry& e) { return e.index; }
};

// Stable sort of a bucket by key alone: LSD radix, one byte per pass, over the low bits
// where its keys differ (the high ones are shared in a narrow bucket); insertion sort
// when small. `scratch` holds `count` entries.
template <typename E>
void sort_bucket_by_key(typename E::Entry* a, uint64_t count, typename E::Entry* scratch) {
  using Entry = typename E::Entry;
  if (count < 2) return;
  if (count <= 32) {
    for (uint64_t i = 1; i < count; ++i) {
      const Entry e = a[i];
      uint64_t j = i;
      for (; j > 0 && E::key(a[j - 1]) > E::key(e); --j) a[j] = a[j - 1];
      a[j] = e;
    }
    return;
  }
  const uint64_t first = E::key(a[0]);
  uint64_t differ = 0;
  for (uint64_t i = 1; i < count; ++i) differ |= E::key(a[i]) ^ first;
  const int bits = differ == 0 ? 0 : 64 - __builtin_clzll(differ);
  Entry* from = a;
  Entry* to = scratch;
  for (int shift = 0; shift < bits; shift += 8) {
    uint64_t offsets[257] = {};
    for (uint64_t i = 0; i < count; ++i) ++offsets[((E::key(from[i]) >> shift) & 255) + 1];
    for (int v = 0; v < 256; ++v) offsets[v + 1] += offsets[v];
    for (uint64_t i = 0; i < count; ++i) to[offsets[(E::key(from[i]) >> shift) & 255]++] = from[i];
    std::swap(from, to);
  }
  if (from != a) std::copy(from, from + count, a);
}

}  // namespace cpu
}  // namespace gaussreg
