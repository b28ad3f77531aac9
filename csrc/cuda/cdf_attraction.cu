// CUDA engine of the distances term of CDF attraction (SPEC 1): exact ranks of the
// n' = n(n-1)/2 half squared distances d_ij, twin of csrc/cpu/cdf_attraction.cpp (same
// contract, same bindings with the stream last instead of the thread count).
//
// Keys: d_ij is generated from coordinate differences (fma, coordinate order 0..D-1, as
// the CPU loop contracts it) by one tiled kernel, 128 x 128 pairs per tile, 8 x 8 per
// thread (common/pair_keys.h, which tests/host/pair_keys.cpp runs on the CPU); what
// happens to each key is the "emitter" the kernel is instantiated with.
//
// Forward, one pass (capacity >= n'): keys are written at their pair index k, with k as
// the value, and CUB's stable radix sort of (key, k) pairs ranks ties by k for free; the
// rank kernel then reads rank r -> (d_(r), k) and writes e = d_(r) - c'_r (two bits or a
// residual at k). This is one sort of n' key-value pairs plus streaming passes.
//
// Forward, several passes (capacity < n'), a sample sort bounded by `capacity` entries:
//   1. splitters: B - 1 keys from a strided sample of pairs (as on the CPU);
//   2. histogram: every key counted in its bucket (binary search among the splitters in
//      shared memory, per-block counters flushed once); the counts come back to the host
//      (the one synchronisation: pass boundaries and CUB's item counts are host values);
//   3. per run of buckets fitting `capacity`: keys regenerated, those in range appended
//      (atomic cursor: arbitrary order), sorted as composite keys (key bits << index bits
//      | k, so ties are ranked by k whatever the append order), ranked from the run's base.
//
// p = 1 without the sorted values can rank by selection instead ("selection" below, the CPU
// engine's algorithm): taken when the caller passes bins > 0, until it has run on a GPU.
//
// Determinism: |e|^p is summed per fixed chunk of 2048 ranks (8 ranks per thread, 256
// apart, then block_sum), chunks in rank order; a chunk split between two passes parks its
// first terms in a carry buffer, so the value depends neither on the launch configuration
// nor on how the ranks were cut into passes.
//
// Backward: g_i = scale * sum_{j != i} s_ij (z_i - z_j). A block owns 64 rows, a warp 8
// rows with the lanes along D, and sweeps j in tiles of 32 whose s_ij are staged in shared
// memory (from the bit sets or residuals, read along consecutive pair indices). Every
// row's sum runs over j in increasing order in one thread with fma: bitwise reproducible
// (common/cdf_backward.h, which tests/host/cdf_backward.cpp runs on the CPU). The CPU sums
// (sum_j s_ij) z_i - sum_j s_ij z_j instead: the two agree to rounding, not bit for bit.
#include "common/cdf_attraction.h"
#include "common/cdf_attraction_bind.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda/std/tuple>
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cdf_select.h"
#include "common/cdf_select_slots.h"
#include "common/pair_index.h"
#include "common/cdf_backward.h"
#include "common/cdf_rank.h"
#include "common/pair_keys.h"
#include "common/warp_collect.h"
#include "cuda/check.cuh"
#include "cuda/workspace.cuh"
#include "cuda/reduce.cuh"

namespace py = pybind11;

