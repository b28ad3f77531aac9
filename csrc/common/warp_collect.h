// The warp-aggregated writes of the CUDA cdf_attraction pair emitters (csrc/cuda/
// cdf_attraction.cu): a warp's 32 lanes, all calling together, append the entries they keep
// to a buffer with one atomic per warp (append_kept), or set the bits of their pair indices
// with one atomic per 64-bit word (set_bit_aggregated). The warp's collectives come from
// `Warp`: the intrinsics on the GPU (DeviceWarp in the .cu), 32 std::threads at a barrier in
// tests/host/warp_collect.cpp. Warp provides lane(), ballot(p), match_any(v),
// reduce_or(group, v), broadcast(v, lane), atomic_add(p, v) and atomic_or(p, v), with the
// meanings of __ballot_sync, __match_any_sync, __reduce_or_sync and __shfl_sync over the full
// warp, atomicAdd and atomicOr.
#pragma once

#include <cstdint>

#include "config.h"

namespace gaussreg {

GAUSSREG_HD int count_lanes(unsigned mask) {
#if defined(__CUDA_ARCH__)
  return __popc(mask);
#else
  return __builtin_popcount(mask);
#endif
}

// The lowest lane of a non-empty mask.
GAUSSREG_HD int lowest_lane(unsigned mask) {
#if defined(__CUDA_ARCH__)
  return __ffs(mask) - 1;
#else
  return __builtin_ctz(mask);
#endif
}

// Writes `entry` of every lane with keep = true to consecutive slots of `out`, in lane order
// within the warp, one atomic per warp on `cursor`; the warps' order is arbitrary, so what is
// collected gets sorted. Entries past `capacity` are dropped, the cursor still counts them.
template <typename Warp, typename C>
GAUSSREG_HD void append_kept(const Warp& warp, bool keep, const C& entry, unsigned long long* cursor, C* out,
                             uint64_t capacity) {
  const unsigned mask = warp.ballot(keep);
  if (mask == 0) return;
  const int lane = warp.lane(), leader = lowest_lane(mask);
  unsigned long long base = 0;
  if (lane == leader) base = warp.atomic_add(cursor, static_cast<unsigned long long>(count_lanes(mask)));
  base = warp.broadcast(base, leader);
  const uint64_t pos = base + static_cast<uint64_t>(count_lanes(mask & ((1u << lane) - 1)));
  if (keep && pos < capacity) out[pos] = entry;
}

// Sets bit k of `bits` for every lane with want = true: lanes whose k share a 64-bit word
// OR their bits together and the lowest of them writes (a row's pairs are consecutive in k).
template <typename Warp>
GAUSSREG_HD void set_bit_aggregated(const Warp& warp, bool want, uint64_t k, unsigned long long* bits) {
  const unsigned active = warp.ballot(want);
  if (active == 0) return;
  const unsigned long long word = want ? (k >> 6) : ~0ull;  // lanes without a bit group apart
  const unsigned group = warp.match_any(word);
  const unsigned long long bit = want ? (1ull << (k & 63)) : 0ull;
  const unsigned lo = warp.reduce_or(group, static_cast<unsigned>(bit));
  const unsigned hi = warp.reduce_or(group, static_cast<unsigned>(bit >> 32));
  if (want && warp.lane() == lowest_lane(group))
    warp.atomic_or(bits + word, (static_cast<unsigned long long>(hi) << 32) | lo);
}

}  // namespace gaussreg
