// The CUDA cdf_attraction emitters' warp-aggregated writes (csrc/common/warp_collect.h) run
// on the CPU: a warp's 32 lanes are std::threads whose collectives (ballot, match_any,
// reduce_or, broadcast) exchange values at a real barrier, several warps run at once on one
// cursor and one bit array (real atomics). Checked: append_kept writes every kept entry once,
// a warp's in lane order and consecutive, none at or past the capacity, and its cursor counts
// them all; set_bit_aggregated sets exactly the wanted bits with one atomic per word a warp
// touches; every reduce_or is called by all the lanes of its group with that group. Each case
// prints one JSON line; tests/test_warp_collect_host.py compiles and runs it.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "emulation.h"
#include "common/warp_collect.h"

namespace {

constexpr int kLanes = 32;

// What a warp's lanes share: the barrier of their collectives and the values exchanged.
struct WarpRoom {
  host::Barrier barrier{kLanes};
  unsigned long long values[kLanes] = {};
  unsigned groups[kLanes] = {};
  std::atomic<long>* bad_groups;
  std::atomic<long>* atomics;
};

struct HostWarp {
  int index;
  WarpRoom* room;

  int lane() const { return index; }

  // Every lane's value, once all have given theirs (two barriers: no lane overwrites a value
  // another has not read yet).
  std::vector<unsigned long long> exchange(unsigned long long v) const {
    room->values[index] = v;
    room->barrier.wait();
    std::vector<unsigned long long> all(room->values, room->values + kLanes);
    room->barrier.wait();
    return all;
  }
  unsigned ballot(bool p) const {
    const auto all = exchange(p ? 1 : 0);
    unsigned mask = 0;
    for (int l = 0; l < kLanes; ++l) mask |= static_cast<unsigned>(all[l] != 0) << l;
    return mask;
  }
  unsigned match_any(unsigned long long v) const {
    const auto all = exchange(v);
    unsigned mask = 0;
    for (int l = 0; l < kLanes; ++l) mask |= static_cast<unsigned>(all[l] == v) << l;
    return mask;
  }
  // __reduce_or_sync(group, v): the OR over the lanes of `group`, each of which must call it
  // with the same group (counted as a violation otherwise).
  unsigned reduce_or(unsigned group, unsigned v) const {
    room->groups[index] = group;
    const auto all = exchange(v);
    unsigned result = 0;
    for (int l = 0; l < kLanes; ++l) {
      if (!((group >> l) & 1)) continue;
      result |= static_cast<unsigned>(all[l]);
      if (room->groups[l] != group) room->bad_groups->fetch_add(1);
    }
    if (!((group >> index) & 1)) room->bad_groups->fetch_add(1);
    return result;
  }
  unsigned long long broadcast(unsigned long long v, int from) const { return exchange(v)[from]; }
  unsigned long long atomic_add(unsigned long long* p, unsigned long long v) const {
    room->atomics->fetch_add(1);
    return reinterpret_cast<std::atomic<unsigned long long>*>(p)->fetch_add(v);
  }
  void atomic_or(unsigned long long* p, unsigned long long v) const {
    room->atomics->fetch_add(1);
    reinterpret_cast<std::atomic<unsigned long long>*>(p)->fetch_or(v);
  }
};

// An entry names its round, warp and lane.
uint64_t entry_of(int round, int warp, int lane) { return (static_cast<uint64_t>(round) << 16) | (warp << 8) | lane; }

// `warps` warps append for `rounds` rounds, each lane keeping with probability `keep`.
void check_append(const std::string& name, int warps, int rounds, double keep, uint64_t capacity) {
  std::atomic<long> bad_groups{0}, atomics{0};
  std::vector<WarpRoom> rooms(warps);
  for (auto& r : rooms) r.bad_groups = &bad_groups, r.atomics = &atomics;
  constexpr uint64_t kGuard = 64, kSentinel = ~0ull;
  std::vector<uint64_t> out(capacity + kGuard, kSentinel);
  unsigned long long cursor = 0;
  std::vector<std::vector<char>> kept(warps, std::vector<char>(static_cast<size_t>(rounds) * kLanes, 0));
  std::vector<long> calls_with_any(warps, 0);
  std::vector<std::thread> team;
  for (int w = 0; w < warps; ++w)
    for (int l = 0; l < kLanes; ++l)
      team.emplace_back([&, w, l] {
        std::uint64_t state = 1000 + 77 * w + l;
        const HostWarp warp{l, &rooms[w]};
        for (int r = 0; r < rounds; ++r) {
          const bool k = host::uniform01(state) < keep;
          kept[w][static_cast<size_t>(r) * kLanes + l] = k;
          if (warp.ballot(k) != 0 && l == 0) ++calls_with_any[w];
          gaussreg::append_kept(warp, k, entry_of(r, w, l), &cursor, out.data(), capacity);
        }
      });
  for (auto& t : team) t.join();
  uint64_t expected = 0, wrong = 0, missing = 0;
  for (int w = 0; w < warps; ++w)
    for (char k : kept[w]) expected += k;
  // Where each entry landed; a warp's round must be one run, in lane order.
  std::vector<int64_t> where(static_cast<size_t>(rounds) << 16, -1);
  uint64_t holes = 0;  // unwritten slots below the cursor (and the capacity), or written ones at or past it
  for (uint64_t p = 0; p < capacity; ++p) {
    holes += (out[p] == kSentinel) == (p < cursor);
    if (out[p] == kSentinel) continue;
    const uint64_t e = out[p];
    const int r = static_cast<int>(e >> 16), w = static_cast<int>((e >> 8) & 255), l = static_cast<int>(e & 255);
    if (r >= rounds || w >= warps || l >= kLanes || !kept[w][static_cast<size_t>(r) * kLanes + l] || where[e] != -1) {
      ++wrong;  // not an entry of a kept lane, or one written twice
      continue;
    }
    where[e] = static_cast<int64_t>(p);
  }
  uint64_t written = 0, out_of_order = 0;
  for (int r = 0; r < rounds; ++r)
    for (int w = 0; w < warps; ++w) {
      int64_t previous = -1;
      for (int l = 0; l < kLanes; ++l) {
        if (!kept[w][static_cast<size_t>(r) * kLanes + l]) continue;
        const int64_t p = where[entry_of(r, w, l)];
        if (p < 0) {
          ++missing;
          continue;
        }
        ++written;
        out_of_order += previous >= 0 && p != previous + 1;
        previous = p;
      }
    }
  uint64_t guard_touched = 0;
  for (uint64_t p = capacity; p < capacity + kGuard; ++p) guard_touched += out[p] != kSentinel;
  long calls = 0;
  for (long c : calls_with_any) calls += c;
  std::printf("{\"case\": \"%s\", \"kind\": \"append\", \"expected\": %llu, \"cursor\": %llu, \"written\": %llu, "
              "\"missing\": %llu, \"wrong\": %llu, \"holes\": %llu, \"out_of_order\": %llu, \"guard_touched\": %llu, "
              "\"atomics\": %ld, \"calls_with_any\": %ld, \"bad_groups\": %ld, \"capacity\": %llu}\n",
              name.c_str(), static_cast<unsigned long long>(expected), cursor,
              static_cast<unsigned long long>(written), static_cast<unsigned long long>(missing),
              static_cast<unsigned long long>(wrong), static_cast<unsigned long long>(holes),
              static_cast<unsigned long long>(out_of_order),
              static_cast<unsigned long long>(guard_touched), atomics.load(), calls, bad_groups.load(),
              static_cast<unsigned long long>(capacity));
}

// `warps` warps set bits for `rounds` rounds: each lane's pair index is distinct within its
// warp's round (a row's consecutive pairs, or scattered over `span` indices), wanted with
// probability `want`. Words are shared between lanes and between warps.
void check_bits(const std::string& name, int warps, int rounds, double want, uint64_t span, bool consecutive) {
  std::atomic<long> bad_groups{0}, atomics{0};
  std::vector<WarpRoom> rooms(warps);
  for (auto& r : rooms) r.bad_groups = &bad_groups, r.atomics = &atomics;
  std::vector<unsigned long long> bits((span + 63) / 64, 0);
  std::vector<std::vector<std::set<uint64_t>>> words(warps, std::vector<std::set<uint64_t>>(rounds));
  std::vector<std::vector<uint64_t>> set_by(warps);
  std::vector<std::thread> team;
  std::mutex record;
  for (int w = 0; w < warps; ++w)
    for (int l = 0; l < kLanes; ++l)
      team.emplace_back([&, w, l] {
        const HostWarp warp{l, &rooms[w]};
        for (int r = 0; r < rounds; ++r) {
          // The same draws in every lane of the warp: a permutation of distinct indices.
          std::uint64_t state = 5000 + 131 * w + 7 * r;
          const uint64_t start = static_cast<uint64_t>(host::uniform01(state) * static_cast<double>(span - kLanes));
          uint64_t k = start + l;
          if (!consecutive) {  // 32 indices span / 32 apart, dealt to the lanes by l -> 5 l + r (mod 32)
            const uint64_t step = span / kLanes;
            k = static_cast<uint64_t>((l * 5 + r) % kLanes) * step + start % step;
          }
          std::uint64_t mine = 9000 + 31 * w + 17 * r + 3 * l;
          const bool on = host::uniform01(mine) < want;
          if (on) {
            std::lock_guard<std::mutex> lock(record);
            words[w][r].insert(k >> 6);
            set_by[w].push_back(k);
          }
          gaussreg::set_bit_aggregated(warp, on, k, bits.data());
        }
      });
  for (auto& t : team) t.join();
  std::vector<unsigned long long> expected(bits.size(), 0);
  long expected_atomics = 0;
  for (int w = 0; w < warps; ++w) {
    for (uint64_t k : set_by[w]) expected[k >> 6] |= 1ull << (k & 63);
    for (const auto& s : words[w]) expected_atomics += static_cast<long>(s.size());
  }
  uint64_t wrong_words = 0, set = 0;
  for (size_t i = 0; i < bits.size(); ++i) {
    wrong_words += bits[i] != expected[i];
    set += static_cast<uint64_t>(__builtin_popcountll(bits[i]));
  }
  std::printf("{\"case\": \"%s\", \"kind\": \"bits\", \"wrong_words\": %llu, \"bits_set\": %llu, \"atomics\": %ld, "
              "\"expected_atomics\": %ld, \"bad_groups\": %ld}\n",
              name.c_str(), static_cast<unsigned long long>(wrong_words), static_cast<unsigned long long>(set),
              atomics.load(), expected_atomics, bad_groups.load());
}

}  // namespace

int main() {
  check_append("append_half", 4, 200, 0.5, 1 << 20);
  check_append("append_sparse", 4, 200, 0.03, 1 << 20);
  check_append("append_all", 3, 100, 1.0, 1 << 20);
  check_append("append_none", 2, 50, 0.0, 1 << 20);
  check_append("append_past_capacity", 4, 200, 0.5, 3001);
  check_bits("bits_rows", 4, 150, 0.5, 4096, true);
  check_bits("bits_rows_all", 3, 100, 1.0, 2048, true);
  check_bits("bits_scattered", 4, 150, 0.6, 1 << 14, false);
  check_bits("bits_none", 2, 50, 0.0, 4096, true);
  return 0;
}