namespace gaussreg {
namespace cuda {
namespace {

constexpr uint64_t kMaxTilesPerBlock = uint64_t{1} << 17;  // keeps a block's uint32 bucket counts below 2^32

constexpr uint64_t kChunk = kRankChunk;  // ranks per partial sum (common/cdf_rank.h)
// The rank pass streams entries and scatters bits: occupancy matters more than registers.
constexpr int kRankBlocksPerSm = 4;

// Buckets: 16 per pass fill passes to ~15/16; at most 4096 so that the splitters and
// counters (<= 48 KiB in double) fit in shared memory on every sm_80+ GPU.
constexpr uint64_t kBucketsPerPass = 16;
constexpr uint64_t kMaxBuckets = 4096;
constexpr uint64_t kSamplePerBucket = 32;



// ---------------------------------------------------------------- keys and entries

// d >= 0, so the IEEE bits order like the values; the sign bit is always clear.
template <typename T>
struct KeyTraits;
template <>
struct KeyTraits<float> {
  using Bits = uint32_t;
  static constexpr int kBits = 31;
  static __device__ Bits bits(float v) { return __float_as_uint(v); }
};
template <>
struct KeyTraits<double> {
  using Bits = uint64_t;
  static constexpr int kBits = 63;
  static __device__ Bits bits(double v) { return static_cast<uint64_t>(__double_as_longlong(v)); }
};

using Entry = RankEntry;

// The composite key of the passes when (key, index) needs more than 64 bits.
struct WideKey {
  uint64_t lo, hi;
};
struct WideKeyDecomposer {
  __host__ __device__ ::cuda::std::tuple<uint64_t&, uint64_t&> operator()(WideKey& key) const {
    return {key.hi, key.lo};
  }
};

// (key << index_bits) | k as one radix-sortable key: uint64_t, or 128 bits split in two.
template <typename C>
struct Composite;
template <>
struct Composite<uint64_t> {
  static __device__ uint64_t make(uint64_t bits, uint64_t k, int index_bits) { return (bits << index_bits) | k; }
  static __device__ Entry split(uint64_t c, int index_bits) {
    return {c >> index_bits, c & ((uint64_t{1} << index_bits) - 1)};
  }
  template <typename N>
  static cudaError_t sort(void* temp, size_t& bytes, cub::DoubleBuffer<uint64_t>& keys, N count, int end_bit,
                          cudaStream_t stream) {
    return cub::DeviceRadixSort::SortKeys(temp, bytes, keys, count, 0, end_bit, stream);
  }
};
template <>
struct Composite<WideKey> {
  // index_bits is in [1, 61], so both shifts stay below 64.
  static __device__ WideKey make(uint64_t bits, uint64_t k, int index_bits) {
    return {(bits << index_bits) | k, bits >> (64 - index_bits)};
  }
  static __device__ Entry split(const WideKey& c, int index_bits) {
    return {(c.lo >> index_bits) | (c.hi << (64 - index_bits)), c.lo & ((uint64_t{1} << index_bits) - 1)};
  }
  template <typename N>
  static cudaError_t sort(void* temp, size_t& bytes, cub::DoubleBuffer<WideKey>& keys, N count, int end_bit,
                          cudaStream_t stream) {
    return cub::DeviceRadixSort::SortKeys(temp, bytes, keys, count, WideKeyDecomposer{}, 0, end_bit, stream);
  }
};

// Sorted entries of the one pass: keys and the pair indices that travelled with them.
template <typename K, typename V>
struct SortedPairs {
  const K* keys;
  const V* index;
  __device__ Entry operator()(uint64_t pos) const { return {keys[pos], index[pos]}; }
};

template <typename C>
struct SortedComposites {
  const C* entries;
  int index_bits;
  __device__ Entry operator()(uint64_t pos) const { return Composite<C>::split(entries[pos], index_bits); }
};

// Runs f with the item count as uint32_t when it fits (CUB's fast 32-bit offsets), else uint64_t.
template <typename F>
auto with_count_type(uint64_t count, F&& f) {
  if (count <= std::numeric_limits<uint32_t>::max()) return f(static_cast<uint32_t>(count));
  return f(count);
}

// CUB temp bytes for any count up to `count`, whichever offset type with_count_type picks.
template <typename Query>
size_t sort_temp_up_to(uint64_t count, Query&& query) {
  if (count <= std::numeric_limits<uint32_t>::max()) return query(static_cast<uint32_t>(count));
  return std::max(query(std::numeric_limits<uint32_t>::max()), query(count));
}

int bit_width(uint64_t v) {
  int bits = 0;
  while (v != 0) ++bits, v >>= 1;
  return bits;
}

// ---------------------------------------------------------------- plan and workspace

struct Plan {
  uint64_t pairs, capacity;
  bool one_pass;
  int index_bits;        // bits of the largest pair index (>= 1)
  bool wide_index;       // one pass: pair indices need uint64_t
  bool wide_composite;   // passes: (key, index) needs 128 bits
  uint64_t buckets, sample, chunks;
  size_t sort_temp, sample_temp;
};

template <typename T>
size_t one_pass_sort_temp(const Plan& plan, cudaStream_t stream) {
  using K = typename KeyTraits<T>::Bits;
  auto query = [&](auto index_zero) {
    using V = decltype(index_zero);
    return sort_temp_up_to(plan.pairs, [&](auto count) {
      cub::DoubleBuffer<K> keys(nullptr, nullptr);
      cub::DoubleBuffer<V> values(nullptr, nullptr);
      size_t bytes = 0;
      check_cuda(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, values, count, 0, KeyTraits<T>::kBits, stream),
                 "cub::DeviceRadixSort::SortPairs (size)");
      return bytes;
    });
  };
  return plan.wide_index ? query(uint64_t{0}) : query(uint32_t{0});
}

template <typename T>
size_t passes_sort_temp(const Plan& plan, cudaStream_t stream) {
  auto query = [&](auto composite_zero) {
    using C = decltype(composite_zero);
    return sort_temp_up_to(plan.capacity, [&](auto count) {
      cub::DoubleBuffer<C> keys(nullptr, nullptr);
      size_t bytes = 0;
      check_cuda(Composite<C>::sort(nullptr, bytes, keys, count, KeyTraits<T>::kBits + plan.index_bits, stream),
                 "cub::DeviceRadixSort::SortKeys (size)");
      return bytes;
    });
  };
  return plan.wide_composite ? query(WideKey{}) : query(uint64_t{0});
}

template <typename T>
size_t sample_sort_temp(const Plan& plan, cudaStream_t stream) {
  using K = typename KeyTraits<T>::Bits;
  cub::DoubleBuffer<K> keys(nullptr, nullptr);
  size_t bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortKeys(nullptr, bytes, keys, static_cast<uint32_t>(plan.sample), 0,
                                            KeyTraits<T>::kBits, stream),
             "cub::DeviceRadixSort::SortKeys (size)");
  return bytes;
}

template <typename T>
Plan make_plan(int64_t n, uint64_t capacity, cudaStream_t stream) {
  Plan plan{};
  plan.pairs = pair_count(static_cast<uint64_t>(n));
  plan.capacity = capacity;
  plan.one_pass = capacity >= plan.pairs;
  plan.index_bits = std::max(1, bit_width(plan.pairs - 1));
  plan.wide_index = plan.pairs > (uint64_t{1} << 32);
  plan.wide_composite = !(sizeof(T) == 4 && KeyTraits<T>::kBits + plan.index_bits <= 64);
  plan.chunks = (plan.pairs + kChunk - 1) / kChunk;
  if (plan.one_pass) {
    plan.buckets = 1;
    plan.sample = 0;
    plan.sort_temp = one_pass_sort_temp<T>(plan, stream);
  } else {
    const uint64_t passes = (plan.pairs + capacity - 1) / capacity;
    plan.buckets = kBucketsPerPass * std::min(passes, kMaxBuckets / kBucketsPerPass);
    plan.sample = std::min(plan.pairs, kSamplePerBucket * plan.buckets);
    plan.sort_temp = passes_sort_temp<T>(plan, stream);
    plan.sample_temp = sample_sort_temp<T>(plan, stream);
  }
  return plan;
}

// One pass: entries[2] hold keys and indices[2] pair indices (CUB double buffers).
// Passes: entries[2] hold composite keys; the sample, splitters, counts and carry follow.
struct Workspace {
  void* entries[2];
  void* indices[2];
  void* sort_temp;
  void* sample[2];
  void* sample_temp;
  void* splitters;
  unsigned long long* hist;
  unsigned long long* cursor;
  double* partials;  // chunks, then sum_partials' scratch
  double* carry;  // 2 x kChunk terms of a chunk that straddles two passes
};

// Bytes of one sort entry: what `capacity` counts (the larger of the two modes' entries).
size_t entry_bytes_of(bool is_float, uint64_t pairs) {
  const size_t key = is_float ? 4 : 8;
  const size_t index = pairs > (uint64_t{1} << 32) ? 8 : 4;
  const int index_bits = std::max(1, bit_width(pairs - 1));
  const size_t composite = is_float && 31 + index_bits <= 64 ? 8 : 16;
  return std::max(2 * (key + index), 2 * composite);
}

template <typename T>
size_t workspace_layout(const Plan& plan, char* base, Workspace* out) {
  const size_t key = sizeof(typename KeyTraits<T>::Bits);
  const size_t slots = plan.one_pass ? plan.pairs : plan.capacity;
  const size_t entry = plan.one_pass ? key : (plan.wide_composite ? sizeof(WideKey) : sizeof(uint64_t));
  const size_t index = plan.one_pass ? (plan.wide_index ? 8 : 4) : 0;
  const size_t sizes[] = {
      slots * entry,
      slots * entry,
      slots * index,
      slots * index,
      plan.sort_temp,
      plan.sample * key,
      plan.sample * key,
      plan.sample_temp,
      (plan.buckets - 1) * sizeof(T),
      plan.buckets * sizeof(unsigned long long),
      sizeof(unsigned long long),
      (plan.chunks + sum_partials_scratch(plan.chunks)) * sizeof(double),
      2 * kChunk * sizeof(double),
  };
  void* parts[sizeof(sizes) / sizeof(sizes[0])];
  const size_t total = carve_workspace(base, sizes, parts);
  if (out != nullptr) {
    *out = {{parts[0], parts[1]},
            {parts[2], parts[3]},
            parts[4],
            {parts[5], parts[6]},
            parts[7],
            parts[8],
            static_cast<unsigned long long*>(parts[9]),
            static_cast<unsigned long long*>(parts[10]),
            static_cast<double*>(parts[11]),
            static_cast<double*>(parts[12])};
  }
  return total;
}

// ---------------------------------------------------------------- key generation

// The Block of common/pair_keys.h, cdf_rank.h and cdf_backward.h on the device: a block of
// N threads (the launch's), its barrier, its fixed-order sum and an integer OR.
template <int N>
struct ThreadBlock {
  __device__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ static constexpr int threads() { return N; }
  __device__ void sync() const { __syncthreads(); }
  __device__ double sum(double v) const { return block_sum(v); }
  __device__ void or_bits(unsigned long long* word, unsigned long long bits) const { atomicOr(word, bits); }
};

// Every d_ij (i < j) goes to emit(valid, k(i, j), d_ij) (common/pair_keys.h emit_key_tile).
// Blocks stride over the tiles of the upper triangle, so per-block state is set up once.
template <typename T, typename Emitter>
__global__ void __launch_bounds__(kKeyThreads)
pair_keys_kernel(const T* __restrict__ z, int64_t n, int64_t d, uint64_t tiles, Emitter emitter) {
  __shared__ KeySlab<T> rows, cols;
  extern __shared__ __align__(16) unsigned char emitter_smem[];
  Emitter emit = emitter;
  emit.begin(emitter_smem);
  ThreadBlock<kKeyThreads> block;
  for (uint64_t t = blockIdx.x; t < tiles; t += gridDim.x) emit_key_tile<T>(z, n, d, t, block, rows, cols, emit);
  emit.end();
}

// One pass: key and pair index at position k, the input order of the stable sort.
template <typename T, typename V>
struct DirectEmitter {
  typename KeyTraits<T>::Bits* keys;
  V* index;
  __device__ void begin(unsigned char*) {}
  __device__ void end() {}
  __device__ void operator()(bool valid, uint64_t k, T key) {
    if (!valid) return;
    keys[k] = KeyTraits<T>::bits(key);
    index[k] = static_cast<V>(k);
  }
};

// Bucket counts: bucket = number of splitters <= key (std::upper_bound, as on the CPU).
template <typename T>
struct HistogramEmitter {
  const T* splitters;  // global, B - 1
  int buckets;
  unsigned long long* hist;  // global, B
  T* shared_splitters;
  unsigned int* counts;

  static size_t shared_bytes(uint64_t buckets) { return (buckets - 1) * sizeof(T) + buckets * sizeof(unsigned int); }

