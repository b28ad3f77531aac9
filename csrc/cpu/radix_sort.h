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
  static bool less(Entry x, Entry y) { return x < y; }  // by key, then by index
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
  static bool less(const Entry& x, const Entry& y) { return x < y; }  // by key, then by index
};

// Stable sort of a bucket by key alone: LSD radix, one byte per pass, over the bytes in which
// its keys differ (the high ones are shared in a narrow bucket, and a byte that all keys share
// is skipped); insertion sort when small. `scratch` holds `count` entries.
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
  if (differ == 0) return;
  const int bytes = (64 - __builtin_clzll(differ) + 7) / 8;
  // Every byte's counts from one read of the keys, in two tables taken in turn: keys of a
  // narrow range share their high bytes, and one counter incremented for every key made
  // each increment wait for the one before (a chain through memory; the counts took 40% of
  // a 32640-key sort).
  uint64_t counts[2][8][256];
  for (int t = 0; t < 2; ++t)
    for (int byte = 0; byte < bytes; ++byte) std::fill(counts[t][byte], counts[t][byte] + 256, uint64_t{0});
  uint64_t i = 0;
  for (; i + 2 <= count; i += 2) {
    const uint64_t even = E::key(a[i]), odd = E::key(a[i + 1]);
    for (int byte = 0; byte < bytes; ++byte) {
      ++counts[0][byte][(even >> (8 * byte)) & 255];
      ++counts[1][byte][(odd >> (8 * byte)) & 255];
    }
  }
  for (; i < count; ++i)
    for (int byte = 0; byte < bytes; ++byte) ++counts[0][byte][(E::key(a[i]) >> (8 * byte)) & 255];
  Entry* from = a;
  Entry* to = scratch;
  for (int byte = 0; byte < bytes; ++byte) {
    uint64_t offsets[256];
    uint64_t at = 0;
    bool shared = false;  // every key has the same value of this byte: nothing to move
    for (int v = 0; v < 256; ++v) {
      const uint64_t m = counts[0][byte][v] + counts[1][byte][v];
      shared |= m == count;
      offsets[v] = at;
      at += m;
    }
    if (shared) continue;
    const int shift = 8 * byte;
    for (uint64_t k = 0; k < count; ++k) to[offsets[(E::key(from[k]) >> shift) & 255]++] = from[k];
    std::swap(from, to);
  }
  if (from != a) std::copy(from, from + count, a);
}

}  // namespace cpu
}  // namespace gaussreg
