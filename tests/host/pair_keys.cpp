// The CUDA cdf_attraction engine's key generation (csrc/common/pair_keys.h) run on the CPU:
// a block's 256 threads are std::threads that meet at a real barrier, the blocks of a launch
// stride over the tiles as the kernel's do, and every emitted key is recorded. Each case
// prints one JSON line: how many pairs were emitted never, once or more than once, how
// many valid emissions fell outside the n' pairs, and how many keys differ in any bit from
// 0.5 * (the fused multiply-add chain over coordinates 0..D-1). With arguments
// `IN OUT n d bytes` it instead reads z (n x d values of 4 or 8 bytes) from IN and writes the
// keys in pair-index order to OUT, for a comparison with the CPU engine's keys.
// tests/test_pair_keys_host.py compiles and runs it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emulation.h"
#include "common/pair_keys.h"

namespace {

using HostBlock = host::Block<gaussreg::kKeyThreads>;

// What the emitters of a launch saw, per pair index (a mutex: the block's threads emit at once).
template <typename T>
struct Record {
  uint64_t pairs;
  std::vector<int> hits;
  std::vector<T> keys;
  uint64_t outside = 0;
  std::mutex mutex;
  void operator()(bool valid, uint64_t k, T key) {
    if (!valid) return;
    std::lock_guard<std::mutex> lock(mutex);
    if (k >= pairs) {
      ++outside;
      return;
    }
    ++hits[k];
    keys[k] = key;
  }
};

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// A launch of `blocks` blocks (each striding over the tiles, as pair_keys_kernel does), run
// one block after the other, into `record`.
template <typename T>
void launch(const std::vector<T>& z, int64_t n, int64_t d, uint64_t blocks, Record<T>& record) {
  record.pairs = gaussreg::pair_count(static_cast<uint64_t>(n));
  record.hits.assign(record.pairs, 0);
  record.keys.assign(record.pairs, T(0));
  const uint64_t tiles = gaussreg::key_tiles(n);
  for (uint64_t b = 0; b < blocks; ++b) {
    gaussreg::KeySlab<T> rows, cols;
    host::Barrier barrier(gaussreg::kKeyThreads);
    std::vector<std::thread> team;
    for (int t = 0; t < gaussreg::kKeyThreads; ++t)
      team.emplace_back([&, t] {
        HostBlock block{t, &barrier};
        for (uint64_t tile = b; tile < tiles; tile += blocks)
          gaussreg::emit_key_tile<T>(z.data(), n, d, tile, block, rows, cols, record);
      });
    for (auto& member : team) member.join();
  }
}

template <typename T>
void check(const std::string& name, int64_t n, int64_t d, uint64_t blocks, bool duplicates) {
  std::uint64_t state = 777 + static_cast<std::uint64_t>(n * 13 + d);
  std::vector<T> z(static_cast<size_t>(n * d));
  for (auto& v : z) v = static_cast<T>(2.0 * host::uniform_pm1(state));
  if (duplicates)  // every third point a copy of the one before: zero keys, tied keys
    for (int64_t i = 1; i < n; i += 3)
      for (int64_t c = 0; c < d; ++c) z[i * d + c] = z[(i - 1) * d + c];
  const uint64_t tiles = gaussreg::key_tiles(n);
  Record<T> record;
  launch(z, n, d, blocks, record);
  uint64_t never = 0, twice = 0, wrong_bits = 0, k = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j, ++k) {
      never += record.hits[k] == 0;
      twice += record.hits[k] > 1;
      T acc = 0;
      for (int64_t c = 0; c < d; ++c) {
        const T diff = z[i * d + c] - z[j * d + c];
        acc = gaussreg::fused_multiply_add(diff, diff, acc);
      }
      wrong_bits += record.hits[k] == 1 && !same_bits(record.keys[k], T(0.5) * acc);
    }
  std::printf("{\"case\": \"%s\", \"dtype\": \"%s\", \"pairs\": %llu, \"tiles\": %llu, \"never\": %llu, "
              "\"more_than_once\": %llu, \"outside\": %llu, \"wrong_bits\": %llu}\n",
              name.c_str(), sizeof(T) == 4 ? "float32" : "float64", static_cast<unsigned long long>(record.pairs),
              static_cast<unsigned long long>(tiles), static_cast<unsigned long long>(never),
              static_cast<unsigned long long>(twice), static_cast<unsigned long long>(record.outside),
              static_cast<unsigned long long>(wrong_bits));
}

template <typename T>
void run_all() {
  check<T>("n2_d1", 2, 1, 1, false);
  check<T>("n3_d5", 3, 5, 1, false);
  check<T>("n129_d1_two_row_blocks", 129, 1, 1, false);
  check<T>("n300_d17_slab_tail", 300, 17, 1, false);      // float32: 16 + 1 coordinates; float64: 8 + 8 + 1
  check<T>("n300_d17_four_blocks", 300, 17, 4, false);    // 6 tiles over 4 blocks: strides
  check<T>("n257_d40_duplicates", 257, 40, 2, true);
  check<T>("n384_d3_whole_tiles", 384, 3, 5, false);      // n a multiple of 128
}

// z from `in`, the keys in pair-index order to `out` (1 on a short read or a pair left out).
template <typename T>
int keys_of_file(const char* in, const char* out, int64_t n, int64_t d) {
  std::vector<T> z(static_cast<size_t>(n * d));
  std::ifstream source(in, std::ios::binary);
  if (!source.read(reinterpret_cast<char*>(z.data()), static_cast<std::streamsize>(z.size() * sizeof(T)))) return 1;
  Record<T> record;
  launch(z, n, d, 3, record);
  for (int hits : record.hits)
    if (hits != 1) return 1;
  std::ofstream sink(out, std::ios::binary);
  sink.write(reinterpret_cast<const char*>(record.keys.data()),
             static_cast<std::streamsize>(record.keys.size() * sizeof(T)));
  return sink ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6) {
    const int64_t n = std::atoll(argv[3]), d = std::atoll(argv[4]);
    return std::atoi(argv[5]) == 4 ? keys_of_file<float>(argv[1], argv[2], n, d)
                                   : keys_of_file<double>(argv[1], argv[2], n, d);
  }
  run_all<float>();
  run_all<double>();
  return 0;
}