  __device__ void begin(unsigned char* smem) {
    shared_splitters = reinterpret_cast<T*>(smem);
    counts = reinterpret_cast<unsigned int*>(smem + (buckets - 1) * sizeof(T));
    for (int b = threadIdx.x; b < buckets - 1; b += blockDim.x) shared_splitters[b] = splitters[b];
    for (int b = threadIdx.x; b < buckets; b += blockDim.x) counts[b] = 0;
    __syncthreads();
  }
  __device__ void operator()(bool valid, uint64_t, T key) {
    if (!valid) return;
    int lo = 0, hi = buckets - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      // On the bit patterns, the order the sort uses (also for NaN), so that the collect
      // passes put every counted key in the same bucket.
      if (KeyTraits<T>::bits(key) < KeyTraits<T>::bits(shared_splitters[mid])) hi = mid; else lo = mid + 1;
    }
    atomicAdd(&counts[lo], 1u);
  }
  __device__ void end() {
    __syncthreads();
    for (int b = threadIdx.x; b < buckets; b += blockDim.x)
      if (counts[b] != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(counts[b]));
  }
};

// The warp collectives of append_kept and set_bit_aggregated (common/warp_collect.h): the
// full warp's intrinsics. Every lane of the warp must call them.
struct DeviceWarp {
  __device__ int lane() const { return threadIdx.x & 31; }
  __device__ unsigned ballot(bool p) const { return __ballot_sync(0xffffffffu, p); }
  __device__ unsigned match_any(unsigned long long v) const { return __match_any_sync(0xffffffffu, v); }
  __device__ unsigned reduce_or(unsigned group, unsigned v) const { return __reduce_or_sync(group, v); }
  __device__ unsigned long long broadcast(unsigned long long v, int from) const {
    return __shfl_sync(0xffffffffu, v, from);
  }
  __device__ unsigned long long atomic_add(unsigned long long* p, unsigned long long v) const {
    return atomicAdd(p, v);
  }
  __device__ void atomic_or(unsigned long long* p, unsigned long long v) const { atomicOr(p, v); }
};

// A pass: keys in [lowest, beyond) appended as composite keys; one atomic per warp.
template <typename T, typename C>
struct CollectEmitter {
  C* out;
  unsigned long long* cursor;
  uint64_t capacity;
  T lowest, beyond;
  bool bounded;
  int index_bits;
  __device__ void begin(unsigned char*) {}
  __device__ void end() {}
  __device__ void operator()(bool valid, uint64_t k, T key) {
    const auto bits = KeyTraits<T>::bits(key);  // the histogram's comparison, see HistogramEmitter
    const bool keep = valid && !(bits < KeyTraits<T>::bits(lowest)) && (!bounded || bits < KeyTraits<T>::bits(beyond));
    append_kept(DeviceWarp{}, keep, Composite<C>::make(bits, k, index_bits), cursor, out, capacity);
  }
};

template <typename Kernel>
uint64_t resident_blocks(Kernel kernel, int threads, size_t shared) {
  int device = 0, sms = 0, per_sm = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return static_cast<uint64_t>(std::max(per_sm, 1)) * static_cast<uint64_t>(std::max(sms, 1));
}

template <typename T, typename Emitter>
void launch_pair_keys(const T* z, int64_t n, int64_t d, const Emitter& emit, size_t shared, cudaStream_t stream) {
  auto kernel = pair_keys_kernel<T, Emitter>;
  const uint64_t tiles = key_tiles(n);
  const uint64_t min_blocks = (tiles + kMaxTilesPerBlock - 1) / kMaxTilesPerBlock;
  const uint64_t blocks = std::min(tiles, std::max(min_blocks, resident_blocks(kernel, kKeyThreads, shared)));
  kernel<<<static_cast<unsigned>(blocks), kKeyThreads, shared, stream>>>(z, n, d, tiles, emit);
  check_launch("pair_keys_kernel");
}

// CUB's temporary storage for sorting `items` composites, which the plan sized at its
// capacity, asked again at this count: a shortfall raises instead of corrupting memory.
template <typename C, typename Count>
void check_sort_temp(cub::DoubleBuffer<C>& entries, Count items, int end_bit, size_t planned, cudaStream_t stream) {
  size_t need = 0;
  check_cuda(Composite<C>::sort(nullptr, need, entries, items, end_bit, stream), "cub::DeviceRadixSort (size)");
  if (need > planned) throw std::runtime_error("cdf_attraction (CUDA): CUB needs more sort memory than planned");
}

// ---------------------------------------------------------------- ranks

// Ranks [r0, r1), whose entries sit at [0, r1 - r0) of the sorted buffer
// (common/cdf_rank.h rank_chunks: partials per chunk, carries between passes).
template <typename T, typename Reader>
__global__ void __launch_bounds__(kRankThreads, kRankBlocksPerSm)
rank_kernel(Reader entries, RankArgs<T> a, uint64_t r0, uint64_t r1, const double* __restrict__ carry_in,
            double* __restrict__ carry_out, double* __restrict__ partials) {
  ThreadBlock<kRankThreads> block;
  rank_chunks<T>(entries, a, r0, r1, carry_in, carry_out, partials, blockIdx.x, gridDim.x, block);
}

template <typename T, typename Reader>
void launch_rank(const Reader& entries, const RankArgs<T>& a, uint64_t r0, uint64_t r1, int pass, const Workspace& ws,
                 cudaStream_t stream) {
  const uint64_t chunks = (r1 - 1) / kChunk - r0 / kChunk + 1;
  const uint64_t blocks = std::min<uint64_t>(chunks, uint64_t{1} << 30);
  const double* carry_in = ws.carry + (pass & 1) * kChunk;
  double* carry_out = ws.carry + ((pass + 1) & 1) * kChunk;
  rank_kernel<T, Reader><<<static_cast<unsigned>(blocks), kRankThreads, 0, stream>>>(entries, a, r0, r1, carry_in,
                                                                                     carry_out, ws.partials);
  check_launch("rank_kernel");
}

// ---------------------------------------------------------------- forward

template <typename T>
struct ForwardArgs {
  const T* z;
  int64_t n, d;
  RankArgs<T> ranks;
  double* value;
  uint64_t capacity;
  uint64_t bins;   // > 0 with p = 1 and no sorted output: rank by selection with this many bins
  int64_t* stats;  // optional (device): the selection's counters
};

// The selection runs when asked for with bins > 0 (p = 1, no sorted values). Until it has
// run on a GPU the default (bins = 0) keeps the full sort.
template <typename T>
bool selects(int p, const T* sorted, uint64_t bins) {
  return p == 1 && sorted == nullptr && bins > 0;
}

template <typename T, typename V>
void rank_in_one_pass(const ForwardArgs<T>& a, const Plan& plan, const Workspace& ws, cudaStream_t stream) {
  using K = typename KeyTraits<T>::Bits;
  cub::DoubleBuffer<K> keys(static_cast<K*>(ws.entries[0]), static_cast<K*>(ws.entries[1]));
  cub::DoubleBuffer<V> index(static_cast<V*>(ws.indices[0]), static_cast<V*>(ws.indices[1]));
  launch_pair_keys(a.z, a.n, a.d, DirectEmitter<T, V>{keys.Current(), index.Current()}, 0, stream);
  with_count_type(plan.pairs, [&](auto count) {
    size_t bytes = plan.sort_temp;
    check_cuda(cub::DeviceRadixSort::SortPairs(ws.sort_temp, bytes, keys, index, count, 0, KeyTraits<T>::kBits, stream),
               "cub::DeviceRadixSort::SortPairs");
  });
  launch_rank(SortedPairs<K, V>{keys.Current(), index.Current()}, a.ranks, 0, plan.pairs, 0, ws, stream);
}

template <typename T>
__device__ T half_sq_distance(const T* a, const T* b, int64_t d) {
  T acc = 0;
  for (int64_t c = 0; c < d; ++c) {
    const T diff = a[c] - b[c];
    acc = fused_multiply_add(diff, diff, acc);
  }
  return T(0.5) * acc;
}

// Pairs k = floor((2s + 1) n' / 2S), s < S: spread evenly over all pairs, as on the CPU.
template <typename T>
__global__ void sample_keys_kernel(const T* __restrict__ z, int64_t n, int64_t d, uint64_t pairs, uint64_t sample,
                                   typename KeyTraits<T>::Bits* __restrict__ out) {
  const uint64_t s = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= sample) return;
  const auto k = static_cast<uint64_t>((static_cast<unsigned __int128>(2 * s + 1) * pairs) / (2 * sample));
  const PairIJ ij = pair_of(static_cast<uint64_t>(n), k);
  out[s] = KeyTraits<T>::bits(half_sq_distance(z + ij.i * d, z + ij.j * d, d));
}

template <typename T>
__global__ void pick_splitters_kernel(const typename KeyTraits<T>::Bits* __restrict__ sorted, uint64_t sample,
                                      uint64_t buckets, T* __restrict__ splitters) {
  const uint64_t b = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x + 1;
  if (b < buckets) splitters[b - 1] = key_of_bits<T>(sorted[b * sample / buckets]);
}

template <typename T>
void choose_splitters(const ForwardArgs<T>& a, const Plan& plan, const Workspace& ws, cudaStream_t stream) {
  using K = typename KeyTraits<T>::Bits;
  cub::DoubleBuffer<K> sample(static_cast<K*>(ws.sample[0]), static_cast<K*>(ws.sample[1]));
  sample_keys_kernel<T><<<static_cast<unsigned>((plan.sample + 255) / 256), 256, 0, stream>>>(
      a.z, a.n, a.d, plan.pairs, plan.sample, sample.Current());
  check_launch("sample_keys_kernel");
  size_t bytes = plan.sample_temp;
  check_cuda(cub::DeviceRadixSort::SortKeys(ws.sample_temp, bytes, sample, static_cast<uint32_t>(plan.sample), 0,
                                            KeyTraits<T>::kBits, stream),
             "cub::DeviceRadixSort::SortKeys (sample)");
  pick_splitters_kernel<T><<<static_cast<unsigned>((plan.buckets + 255) / 256), 256, 0, stream>>>(
      sample.Current(), plan.sample, plan.buckets, static_cast<T*>(ws.splitters));
  check_launch("pick_splitters_kernel");
}

// Bucket counts and splitters, brought to the host: the forward's one synchronisation,
// since pass boundaries and CUB's item counts must be host values.
template <typename T>
void count_buckets(const ForwardArgs<T>& a, const Plan& plan, const Workspace& ws, cudaStream_t stream,
                   std::vector<uint64_t>* base, std::vector<T>* splitters) {
  const size_t hist_bytes = plan.buckets * sizeof(unsigned long long);
  check_cuda(cudaMemsetAsync(ws.hist, 0, hist_bytes, stream), "zero bucket counts");
  const HistogramEmitter<T> emit{static_cast<const T*>(ws.splitters), static_cast<int>(plan.buckets), ws.hist,
                                 nullptr, nullptr};
  // The kernel's limit is the most any call asks for (kMaxBuckets: above the default 48 KiB
  // with the static tiles), the same value on every call. A per-call value let one host
  // thread lower it between another thread's setting and its launch, which then failed.
  check_cuda(cudaFuncSetAttribute(pair_keys_kernel<T, HistogramEmitter<T>>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(HistogramEmitter<T>::shared_bytes(kMaxBuckets))),
             "pair_keys_kernel shared memory");
  launch_pair_keys(a.z, a.n, a.d, emit, HistogramEmitter<T>::shared_bytes(plan.buckets), stream);
  std::vector<unsigned long long> counts(plan.buckets);
  splitters->resize(plan.buckets - 1);
  check_cuda(cudaMemcpyAsync(counts.data(), ws.hist, hist_bytes, cudaMemcpyDeviceToHost, stream), "bucket counts");
  check_cuda(cudaMemcpyAsync(splitters->data(), ws.splitters, splitters->size() * sizeof(T), cudaMemcpyDeviceToHost,
                             stream),
             "splitters");
  check_cuda(cudaStreamSynchronize(stream), "histogram pass");
  base->assign(plan.buckets + 1, 0);
  for (uint64_t b = 0; b < plan.buckets; ++b) (*base)[b + 1] = (*base)[b] + counts[b];
  if ((*base)[plan.buckets] != plan.pairs)
    throw std::runtime_error("cdf_attraction (CUDA): the histogram counted " + std::to_string((*base)[plan.buckets]) +
                             " distances, expected " + std::to_string(plan.pairs));
}

// Buckets [b0, b1) as one pass: collect, sort, rank from base[b0].
template <typename T, typename C>
void rank_buckets(const ForwardArgs<T>& a, const Plan& plan, const Workspace& ws, const std::vector<uint64_t>& base,
                  const std::vector<T>& splitters, uint64_t b0, uint64_t b1, int pass, cudaStream_t stream) {
  const uint64_t count = base[b1] - base[b0];
  cub::DoubleBuffer<C> entries(static_cast<C*>(ws.entries[0]), static_cast<C*>(ws.entries[1]));
  check_cuda(cudaMemsetAsync(ws.cursor, 0, sizeof(unsigned long long), stream), "zero pass cursor");
  const bool bounded = b1 < plan.buckets;
  const CollectEmitter<T, C> emit{entries.Current(), ws.cursor, plan.capacity,
                                  b0 > 0 ? splitters[b0 - 1] : T(0), bounded ? splitters[b1 - 1] : T(0),
                                  bounded, plan.index_bits};
  launch_pair_keys(a.z, a.n, a.d, emit, 0, stream);
  const int end_bit = KeyTraits<T>::kBits + plan.index_bits;
  with_count_type(count, [&](auto items) {
    check_sort_temp<C>(entries, items, end_bit, plan.sort_temp, stream);
    size_t bytes = plan.sort_temp;
    check_cuda(Composite<C>::sort(ws.sort_temp, bytes, entries, items, end_bit, stream),
               "cub::DeviceRadixSort::SortKeys");
  });
  launch_rank(SortedComposites<C>{entries.Current(), plan.index_bits}, a.ranks, base[b0], base[b1], pass, ws, stream);
}

template <typename T, typename C>
void rank_in_passes(const ForwardArgs<T>& a, const Plan& plan, const Workspace& ws, cudaStream_t stream) {
  choose_splitters(a, plan, ws, stream);
  std::vector<uint64_t> base;
  std::vector<T> splitters;
  count_buckets(a, plan, ws, stream, &base, &splitters);
  for (uint64_t b = 0; b < plan.buckets; ++b) {  // before any pass is queued, so a refusal leaves no work behind
    if (base[b + 1] - base[b] > plan.capacity) {
      throw std::overflow_error("cdf_attraction: " + std::to_string(base[b + 1] - base[b]) +
                                " distances share one bucket, more than the " + std::to_string(plan.capacity) +
                                " a pass may hold (heavily tied distances, or fewer than n'/" +
                                std::to_string(kMaxBuckets) + " entries per pass); allow more sort memory");
    }
  }
  int pass = 0;
  for (uint64_t b0 = 0; b0 < plan.buckets;) {
    uint64_t b1 = b0 + 1;  // bucket b0 fits a pass (checked above)
    while (b1 < plan.buckets && base[b1 + 1] - base[b0] <= plan.capacity) ++b1;
    if (base[b1] > base[b0]) rank_buckets<T, C>(a, plan, ws, base, splitters, b0, b1, pass++, stream);
    b0 = b1;
  }
}

// ---------------------------------------------------------------- selection (p = 1)
//
// The CPU engine's selection (csrc/cpu/cdf_attraction.cpp "selection"; bins, classes and
// exact bin sums from csrc/common/cdf_select.h), taken when the caller passes bins > 0
// for p = 1 without the sorted values:
//   1. a strided sample of pairs gives the smallest and largest positive key, and one
//      thread chooses the bins from them (choose_key_bins);
//   2. histogram pass: every key counted in its bin with the integer sum of its
//      significands (global atomics: integer sums, so any order gives the same bits);
//   3. prefix counts (CUB scan) give each bin its ranks; one thread per bin classifies it
//      and writes a decided bin's share of the value;
//   4. counts and classes come to the host (a synchronisation: pass boundaries and CUB's
//      item counts are host values);
//   4b. second level, when choose_refinement (common/cdf_select.h, the CPU's rule) says it
//      pays: the chosen bins are cut into leaves, numbered in key order (OrderedSlots), one
//      more pass counts their keys per leaf, and steps 3 and 4 run again over the slots
//      (bins and leaves; a second synchronisation). The host cuts the mixed slots into
//      passes of at most `capacity` pairs;
//   5. per pass: keys regenerated; decided pairs get their sign bit (first pass only), the
//      pass's mixed pairs are appended as composite keys (key << index bits | k), sorted
//      by CUB (ties by pair index: the CPU's tie rule), ranked, and summed per bin.
// The value is the sum of the slots' shares (decided slots' values, then mixed slots' sums)
// by sum_partials, in an order fixed by the slot count: it depends neither on the launch
// configuration nor on how the mixed slots were cut into passes.

constexpr int kSelectThreads = 256;

template <typename T>
struct SelectPlan {
  uint64_t pairs, capacity, bins, sample;  // bins: all, the two clamp bins included
  uint64_t leaf_slots, slots;              // the second level's budget; bins + leaf_slots
  int index_bits;
  bool wide_composite;
  size_t sort_temp, scan_temp;
};

// Per-slot arrays: a slot is a bin, or after a refinement a bin or a leaf (OrderedSlots).
struct SelectWorkspace {
  void* sample;
  void* key_bins;                      // one KeyBins<T>, chosen on the device
  unsigned long long* count;           // bins
  unsigned long long* sum_lo;          // bins: significand sums, low 64 bits
  unsigned long long* sum_hi;          // bins: and their carries (double keys)
  unsigned long long* slot_count;      // slots: count and sums again, per slot (second level)
  unsigned long long* slot_sum_lo;     // slots
  unsigned long long* slot_sum_hi;     // slots
  uint32_t* refined_upto;              // bins + 1: refined bins before each bin (OrderedSlots)
  unsigned long long* first;           // slots + 1: first rank of each slot, then n'
  unsigned char* cls;                  // slots: BinClass
  unsigned long long* mixed;           // slots: a mixed slot's count, else 0
  unsigned long long* mixed_start;     // slots + 1: a mixed slot's first entry among all mixed
  double* shares;                      // 2 x slots: decided slots' values, then mixed slots' sums;
                                       // then sum_partials' scratch
  unsigned long long* cursor;
  void* entries[2];
  void* sort_temp;
  void* scan_temp;
};

template <typename T>
size_t select_scan_temp(uint64_t bins, cudaStream_t stream) {
  size_t bytes = 0;
  check_cuda(cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<unsigned long long*>(nullptr),
                                           static_cast<unsigned long long*>(nullptr), static_cast<int>(bins), stream),
             "cub::DeviceScan::InclusiveSum (size)");
  return bytes;
}

template <typename T>
SelectPlan<T> make_select_plan(int64_t n, uint64_t capacity, uint64_t bins, cudaStream_t stream) {
  SelectPlan<T> plan{};
  plan.pairs = pair_count(static_cast<uint64_t>(n));
  plan.bins = bins + 2;
  plan.leaf_slots = leaf_slots_of(plan.bins);
  plan.slots = plan.bins + plan.leaf_slots;
  plan.sample = select_sample_size(plan.pairs);
  plan.index_bits = std::max(1, bit_width(plan.pairs - 1));
  plan.wide_composite = !(sizeof(T) == 4 && KeyTraits<T>::kBits + plan.index_bits <= 64);
  // `capacity` counts sort entries of cdf_pairs_entry_bytes, at least a composite key twice
  // (CUB's double buffer): the CPU's meaning. |e| goes into the half the sort left free.
  plan.capacity = std::max<uint64_t>(1, std::min(capacity, plan.pairs));
  Plan sort_plan{};
  sort_plan.capacity = plan.capacity;
  sort_plan.index_bits = plan.index_bits;
  sort_plan.wide_composite = plan.wide_composite;
  plan.sort_temp = passes_sort_temp<T>(sort_plan, stream);
  plan.scan_temp = select_scan_temp<T>(plan.slots, stream);
  return plan;
}

template <typename T>
size_t select_layout(const SelectPlan<T>& plan, char* base, SelectWorkspace* out) {
  const size_t ull = sizeof(unsigned long long);
  const size_t composite = plan.wide_composite ? sizeof(WideKey) : sizeof(uint64_t);
  const size_t sizes[] = {
      plan.sample * sizeof(typename KeyTraits<T>::Bits),
      sizeof(KeyBins<T>),
      plan.bins * ull,
      plan.bins * ull,
      plan.bins * ull,
      plan.slots * ull,
      plan.slots * ull,
      plan.slots * ull,
      (plan.bins + 1) * sizeof(uint32_t),
      (plan.slots + 1) * ull,
      plan.slots,
      plan.slots * ull,
      (plan.slots + 1) * ull,
      (2 * plan.slots + sum_partials_scratch(2 * plan.slots)) * sizeof(double),
      ull,
      plan.capacity * composite,
      plan.capacity * composite,
      plan.sort_temp,
      plan.scan_temp,
  };
  void* parts[sizeof(sizes) / sizeof(sizes[0])];
  const size_t total = carve_workspace(base, sizes, parts);
  if (out != nullptr) {
    *out = {parts[0],
            parts[1],
            static_cast<unsigned long long*>(parts[2]),
            static_cast<unsigned long long*>(parts[3]),
            static_cast<unsigned long long*>(parts[4]),
            static_cast<unsigned long long*>(parts[5]),
            static_cast<unsigned long long*>(parts[6]),
            static_cast<unsigned long long*>(parts[7]),
            static_cast<uint32_t*>(parts[8]),
            static_cast<unsigned long long*>(parts[9]),
            static_cast<unsigned char*>(parts[10]),
            static_cast<unsigned long long*>(parts[11]),
            static_cast<unsigned long long*>(parts[12]),
            static_cast<double*>(parts[13]),
            static_cast<unsigned long long*>(parts[14]),
            {parts[15], parts[16]},
            parts[17],
            parts[18]};
  }
  return total;
}

// The bins from the sample's smallest and largest positive key (one block; sample <= 2^16).
template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
choose_bins_kernel(const typename KeyTraits<T>::Bits* __restrict__ sample, uint64_t count, uint64_t max_range,
                   KeyBins<T>* __restrict__ out) {
  using U = typename KeyBins<T>::U;
  __shared__ U lows[kSelectThreads], highs[kSelectThreads];
  U lo = ~U{0}, hi = 0;
  for (uint64_t s = threadIdx.x; s < count; s += blockDim.x) {
    const U bits = static_cast<U>(sample[s]);
    if (bits == 0) continue;
    lo = bits < lo ? bits : lo;
    hi = bits > hi ? bits : hi;
  }
  lows[threadIdx.x] = lo;
  highs[threadIdx.x] = hi;
  __syncthreads();
  for (int half = kSelectThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      lows[threadIdx.x] = lows[threadIdx.x + half] < lows[threadIdx.x] ? lows[threadIdx.x + half] : lows[threadIdx.x];
      highs[threadIdx.x] = highs[threadIdx.x + half] > highs[threadIdx.x] ? highs[threadIdx.x + half] : highs[threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    U first = lows[0], last = highs[0];
    if (last == 0) first = last = 1;  // every sampled key is 0: in-range bins start at the smallest subnormal
    *out = choose_key_bins<T>(first, last, max_range);
  }
}

// One key counted in slot s, with the integer sum of its significand (any order, same bits).
template <typename T>
__device__ __forceinline__ void count_key(typename KeyBins<T>::U bits, uint64_t s, unsigned long long* count,
                                          unsigned long long* sum_lo, unsigned long long* sum_hi) {
  atomicAdd(count + s, 1ull);
  const unsigned long long sig = static_cast<unsigned long long>(KeyBins<T>::significand(bits));
  const unsigned long long before = atomicAdd(sum_lo + s, sig);
  if (before + sig < before) atomicAdd(sum_hi + s, 1ull);  // the low word wrapped: carry
}

// Histogram pass: count and significand sum per bin.
template <typename T>
struct SelectCountEmitter {
  const KeyBins<T>* key_bins;
  unsigned long long* count;
  unsigned long long* sum_lo;
  unsigned long long* sum_hi;
  KeyBins<T> bins;
  __device__ void begin(unsigned char*) { bins = *key_bins; }
  __device__ void end() {}
  __device__ void operator()(bool valid, uint64_t, T key) {
    if (!valid) return;
    const auto bits = static_cast<typename KeyBins<T>::U>(KeyTraits<T>::bits(key));
    count_key<T>(bits, bins.bin_of(bits), count, sum_lo, sum_hi);
  }
};

// Second-level pass: the keys of refined bins counted in their leaves' slots.
template <typename T>
struct LeafCountEmitter {
  OrderedSlots<T> slots;
  unsigned long long* count;
  unsigned long long* sum_lo;
  unsigned long long* sum_hi;
  __device__ void begin(unsigned char*) {}
  __device__ void end() {}
  __device__ void operator()(bool valid, uint64_t, T key) {
    if (!valid) return;
    const auto bits = static_cast<typename KeyBins<T>::U>(KeyTraits<T>::bits(key));
    if (slots.refined(slots.bins.bin_of(bits))) count_key<T>(bits, slots.slot_of(bits), count, sum_lo, sum_hi);
  }
};

// One thread per slot (a bin, or a bin or leaf after a refinement: `refined_upto` null or
// not): its class and, for a decided slot, its share of the value (step 3).
template <typename T>
__global__ void classify_slots_kernel(const KeyBins<T>* __restrict__ key_bins, KeyLeaves<T> leaves,
                                      const uint32_t* __restrict__ refined_upto,
                                      const unsigned long long* __restrict__ count,
                                      const unsigned long long* __restrict__ sum_lo,
                                      const unsigned long long* __restrict__ sum_hi,
                                      const unsigned long long* __restrict__ first, RankQuantiles<T> quantiles,
                                      uint64_t all_slots, unsigned char* __restrict__ cls,
                                      unsigned long long* __restrict__ mixed, double* __restrict__ shares) {
  const uint64_t s = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= all_slots) return;
  const OrderedSlots<T> slots{*key_bins, leaves, refined_upto};
  const SlotClass c = classify_slot(slots, s, count[s], first[s], sum_lo[s], sum_hi[s], quantiles);
  cls[s] = static_cast<unsigned char>(c.cls);
  mixed[s] = c.mixed;
  shares[s] = c.share;
}

// Second level: each unrefined bin's count and sums moved to its slot (the leaf slots of
// refined bins were zeroed; the leaf pass counts them).
template <typename T>
__global__ void spread_bins_kernel(OrderedSlots<T> slots, const unsigned long long* __restrict__ count,
                                   const unsigned long long* __restrict__ sum_lo,
                                   const unsigned long long* __restrict__ sum_hi,
                                   unsigned long long* __restrict__ slot_count, unsigned long long* __restrict__ slot_lo,
                                   unsigned long long* __restrict__ slot_hi) {
  const uint64_t b = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= slots.bins.count()) return;
  spread_bin(b, slots.refined(b), slots.first_slot(b), count, sum_lo, sum_hi, slot_count, slot_lo, slot_hi);
}

// A pass: signs of the decided pairs (first pass), the mixed pairs of bins [b0, b1) appended.
template <typename T, typename C>
struct SelectCollectEmitter {
  OrderedSlots<T> slots;
  const unsigned char* cls;
  uint64_t b0, b1;
  bool write_signs;
  unsigned long long* pos_bits;
  unsigned long long* neg_bits;
  C* out;
  unsigned long long* cursor;
  uint64_t capacity;
  int index_bits;
  __device__ void begin(unsigned char*) {}
  __device__ void end() {}
  __device__ void operator()(bool valid, uint64_t k, T key) {
    const auto bits = KeyTraits<T>::bits(key);
    const CollectedKey c = valid ? collect_key(slots, cls, b0, b1, static_cast<typename KeyBins<T>::U>(bits))
                                 : CollectedKey{kBinEmpty, false};
    if (write_signs) {  // every lane calls: the votes are warp-wide
      set_bit_aggregated(DeviceWarp{}, c.cls == kBinAbove, k, pos_bits);
      set_bit_aggregated(DeviceWarp{}, c.cls == kBinBelow, k, neg_bits);
    }
    append_kept(DeviceWarp{}, c.keep, Composite<C>::make(bits, k, index_bits), cursor, out, capacity);
  }
};

// Entry `pos` of the pass (sorted): its residual (mixed_entry_residual, which ranks it in its
// slot) gives its sign bit, and |e| for the per-slot sums.
template <typename T, typename C>
__global__ void rank_mixed_kernel(SortedComposites<C> entries, uint64_t count, uint64_t offset,
                                  OrderedSlots<T> slots, const unsigned long long* __restrict__ first,
                                  const unsigned long long* __restrict__ mixed_start, RankQuantiles<T> quantiles,
                                  unsigned long long* __restrict__ pos_bits, unsigned long long* __restrict__ neg_bits,
                                  double* __restrict__ terms) {
  const uint64_t pos = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pos >= count) return;
  const Entry entry = entries(pos);
  const T e = mixed_entry_residual(slots, entry.key_bits, pos, offset, first, mixed_start, quantiles);
  if (e != T(0)) atomicOr((e > T(0) ? pos_bits : neg_bits) + (entry.index >> 6), 1ull << (entry.index & 63));
  terms[pos] = abs_power(e, 1);
}

// One block per slot of [b0, b1): the sum of its entries' |e|, in entry order (fixed).
__global__ void __launch_bounds__(kSelectThreads)
sum_mixed_bins_kernel(const double* __restrict__ terms, const unsigned long long* __restrict__ mixed_start,
                      uint64_t b0, uint64_t offset, double* __restrict__ sums) {
  const uint64_t b = b0 + blockIdx.x;
  const uint64_t begin = mixed_start[b] - offset, end = mixed_start[b + 1] - offset;
  if (begin == end) return;  // block-uniform
  double v = 0.0;
  for (uint64_t e = begin + threadIdx.x; e < end; e += blockDim.x) v += terms[e];
  v = block_sum(v);
  if (threadIdx.x == 0) sums[b] = v;
}

template <typename T>
struct SelectArgs {
  const T* z;
  int64_t n, d;
  RankQuantiles<T> quantiles;
  unsigned long long* pos_bits;
  unsigned long long* neg_bits;
  double* value;
  int64_t* stats;  // optional, on the device: sorted pairs, passes, bins, mixed bins
};

// Step 3 over `all` slots: first ranks (a scan of the counts), classes and shares, and the
// mixed slots' first entries among all mixed pairs (a scan of the mixed counts).
template <typename T>
void classify_slots(const SelectArgs<T>& a, const SelectPlan<T>& plan, const SelectWorkspace& ws,
                    const unsigned long long* count, const unsigned long long* sum_lo, const unsigned long long* sum_hi,
                    const KeyLeaves<T>& leaves, const uint32_t* refined_upto, uint64_t all, cudaStream_t stream) {
  const size_t ull = sizeof(unsigned long long);
  const auto* key_bins = static_cast<const KeyBins<T>*>(ws.key_bins);
  check_cuda(cudaMemsetAsync(ws.first, 0, ull, stream), "first rank");
  size_t bytes = plan.scan_temp;
  check_cuda(cub::DeviceScan::InclusiveSum(ws.scan_temp, bytes, count, ws.first + 1, static_cast<int>(all), stream),
             "cub::DeviceScan::InclusiveSum (ranks)");
  check_cuda(cudaMemsetAsync(ws.shares, 0, 2 * all * sizeof(double), stream), "zero slot shares");
  classify_slots_kernel<T><<<static_cast<unsigned>((all + 255) / 256), 256, 0, stream>>>(
      key_bins, leaves, refined_upto, count, sum_lo, sum_hi, ws.first, a.quantiles, all, ws.cls, ws.mixed, ws.shares);
  check_launch("classify_slots_kernel");
  check_cuda(cudaMemsetAsync(ws.mixed_start, 0, ull, stream), "first mixed entry");
  bytes = plan.scan_temp;
  check_cuda(cub::DeviceScan::InclusiveSum(ws.scan_temp, bytes, ws.mixed, ws.mixed_start + 1, static_cast<int>(all),
                                           stream),
             "cub::DeviceScan::InclusiveSum (mixed entries)");
}

template <typename T>
void select_histogram(const SelectArgs<T>& a, const SelectPlan<T>& plan, const SelectWorkspace& ws,
                      cudaStream_t stream) {
  using K = typename KeyTraits<T>::Bits;
  auto* sample = static_cast<K*>(ws.sample);
  auto* key_bins = static_cast<KeyBins<T>*>(ws.key_bins);
  sample_keys_kernel<T><<<static_cast<unsigned>((plan.sample + 255) / 256), 256, 0, stream>>>(
      a.z, a.n, a.d, plan.pairs, plan.sample, sample);
  check_launch("sample_keys_kernel");
  choose_bins_kernel<T><<<1, kSelectThreads, 0, stream>>>(sample, plan.sample, plan.bins - 2, key_bins);
  check_launch("choose_bins_kernel");
  const size_t ull = sizeof(unsigned long long);
  check_cuda(cudaMemsetAsync(ws.count, 0, plan.bins * ull, stream), "zero bin counts");
  check_cuda(cudaMemsetAsync(ws.sum_lo, 0, plan.bins * ull, stream), "zero bin sums");
  check_cuda(cudaMemsetAsync(ws.sum_hi, 0, plan.bins * ull, stream), "zero bin sums");
  launch_pair_keys(a.z, a.n, a.d, SelectCountEmitter<T>{key_bins, ws.count, ws.sum_lo, ws.sum_hi, {}}, 0, stream);
  classify_slots<T>(a, plan, ws, ws.count, ws.sum_lo, ws.sum_hi, KeyLeaves<T>{}, nullptr, plan.bins, stream);
}

// Each slot's mixed pairs and first entry among all mixed, on the host (waits for the stream),
// after checking that the `all` slots hold every pair once (as the CPU engine checks).
struct MixedSlots {
  std::vector<unsigned long long> mixed, start;  // all slots; all + 1
};

MixedSlots read_mixed_slots(const SelectWorkspace& ws, uint64_t all, uint64_t pairs, const char* what,
                            cudaStream_t stream) {
  MixedSlots m{std::vector<unsigned long long>(all), std::vector<unsigned long long>(all + 1)};
  unsigned long long counted = 0;
  check_cuda(cudaMemcpyAsync(&counted, ws.first + all, sizeof counted, cudaMemcpyDeviceToHost, stream),
             "pairs counted");
  check_cuda(cudaMemcpyAsync(m.mixed.data(), ws.mixed, all * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                             stream),
             "mixed counts");
  check_cuda(cudaMemcpyAsync(m.start.data(), ws.mixed_start, (all + 1) * sizeof(unsigned long long),
                             cudaMemcpyDeviceToHost, stream),
             "mixed starts");
  check_cuda(cudaStreamSynchronize(stream), "selection histogram");
  if (counted != pairs)
    throw std::runtime_error(std::string("cdf_attraction (CUDA): ") + what + " hold " + std::to_string(counted) +
                             " distances, expected " + std::to_string(pairs));
  return m;
}

// Step 4b, the second level: when choose_refinement (the CPU's rule, with the CPU's leaf
// budget: the slots the chosen bins leave) says it pays, cuts the chosen bins into leaves
// in key order, counts their keys in one more pass, classifies every slot again and reads
// the mixed slots back. Returns the slots (the bins themselves when nothing is refined).
template <typename T>
OrderedSlots<T> refine_mixed_bins(const SelectArgs<T>& a, const SelectPlan<T>& plan, const SelectWorkspace& ws,
                                  const KeyBins<T>& chosen, MixedSlots* m, cudaStream_t stream) {
  OrderedSlots<T> slots{chosen, KeyLeaves<T>{}, nullptr};
  const uint64_t count = chosen.count();
  std::vector<RefineCandidate> candidates;
  for (uint64_t b = 0; b < count; ++b)
    if (m->mixed[b] > 1 && chosen.finite(b)) candidates.push_back({m->mixed[b], b});
  const Refinement refinement = choose_refinement(std::move(candidates), m->start[plan.bins], chosen.shift,
                                                  plan.slots - count, plan.pairs, plan.capacity);
  if (refinement.bins.empty()) return slots;
  std::vector<uint32_t> upto(count + 1, 0);
  for (const uint64_t b : refinement.bins) upto[b + 1] = 1;
  for (uint64_t b = 0; b < count; ++b) upto[b + 1] += upto[b];
  slots.leaves.bits = refinement.bits;
  slots.leaves.used = refinement.bins.size();
  slots.refined_upto = ws.refined_upto;
  const uint64_t all = slots.count();
  if (all > plan.slots) throw std::logic_error("cdf_attraction (CUDA): more leaves than the workspace holds");
  // From pageable memory (staged before the call returns, by CUDA's rules for such copies);
  // read_mixed_slots below synchronises the stream before `upto` goes out of scope anyway.
  check_cuda(cudaMemcpyAsync(ws.refined_upto, upto.data(), upto.size() * sizeof(uint32_t), cudaMemcpyHostToDevice,
                             stream),
             "refined bins");
  const size_t ull = sizeof(unsigned long long);
  check_cuda(cudaMemsetAsync(ws.slot_count, 0, all * ull, stream), "zero slot counts");
  check_cuda(cudaMemsetAsync(ws.slot_sum_lo, 0, all * ull, stream), "zero slot sums");
  check_cuda(cudaMemsetAsync(ws.slot_sum_hi, 0, all * ull, stream), "zero slot sums");
  spread_bins_kernel<T><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(
      slots, ws.count, ws.sum_lo, ws.sum_hi, ws.slot_count, ws.slot_sum_lo, ws.slot_sum_hi);
  check_launch("spread_bins_kernel");
  launch_pair_keys(a.z, a.n, a.d, LeafCountEmitter<T>{slots, ws.slot_count, ws.slot_sum_lo, ws.slot_sum_hi}, 0,
                   stream);
  classify_slots<T>(a, plan, ws, ws.slot_count, ws.slot_sum_lo, ws.slot_sum_hi, slots.leaves, ws.refined_upto, all,
                    stream);
  *m = read_mixed_slots(ws, all, plan.pairs, "the slots of the second level", stream);
  return slots;
}

template <typename T, typename C>
void select_forward(const SelectArgs<T>& a, const SelectPlan<T>& plan, const SelectWorkspace& ws, cudaStream_t stream) {
  select_histogram<T>(a, plan, ws, stream);
  // Step 4: the mixed counts on the host, with the bins chosen, for the second level, the
  // passes and the counters.
  KeyBins<T> chosen{};
  check_cuda(cudaMemcpyAsync(&chosen, ws.key_bins, sizeof chosen, cudaMemcpyDeviceToHost, stream), "bins chosen");
  MixedSlots m = read_mixed_slots(ws, plan.bins, plan.pairs, "the histogram's bins", stream);
  const OrderedSlots<T> slots = refine_mixed_bins<T>(a, plan, ws, chosen, &m, stream);
  const uint64_t all = m.mixed.size();
  int64_t passes = slots.refined_upto != nullptr ? 2 : 1, mixed_slots = 0;
  uint64_t largest = 0;
  for (unsigned long long mixed : m.mixed) {
    mixed_slots += mixed != 0;
    largest = std::max<uint64_t>(largest, mixed);
  }
  if (largest > plan.capacity) refuse_tied_bin(largest, plan.capacity);  // before any pass runs
  bool first_pass = true;
  for (uint64_t b0 = 0; first_pass || b0 < all;) {
    while (!first_pass && b0 < all && m.mixed[b0] == 0) ++b0;
    if (!first_pass && b0 == all) break;
    const uint64_t b1 = first_pass && m.start[all] == 0 ? all : next_mixed_run(m.mixed, b0, plan.capacity);
    const uint64_t count = m.start[b1] - m.start[b0];
    cub::DoubleBuffer<C> entries(static_cast<C*>(ws.entries[0]), static_cast<C*>(ws.entries[1]));
    check_cuda(cudaMemsetAsync(ws.cursor, 0, sizeof(unsigned long long), stream), "zero pass cursor");
    const SelectCollectEmitter<T, C> emit{slots,      ws.cls,     b0,        b1,
                                          first_pass, a.pos_bits, a.neg_bits, entries.Current(),
                                          ws.cursor,  plan.capacity, plan.index_bits};
    launch_pair_keys(a.z, a.n, a.d, emit, 0, stream);
    ++passes;
    if (count > 0) {
      const int end_bit = KeyTraits<T>::kBits + plan.index_bits;
      with_count_type(count, [&](auto items) {
        check_sort_temp<C>(entries, items, end_bit, plan.sort_temp, stream);
        size_t bytes = plan.sort_temp;
        check_cuda(Composite<C>::sort(ws.sort_temp, bytes, entries, items, end_bit, stream),
                   "cub::DeviceRadixSort::SortKeys (mixed pairs)");
      });
      // |e| of each sorted entry goes into the half of CUB's double buffer the sort left free
      // (a composite key takes at least the 8 bytes of a double).
      double* terms = reinterpret_cast<double*>(entries.Alternate());
      rank_mixed_kernel<T, C><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(
          SortedComposites<C>{entries.Current(), plan.index_bits}, count, m.start[b0], slots, ws.first,
          ws.mixed_start, a.quantiles, a.pos_bits, a.neg_bits, terms);
      check_launch("rank_mixed_kernel");
      sum_mixed_bins_kernel<<<static_cast<unsigned>(b1 - b0), kSelectThreads, 0, stream>>>(
          terms, ws.mixed_start, b0, m.start[b0], ws.shares + all);
      check_launch("sum_mixed_bins_kernel");
    }
    first_pass = false;
    b0 = b1;
  }
  const auto shares = static_cast<long long>(2 * all);
  sum_partials(ws.shares, shares, 1.0, a.value, ws.shares + shares, stream);
  if (a.stats != nullptr) {
    int64_t stats[kStatCount];
    stats[kStatSortedPairs] = static_cast<int64_t>(m.start[all]);
    stats[kStatPasses] = passes;
    stats[kStatBins] = static_cast<int64_t>(chosen.count());
    stats[kStatMixedBins] = mixed_slots;
    stats[kStatRefinedBins] = static_cast<int64_t>(slots.refined_upto != nullptr ? slots.leaves.used : 0);
    check_cuda(cudaMemcpyAsync(a.stats, stats, sizeof stats, cudaMemcpyHostToDevice, stream), "selection stats");
    check_cuda(cudaStreamSynchronize(stream), "selection stats");  // `stats` lives on this stack frame
  }
}

template <typename T>
void select(const ForwardArgs<T>& a, void* workspace, size_t ws_bytes, cudaStream_t stream) {
  const SelectPlan<T> plan = make_select_plan<T>(a.n, a.capacity, a.bins, stream);
  SelectWorkspace ws;
  const size_t need = select_layout<T>(plan, aligned_base(workspace), &ws);
  if (workspace == nullptr || need > ws_bytes)
    throw std::invalid_argument("cdf_attraction: workspace of " + std::to_string(ws_bytes) + " bytes, need " +
                                std::to_string(need) + " (cdf_pairs_workspace_bytes)");
  const size_t bytes = bit_words(plan.pairs) * sizeof(uint64_t);
  check_cuda(cudaMemsetAsync(a.ranks.pos_bits, 0, bytes, stream), "zero sign bits");
  check_cuda(cudaMemsetAsync(a.ranks.neg_bits, 0, bytes, stream), "zero sign bits");
  const SelectArgs<T> s{a.z, a.n, a.d, a.ranks.quantiles, a.ranks.pos_bits, a.ranks.neg_bits, a.value, a.stats};
  if (plan.wide_composite)
    select_forward<T, WideKey>(s, plan, ws, stream);
  else
    select_forward<T, uint64_t>(s, plan, ws, stream);
}

template <typename T>
size_t forward_workspace_bytes(int64_t n, uint64_t capacity, uint64_t bins, cudaStream_t stream) {
  const size_t sort = workspace_layout<T>(make_plan<T>(n, capacity, stream), nullptr, nullptr);
  if (bins == 0) return sort;
  return std::max(sort, select_layout<T>(make_select_plan<T>(n, capacity, bins, stream), nullptr, nullptr));
}

template <typename T>
void forward(const ForwardArgs<T>& a, void* workspace, size_t ws_bytes, cudaStream_t stream) {
  if (selects(a.ranks.p, a.ranks.sorted, a.bins)) return select(a, workspace, ws_bytes, stream);
  const Plan plan = make_plan<T>(a.n, a.capacity, stream);
  char* base = aligned_base(workspace);
  Workspace ws;
  const size_t need = workspace_layout<T>(plan, base, &ws);
  if (workspace == nullptr || need > ws_bytes)
    throw std::invalid_argument("cdf_attraction: workspace of " + std::to_string(ws_bytes) + " bytes, need " +
                                std::to_string(need) + " (cdf_pairs_workspace_bytes)");
  if (a.ranks.p == 1) {
    const size_t bytes = bit_words(plan.pairs) * sizeof(uint64_t);
    check_cuda(cudaMemsetAsync(a.ranks.pos_bits, 0, bytes, stream), "zero sign bits");
    check_cuda(cudaMemsetAsync(a.ranks.neg_bits, 0, bytes, stream), "zero sign bits");
  }
  if (plan.one_pass) {
    if (plan.wide_index)
      rank_in_one_pass<T, uint64_t>(a, plan, ws, stream);
    else
      rank_in_one_pass<T, uint32_t>(a, plan, ws, stream);
  } else if constexpr (sizeof(T) == 8) {
    rank_in_passes<T, WideKey>(a, plan, ws, stream);  // 63 key bits leave no room for the index
  } else {
    if (plan.wide_composite)
      rank_in_passes<T, WideKey>(a, plan, ws, stream);
    else
      rank_in_passes<T, uint64_t>(a, plan, ws, stream);
  }
  const auto chunks = static_cast<long long>(plan.chunks);
  sum_partials(ws.partials, chunks, 1.0, a.value, ws.partials + chunks, stream);
}

// ---------------------------------------------------------------- backward

template <typename T>
using BackwardArgs = SignedDifferences<T>;

// Rows [64 blockIdx.x, + 64): common/cdf_backward.h signed_differences_rows.
template <typename T, int DPL>
__global__ void __launch_bounds__(kBackThreads) signed_differences_kernel(BackwardArgs<T> a) {
  __shared__ __align__(16) BackWeights<T> weights;
  __shared__ BackColumns<T, DPL> cols;
  ThreadBlock<kBackThreads> block;
  signed_differences_rows<T, DPL>(a, static_cast<int64_t>(blockIdx.x), block, weights, cols);
}

template <typename T, int DPL>
void launch_backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  const int64_t blocks = (a.n + kBackRows - 1) / kBackRows;
  signed_differences_kernel<T, DPL><<<static_cast<unsigned>(blocks), kBackThreads, 0, stream>>>(a);
  check_launch("signed_differences_kernel");
}

// Coordinates per lane: enough for D in one chunk up to 128 (float) or 64 (double);
// larger D loops over chunks (the weights are staged again per chunk).
template <typename T>
void backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  if (a.d <= 32) return launch_backward<T, 1>(a, stream);
  if constexpr (sizeof(T) == 4) {
    if (a.d > 64) return launch_backward<T, 4>(a, stream);
  }
  launch_backward<T, 2>(a, stream);
}

// ---------------------------------------------------------------- bindings

// The CUDA side of the shared bindings (csrc/common/cdf_attraction_bind.h): everything runs
// on `stream`; the forward in passes synchronises it once, after its histogram (pass
// boundaries are host values). Errors: std::invalid_argument, std::overflow_error (a bucket of
// tied distances larger than a pass), std::runtime_error.
struct CdfPairsCuda {
  static constexpr const char* kLastArg = "stream";

  template <typename T>
  static std::size_t workspace_bytes(int64_t n, int64_t, uint64_t capacity, uint64_t bins, std::uintptr_t stream) {
    return forward_workspace_bytes<T>(n, capacity, bins, stream_of(stream));
  }

  static std::size_t entry_bytes(bool single, uint64_t pairs) { return entry_bytes_of(single, pairs); }

  template <typename T>
  static void forward(const CdfForwardCall<T>& c, std::uintptr_t stream) {
    const uint64_t pairs = pair_count(static_cast<uint64_t>(c.n));
    const RankArgs<T> ranks{c.quantiles,
                            c.p,
                            reinterpret_cast<unsigned long long*>(c.pos),
                            reinterpret_cast<unsigned long long*>(c.neg),
                            c.residual,
                            c.sorted,
                            pairs};
    cuda::forward(ForwardArgs<T>{c.z, c.n, c.d, ranks, c.value, c.capacity, c.bins, c.stats}, c.workspace, c.ws_bytes,
                  stream_of(stream));
  }

  template <typename T>
  static void backward(const CdfBackwardCall<T>& c, std::uintptr_t stream) {
    if (c.world != 1) throw std::invalid_argument("cdf_pairs_backward: the CUDA engine has no split across ranks");
    cuda::backward(BackwardArgs<T>{c.z, c.n, c.d, c.p, reinterpret_cast<const unsigned long long*>(c.pos),
                                   reinterpret_cast<const unsigned long long*>(c.neg), c.residual,
                                   static_cast<T>(c.scale), c.grad},
                   stream_of(stream));
  }
};

}  // namespace

void bind_cdf_attraction(py::module_& m) { bind_cdf_pairs_engine<CdfPairsCuda>(m); }

}  // namespace cuda
}  // namespace gaussreg
