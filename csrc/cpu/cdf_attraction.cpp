// CPU engine of the distances term of CDF attraction (SPEC 1): exact ranks of the
// n' = n(n-1)/2 half squared distances d_ij, without ever holding them all.
//
// Forward, a sample sort over buckets:
//   1. splitters: B - 1 keys taken from a strided sample of pairs, so buckets hold about
//      n'/B keys whatever the sample's distribution (near the target or far from it);
//   2. histogram pass: every d_ij is generated from coordinate differences and counted
//      in its bucket, per row group (the groups' rows are fixed, so each group's writes
//      go to cursors of its own in the later passes: no atomics, no dependence on threads);
//   3. collection passes: consecutive buckets whose keys fit `capacity` entries are
//      collected (d_ij regenerated), each bucket is sorted on its own (buckets run in
//      parallel), and rank k = bucket start + position gives e = d_(k) - c'_k, stored as
//      two bits per pair (p = 1) or one value (p = 2) at the pair's index. When all n'
//      entries fit this is one pass; otherwise memory stays at `capacity` entries.
// Each bucket is sorted by key with a stable LSD radix sort over the bits its keys do
// not share (two byte passes for a typical bucket), then equal keys are put in pair-index
// order: ties are ranked by pair index, so results do not depend on the thread count, the
// sort budget or the SIMD width.
//
// Up to 2^15 pairs (n <= 256) none of this: one pass writes every key at its pair index and
// one stable sort ranks them all ("few pairs: one bucket" below; ties by pair index).
//
// p = 1 without the sorted values ranks by selection instead (see "selection" below): only
// the pairs of histogram bins near a crossing of the empirical and target CDFs are sorted.
// The selection also runs split over the ranks of a process group ("shares across ranks"):
// each rank counts, signs and differentiates its own pairs.
//
// Backward: g_i = scale * ((sum_j s_ij) z_i - sum_j s_ij z_j), a product of the sign (or
// residual) matrix with the points in register tiles; the pairs (j, i0..i0+r) with j < i0
// are consecutive bits, so the lower triangle is read a word per j, the upper one along the
// rows. Each row is summed by one thread in a fixed order: bitwise reproducible.
#include "common/cdf_attraction.h"
#include "common/cdf_attraction_bind.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cdf_select.h"
#include "common/interrupt.h"
#include "cpu/huge_pages.h"
#include "cpu/python_interrupt.h"
#include "common/pair_index.h"
#include "common/segmented.h"  // OrderedBits: the unsigned integer of a key's width
#include "cpu/radix_sort.h"

#if defined(GAUSSREG_HAVE_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace gaussreg {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 8;            // rows generated together (their loads are shared)
constexpr uint64_t kRowGroups = 64;
constexpr uint64_t kBucketTarget = 16384;   // keys per bucket: one bucket's sort stays in L2
constexpr uint64_t kMaxBuckets = uint64_t{1} << 18;
constexpr uint64_t kSamplePerBucket = 32;
constexpr uint64_t kSplitterPad = 4;        // splitters past the last, read by BucketFinder

// ---------------------------------------------------------------- sort entries

// d >= 0, so the IEEE bit pattern orders like the value.
template <typename T>
typename OrderedBits<T>::type key_bits(T v) {
  typename OrderedBits<T>::type k;
  std::memcpy(&k, &v, sizeof v);
  return k;
}

template <typename T>
T key_value(uint64_t bits) {
  typename OrderedBits<T>::type k = static_cast<typename OrderedBits<T>::type>(bits);
  T v;
  std::memcpy(&v, &k, sizeof v);
  return v;
}

template <typename T>
bool packs(uint64_t pairs) {
  return sizeof(T) == 4 && pairs <= (uint64_t{1} << 32);
}

// ---------------------------------------------------------------- sizes

// One SIMD register of T: 64 bytes with AVX-512, else 32. A wider GCC/Clang vector than the
// registers would be split in two, and the 8 accumulators below would then take all 16
// ymm registers of AVX2 and spill (measured 6x slower key generation on an AVX2 EPYC).
#if defined(__AVX512F__)
constexpr int kSimdBytes = 64;
#else
constexpr int kSimdBytes = 32;
#endif
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(kSimdBytes)));
  static constexpr int64_t kLanes = kSimdBytes / sizeof(T);
};

// A GCC/Clang vector of kBytes / sizeof(T) lanes of T (any width, e.g. a uint32_t per lane
// of Simd<T>, or the narrower vectors of the backward's leftover coordinates).
template <typename T, int kBytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(kBytes)));
};

// A uint32_t per lane of Simd<T>: the lane indices and sign bits of the backward's weights.
template <typename T>
using SimdLanes = typename VectorOf<uint32_t, Simd<T>::kLanes * sizeof(uint32_t)>::type;

constexpr int64_t kPanels = 1;  // vectors of j per row: kRowBlock independent FMA chains hide the latency

// Points per row of the transposed copy: padded with zeros so that every panel load is whole.
template <typename T>
int64_t padded_count(int64_t n) {
  constexpr int64_t step = kPanels * Simd<T>::kLanes;
  return (n + step - 1) / step * step;
}

struct Plan {
  uint64_t pairs, buckets, sample, groups;
};

Plan make_plan(int64_t n, uint64_t capacity, int threads) {
  Plan plan;
  plan.pairs = pair_count(static_cast<uint64_t>(n));
  const uint64_t by_size = (plan.pairs + kBucketTarget - 1) / kBucketTarget;
  // Buckets a quarter of a pass at most, so that sampling noise rarely overfills one.
  const uint64_t by_capacity = capacity == 0 ? 1 : (4 * plan.pairs + capacity - 1) / capacity;
  plan.buckets = std::min(kMaxBuckets, std::max<uint64_t>({1, by_size, by_capacity}));
  plan.sample = std::min(plan.pairs, kSamplePerBucket * plan.buckets);
  const uint64_t blocks = (static_cast<uint64_t>(n) + kRowBlock - 1) / kRowBlock;
  // A fixed number of groups (not one per thread): which rows a group collects, and so the
  // order in which a bucket receives its keys, must not depend on the thread count (ties are
  // then ordered by pair index). 64 keeps up to ~16 threads balanced.
  (void)threads;
  plan.groups = std::max<uint64_t>(1, std::min<uint64_t>(kRowGroups, blocks));
  return plan;
}

// Key bits above the top 11 (float) or 8 (double) mantissa bits select a cell of the
// bucket lookup table:
// 2^19 cells for float and double (the sign bit of a distance is always 0); only the
// few cells the keys fall in are ever read.
template <typename T>
constexpr int cell_shift() {
  return sizeof(T) == 4 ? 12 : 44;
}

template <typename T>
constexpr uint64_t cells_of() {
  return uint64_t{1} << (8 * sizeof(T) - 1 - cell_shift<T>());
}

size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// The first 64-byte boundary of a workspace (every layout keeps 64 bytes of slack for it).
char* aligned_base(void* workspace) {
  return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(workspace) + 63) / 64 * 64);
}

// The workspace, carved in this order.
template <typename T>
struct Workspace {
  T* zt;              // points in panels (transpose_points)
  T* splitters;       // B - 1, then kSplitterPad
  T* sample;          // S
  uint32_t* lut;      // up to cells + 2: splitters below each cell of key bits (see BucketFinder)
  uint64_t* hist;     // G x B
  uint64_t* cursor;   // G x B
  uint64_t* base;     // B + 1
  double* partial;    // B
  void* entries;      // capacity
};

template <typename T>
size_t workspace_layout(int64_t n, int64_t d, uint64_t capacity, const Plan& plan, char* base, Workspace<T>* out) {
  const size_t entry = packs<T>(plan.pairs) ? sizeof(PackedEntries::Entry) : sizeof(WideEntries::Entry);
  const size_t sizes[] = {
      static_cast<size_t>(padded_count<T>(n) * d) * sizeof(T),
      (plan.buckets - 1 + kSplitterPad) * sizeof(T),
      plan.sample * sizeof(T),
      (cells_of<T>() + 2) * sizeof(uint32_t),
      plan.groups * plan.buckets * sizeof(uint64_t),
      plan.groups * plan.buckets * sizeof(uint64_t),
      (plan.buckets + 1) * sizeof(uint64_t),
      plan.buckets * sizeof(double),
      capacity * entry,
  };
  size_t offset = 0;
  void* parts[9];
  for (int i = 0; i < 9; ++i) {
    parts[i] = base == nullptr ? nullptr : base + offset;
    offset += align64(sizes[i]);
  }
  if (out != nullptr) {
    *out = {static_cast<T*>(parts[0]),        static_cast<T*>(parts[1]),        static_cast<T*>(parts[2]),
            static_cast<uint32_t*>(parts[3]), static_cast<uint64_t*>(parts[4]), static_cast<uint64_t*>(parts[5]),
            static_cast<uint64_t*>(parts[6]), static_cast<double*>(parts[7]),   parts[8]};
  }
  return offset + 64;  // slack for aligning the base pointer
}

// ---------------------------------------------------------------- key generation

// d_ij for the samples only (sample_keys): two sums of 8-lane vectors, added up as a tree,
// and the coordinates past whole vectors one by one. One chain of d dependent additions,
// or GCC's own vectorization of eight scalar sums (all shuffles), made the sample cost more
// than a pass at D = 256. Not the bits of the passes' keys: a sample only places the bins
// or splitters, and the keys are then compared with those themselves.
template <typename T>
T sampled_half_sq_distance(const T* a, const T* b, int64_t d) {
  constexpr int64_t kLanes = 8;
  typedef T V __attribute__((vector_size(kLanes * sizeof(T))));
  auto square_of_difference = [a, b](int64_t at) {
    V x, y;
    std::memcpy(&x, a + at, sizeof x);
    std::memcpy(&y, b + at, sizeof y);
    const V diff = x - y;
    return diff * diff;
  };
  V even = {}, odd = {};
  int64_t c = 0;
  for (; c + 2 * kLanes <= d; c += 2 * kLanes) {
    even += square_of_difference(c);
    odd += square_of_difference(c + kLanes);
  }
  if (c + kLanes <= d) {
    even += square_of_difference(c);
    c += kLanes;
  }
  T lanes[kLanes];
  const V both = even + odd;
  std::memcpy(lanes, &both, sizeof lanes);
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  T sum = lanes[0];
  for (; c < d; ++c) {
    const T diff = a[c] - b[c];
    sum += diff * diff;
  }
  return T(0.5) * sum;
}

// The keys of `size` pairs at the evenly spaced pair indices k_s = floor((2s + 1) n' / (2 size))
// into out[0, size). Each chunk of samples finds its first pair once, then steps: the index
// by a fixed quotient and remainder, the row by as many rows as it passes. A division of
// 128-bit integers and a square root per sample (pair_of) took longer than the key: at
// n = 64 the sample of every pair cost five histogram passes.
template <typename T>
void sample_keys(const T* z, int64_t n, int64_t d, uint64_t pairs, int64_t size, int threads, T* out) {
  const uint64_t rows = static_cast<uint64_t>(n), twice = 2 * static_cast<uint64_t>(size);
  const uint64_t step = 2 * pairs / twice, carry = 2 * pairs % twice;
  const int64_t chunks = std::min<int64_t>(size, 64);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t s0 = size * c / chunks, s1 = size * (c + 1) / chunks;
    const unsigned __int128 first = static_cast<unsigned __int128>(2 * s0 + 1) * pairs;
    uint64_t k = static_cast<uint64_t>(first / twice), rest = static_cast<uint64_t>(first % twice);
    uint64_t i = pair_row(rows, k);
    uint64_t row_end = pair_row_start(rows, i) + (rows - 1 - i);  // first pair past row i
    for (int64_t s = s0; s < s1; ++s) {
      while (k >= row_end) row_end += rows - 1 - ++i;
      const uint64_t j = k - (row_end - (rows - 1 - i)) + i + 1;
      out[s] = sampled_half_sq_distance(z + i * d, z + j * d, d);
      k += step;
      rest += carry;
      if (rest >= twice) {
        rest -= twice;
        ++k;
      }
    }
  }
}

// Calls run(i, j, keys, count) with d_ij, ..., d_i(j+count-1) for every row i in
// [i0, i0 + kRowBlock) and every run of consecutive partners j > i, from coordinate
// differences, kPanels vectors of j at a time against the transposed points.
template <typename T, typename Run>
void visit_block_runs(const T* z, const T* zt, int64_t n, int64_t d, int64_t i0, Run&& run) {
  using V = typename Simd<T>::type;
  constexpr int64_t W = Simd<T>::kLanes;
  const T* row[kRowBlock];
  for (int64_t r = 0; r < kRowBlock; ++r) row[r] = z + std::min(i0 + r, n - 1) * d;
  for (int64_t j0 = (i0 + 1) / W * W; j0 < n; j0 += kPanels * W) {
    V acc[kRowBlock][kPanels] = {};
    const T* panel = zt + j0 * d;  // panel j0 / W: its d vectors one after the other
    for (int64_t c = 0; c < d; ++c) {
      V col[kPanels];
      for (int64_t q = 0; q < kPanels; ++q) std::memcpy(&col[q], panel + (q * d + c) * W, sizeof col[q]);
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const T zi = row[r][c];
        for (int64_t q = 0; q < kPanels; ++q) {
          const V diff = zi - col[q];
          acc[r][q] += diff * diff;
        }
      }
    }
    T out[kRowBlock][kPanels * W];
    std::memcpy(out, acc, sizeof out);
    const int64_t width = std::min(kPanels * W, n - j0);
    for (int64_t r = 0; r < kRowBlock && i0 + r < n; ++r) {
      const int64_t i = i0 + r;
      const int64_t first = std::max<int64_t>(0, i + 1 - j0);
      if (first >= width) continue;
      T keys[kPanels * W];
      for (int64_t l = first; l < width; ++l) keys[l] = T(0.5) * out[r][l];
      run(i, j0 + first, keys + first, width - first);
    }
  }
}

// visit(i, j, d_ij) for every pair i < j with i in rows [i0, i0 + kRowBlock).
template <typename T, typename Visit>
void visit_block_pairs(const T* z, const T* zt, int64_t n, int64_t d, int64_t i0, Visit&& visit) {
  visit_block_runs(z, zt, n, d, i0, [&](int64_t i, int64_t j, const T* keys, int64_t count) {
    for (int64_t l = 0; l < count; ++l) visit(i, j + l, keys[l]);
  });
}

// The first row block of group g of G: the groups own consecutive runs of row blocks, cut
// where the pairs of the rows before reach g/G of all pairs (row i has n - 1 - i). So the
// groups follow one another in pair index, and each does about the same work.
inline int64_t group_first_block(uint64_t group, uint64_t groups, int64_t n) {
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  const uint64_t rows = static_cast<uint64_t>(n);
  const uint64_t target = static_cast<uint64_t>(static_cast<unsigned __int128>(pair_count(rows)) * group / groups);
  int64_t lo = 0, hi = blocks;  // the first block whose rows start at or beyond the target
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (pair_row_start(rows, static_cast<uint64_t>(std::min<int64_t>(mid * kRowBlock, n))) < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// fn(i0) for the row blocks of `group`, in increasing order: the group's pairs come in pair
// index order.
template <typename Fn>
void for_group_blocks(uint64_t group, uint64_t groups, int64_t n, Fn&& fn) {
  const int64_t first = group_first_block(group, groups, n), end = group_first_block(group + 1, groups, n);
  for (int64_t block = first; block < end; ++block) fn(block * kRowBlock);
}

// Bucket of a key = the number of splitters <= key. A branchy binary search over all
// splitters mispredicts at every step; the table narrows it to the few splitters that
// share the key's cell. Up to kSplitterPad of them are counted without a branch (a scan
// that stopped at the first larger one mispredicted on the keys of every cell that holds a
// splitter); a crowded cell takes a search.
// The table spans the cells of the splitters and one empty cell on each side: a key beyond
// them is clamped to an empty end cell, which gives it no splitter (or all of them) and the
// early return. Building it costs the cells the splitters span, not 2^19.
template <typename T>
struct BucketFinder {
  const T* splitters;   // sorted, then kSplitterPad more
  const uint32_t* lut;  // lut[c] = splitters in cells below first_cell + c
  uint64_t first_cell, last_cell;

  static uint64_t cell(T key) { return static_cast<uint64_t>(key_bits(key)) >> cell_shift<T>(); }

  uint64_t operator()(T key) const {
    const uint64_t c = std::min(std::max(cell(key), first_cell), last_cell) - first_cell;
    const uint32_t b = lut[c];
    const uint32_t end = lut[c + 1];
    if (end == b) return b;  // most cells hold no splitter: a branch that rarely mispredicts
    if (end - b > kSplitterPad)
      return static_cast<uint64_t>(std::upper_bound(splitters + b, splitters + end, key) - splitters);
    uint32_t below = 0;  // sorted, so the splitters <= key are the first `below` of the cell's
    for (uint32_t s = 0; s < kSplitterPad; ++s) below += static_cast<uint32_t>((b + s < end) & !(key < splitters[b + s]));
    return b + below;
  }
};

template <typename T>
BucketFinder<T> build_bucket_table(const T* splitters, uint64_t count, uint32_t* lut) {
  BucketFinder<T> find{splitters, lut, 0, 0};
  if (count > 0) {
    const uint64_t first = BucketFinder<T>::cell(splitters[0]);
    find.first_cell = first > 0 ? first - 1 : 0;
    find.last_cell = BucketFinder<T>::cell(splitters[count - 1]) + 1;
  }
  const uint64_t cells = find.last_cell - find.first_cell + 1;
  std::fill(lut, lut + cells + 1, uint32_t{0});
  for (uint64_t s = 0; s < count; ++s) ++lut[BucketFinder<T>::cell(splitters[s]) - find.first_cell + 1];
  for (uint64_t c = 0; c < cells; ++c) lut[c + 1] += lut[c];
  return find;
}

// ---------------------------------------------------------------- forward

template <typename T>
struct ForwardArgs {
  const T* z;
  int64_t n, d;
  RankQuantiles<T> quantiles;
  int p;
  double* value;
  uint64_t* pos_bits;  // p = 1: sgn(e) > 0
  uint64_t* neg_bits;  // p = 1: sgn(e) < 0
  T* residual;         // p = 2
  T* sorted;           // optional: d_(k) by rank (tests, diagnostics)
  uint64_t capacity;
  uint64_t bins;       // in-range bins of the selection histogram (p = 1)
  int64_t* stats;      // optional: SelectStats, for the bench and the tests
  InterruptPoll poll;
  int threads;
  int64_t share_rank = 0, share_world = 1;  // this rank's share of the pairs (ShareRows)
};

// The rows whose pairs (i, j > i) one rank of `world` owns: of 2 world near-equal runs of
// row blocks, runs `rank` and 2 world - 1 - rank. A run's pairs shrink linearly with its
// position, so the two add up to about n(n - 1) / (2 world) (the pair-sum losses' split,
// gaussreg/engines/pair_sum.py pair_shares, in whole row blocks).
struct ShareRows {
  int64_t start[2] = {0, 0}, stop[2] = {0, 0};
  bool all = true;

  bool contains(int64_t i) const { return all || (i >= start[0] && i < stop[0]) || (i >= start[1] && i < stop[1]); }
};

inline ShareRows share_rows(int64_t n, int64_t rank, int64_t world) {
  ShareRows s;
  if (world <= 1) return s;
  s.all = false;
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock, runs = 2 * world;
  const int64_t run[2] = {rank, runs - 1 - rank};
  for (int q = 0; q < 2; ++q) {
    s.start[q] = std::min(n, run[q] * blocks / runs * kRowBlock);
    s.stop[q] = std::min(n, (run[q] + 1) * blocks / runs * kRowBlock);
  }
  return s;
}

// The points in panels of W (one vector of partners): coordinate c of point j at
// zt[((j / W) * d + c) * W + j % W], zero past n. A panel's d vectors are adjacent, so the
// key loop reads them in one stream; a (d, n) transpose put them n * sizeof(T) apart, a
// multiple of 4 KiB that sent every coordinate to the same L1 set (D = 512 at n = 4096:
// each load missed L1).
template <typename T>
void transpose_points(const T* z, int64_t n, int64_t d, T* zt, int threads) {
  constexpr int64_t W = Simd<T>::kLanes;
  const int64_t panels = padded_count<T>(n) / W;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t l = 0; l < W; ++l) {
        const int64_t j = p * W + l;
        zt[(p * d + c) * W + l] = j < n ? z[j * d + c] : T(0);
      }
}

// fn(group, v) for every row group, a few groups per parallel region so that a pending
// interrupt is noticed between regions (each a fraction of a pass). Group g belongs to the
// virtual thread v = g mod V (V = a.threads) whatever team OpenMP gives: per-v state
// (histograms, cursors) is touched by one thread at a time, and each v sees the same
// groups in the same order in every pass.
template <typename T, typename Fn>
void for_group_slices(const ForwardArgs<T>& a, uint64_t groups, Fn&& fn) {
  const int64_t virtual_threads = std::max(a.threads, 1);
  const int64_t slice = 2 * virtual_threads;  // a multiple of V: g0 + v is v's first group
  for (int64_t g0 = 0; g0 < static_cast<int64_t>(groups); g0 += slice) {
    a.poll();
    const int64_t g1 = std::min<int64_t>(static_cast<int64_t>(groups), g0 + slice);
#pragma omp parallel for num_threads(a.threads) schedule(static, 1)
    for (int64_t v = 0; v < virtual_threads; ++v)
      for (int64_t g = g0 + v; g < g1; g += virtual_threads) fn(static_cast<uint64_t>(g), static_cast<int>(v));
  }
}

template <typename T>
BucketFinder<T> choose_splitters(const ForwardArgs<T>& a, const Plan& plan, const Workspace<T>& ws) {
  sample_keys(a.z, a.n, a.d, plan.pairs, static_cast<int64_t>(plan.sample), a.threads, ws.sample);
  std::sort(ws.sample, ws.sample + plan.sample);
  for (uint64_t b = 1; b < plan.buckets; ++b) ws.splitters[b - 1] = ws.sample[b * plan.sample / plan.buckets];
  std::fill(ws.splitters + plan.buckets - 1, ws.splitters + plan.buckets - 1 + kSplitterPad,
            std::numeric_limits<T>::infinity());
  return build_bucket_table(ws.splitters, plan.buckets - 1, ws.lut);
}

template <typename T>
void count_buckets(const ForwardArgs<T>& a, const Plan& plan, const Workspace<T>& ws, const BucketFinder<T>& bucket_of) {
  for_group_slices(a, plan.groups, [&](uint64_t g, int) {
    uint64_t* hist = ws.hist + g * plan.buckets;
    std::fill(hist, hist + plan.buckets, uint64_t{0});
    for_group_blocks(g, plan.groups, a.n, [&](int64_t i0) {
      visit_block_runs(a.z, ws.zt, a.n, a.d, i0, [&](int64_t, int64_t, const T* keys, int64_t run) {
        // A local finder: the counts' stores could alias the referenced one's fields, which
        // were then reloaded for every key.
        const BucketFinder<T> find = bucket_of;
        uint64_t* const counts = hist;
        for (int64_t l = 0; l < run; ++l) ++counts[find(keys[l])];
      });
    });
  });
  ws.base[0] = 0;
  for (uint64_t b = 0; b < plan.buckets; ++b) {
    uint64_t total = 0;
    for (uint64_t g = 0; g < plan.groups; ++g) total += ws.hist[g * plan.buckets + b];
    ws.base[b + 1] = ws.base[b] + total;
  }
}

// Buckets [b0, b1): regenerate every key, keep those in range, at per-group cursors.
template <typename T, typename E>
void collect_buckets(const ForwardArgs<T>& a, const Plan& plan, const Workspace<T>& ws, const BucketFinder<T>& bucket_of,
                     uint64_t b0, uint64_t b1) {
  auto* entries = static_cast<typename E::Entry*>(ws.entries);
  for (uint64_t b = b0; b < b1; ++b) {
    uint64_t at = ws.base[b] - ws.base[b0];
    for (uint64_t g = 0; g < plan.groups; ++g) {
      ws.cursor[g * plan.buckets + b] = at;
      at += ws.hist[g * plan.buckets + b];
    }
  }
  const uint64_t n = static_cast<uint64_t>(a.n);
  for_group_slices(a, plan.groups, [&](uint64_t g, int) {
    uint64_t* cursor = ws.cursor + g * plan.buckets;
    for_group_blocks(g, plan.groups, a.n, [&](int64_t i0) {
      visit_block_runs(a.z, ws.zt, a.n, a.d, i0, [&](int64_t i, int64_t j, const T* keys, int64_t run) {
        // Locals per run: the entries' stores could alias what the lambda references, and GCC
        // reloaded the bounds and pointers for every key.
        const BucketFinder<T> find = bucket_of;
        const uint64_t first = b0, last = b1;
        typename E::Entry* const out = entries;
        uint64_t* const at = cursor;
        const uint64_t k = pair_index(n, i, j);
        for (int64_t l = 0; l < run; ++l) {
          const uint64_t b = find(keys[l]);
          if (b >= first && b < last) out[at[b]++] = E::make(key_bits(keys[l]), k + l);
        }
      });
    });
  });
}

// Equal keys in pair-index order, whatever order they were collected in: the tie rule of the
// full sort, the selection and CUDA. An insertion pass over entries sorted by key: an entry
// that orders before the one ahead of it (the same key, a smaller index) moves back. The
// full sort collects nearly in pair-index order (for_group_blocks; only a row block's rows
// interleave), so few entries move and the one comparison a step (for packed entries one
// integer compare) is well predicted. Float32 keys tie often at large n: 63% of them at
// n = 4096, D = 64, in runs of up to 12.
template <typename E>
void order_ties_by_index(typename E::Entry* first, uint64_t count) {
  for (uint64_t pos = 1; pos < count; ++pos) {
    if (!E::less(first[pos], first[pos - 1])) continue;
    const typename E::Entry entry = first[pos];
    uint64_t at = pos;
    do {
      first[at] = first[at - 1];
      --at;
    } while (at > 0 && E::less(entry, first[at - 1]));
    first[at] = entry;
  }
}

// Ranks base + 1, ..., base + count of one sorted run of entries: writes each pair's sign bit
// (p = 1) or residual (p = 2) and the sorted keys if asked for; returns sum |e|^p in rank
// order. kSharedWords: other threads set bits of the same words (buckets interleave in pair
// index), so bits are set atomically.
template <bool kSharedWords, typename T, typename E>
double rank_sorted_run(const ForwardArgs<T>& a, const typename E::Entry* first, uint64_t count, uint64_t base) {
  double sum = 0.0;
  QuantileWalk walk;
  for (uint64_t pos = 0; pos < count; ++pos) {
    const T key = key_value<T>(E::key(first[pos]));
    if (a.sorted != nullptr) a.sorted[base + pos] = key;
    const T e = key - a.quantiles(base + pos, &walk);
    sum += abs_power(e, a.p);
    const uint64_t k = E::index(first[pos]);
    if (a.p == 2) {
      // Each residual lands on a line of its own: ask for the line 16 entries ahead (the
      // rank loop's share of the p = 2 forward at n = 4096 fell by 15-20%).
      if (pos + 16 < count) __builtin_prefetch(a.residual + E::index(first[pos + 16]), 1);
      a.residual[k] = e;
    } else if (e != T(0)) {
      uint64_t* const word = (e > T(0) ? a.pos_bits : a.neg_bits) + (k >> 6);
      const uint64_t bit = uint64_t{1} << (k & 63);
      if (kSharedWords) {
        __atomic_fetch_or(word, bit, __ATOMIC_RELAXED);
      } else {
        *word |= bit;
      }
    }
  }
  return sum;
}

template <typename T, typename E>
void rank_buckets(const ForwardArgs<T>& a, const Plan& plan, const Workspace<T>& ws, uint64_t b0, uint64_t b1) {
  auto* entries = static_cast<typename E::Entry*>(ws.entries);
  uint64_t largest = 0;
  for (uint64_t b = b0; b < b1; ++b) largest = std::max(largest, ws.base[b + 1] - ws.base[b]);
#pragma omp parallel num_threads(a.threads)
  {
  std::vector<typename E::Entry> scratch(largest);
#pragma omp for schedule(dynamic, 1)
  for (int64_t b = static_cast<int64_t>(b0); b < static_cast<int64_t>(b1); ++b) {
    auto* first = entries + (ws.base[b] - ws.base[b0]);
    const uint64_t count = ws.base[b + 1] - ws.base[b];
    sort_bucket_by_key<E>(first, count, scratch.data());
    order_ties_by_index<E>(first, count);
    ws.partial[b] = rank_sorted_run<true, T, E>(a, first, count, ws.base[b]);
  }
  }
}

template <typename T, typename E>
int64_t sort_all_passes(const ForwardArgs<T>& a, const Plan& plan, const Workspace<T>& ws, const BucketFinder<T>& find) {
  int64_t passes = 1;  // the histogram's
  uint64_t b0 = 0;
  while (b0 < plan.buckets) {
    uint64_t b1 = b0;
    while (b1 < plan.buckets && ws.base[b1 + 1] - ws.base[b0] <= a.capacity) ++b1;
    if (b1 == b0) refuse_tied_bin(ws.base[b0 + 1] - ws.base[b0], a.capacity);
    a.poll();
    collect_buckets<T, E>(a, plan, ws, find, b0, b1);
    rank_buckets<T, E>(a, plan, ws, b0, b1);
    ++passes;
    b0 = b1;
  }
  return passes;
}

// ---------------------------------------------------------------- selection (p = 1)
//
// For p = 1 the forward needs only sgn(d_(k) - c'_k) per pair and the sum of |d_(k) - c'_k|,
// so most pairs need no rank of their own (SPEC 1; csrc/common/cdf_select.h):
//   1. a strided sample of pairs sets the key range of the bins;
//   2. histogram pass: every d_ij is counted in its bin, with the exact integer sum of its
//      significands, in one histogram per thread (merged by integer addition);
//   3. the prefix counts give each bin its ranks; a bin whose key range lies wholly above
//      (or below) the targets of its ranks is decided: one sign for all its pairs, and its
//      share of the value is +-(sum of its keys - sum of its targets), with no sort;
//   4. classification pass: d_ij regenerated, the pairs of decided bins get their sign bit,
//      the pairs of the other ("mixed") bins are collected, and each mixed bin is sorted on
//      its own and ranked as in the full sort. Mixed pairs beyond `capacity` entries are
//      collected by further passes. Each virtual thread writes at its own offsets within a
//      bin (known from its histogram), so collecting needs no atomics; ties are then ranked
//      by pair index.
// Near the target the mixed bins sit where the empirical and target CDFs cross; far from
// it none are mixed. Every sum is taken in a fixed order: results do not depend on the
// thread count or the sort budget.

template <typename T>
struct BinCount {
  uint64_t count;
  typename SignificandSum<T>::type sum;
};

// Per-slot arrays hold the bins (slots 0 .. bins + 1) and then the leaves of refined bins.
template <typename T>
struct SelectWorkspace {
  T* zt;                // points in panels (transpose_points)
  T* sample;            // select_sample_size keys
  BinCount<T>* hist;    // V x slots, per virtual thread (v = 0's becomes the merged one)
  uint64_t* offset;     // V x slots: keys of a slot that virtual threads before v found
  uint64_t* first;      // slots + 1: the keys before each slot's in key order (its first rank)
  uint8_t* cls;         // slots: BinClass
  uint64_t* start;      // slots: a mixed slot's first entry in its pass
  uint64_t* cursor;     // V x slots: v's next entry in a mixed slot (no atomics, no contention)
  double* value;        // slots: each slot's share of sum_k |d_(k) - c'_k|
  uint32_t* refined;    // bins: a refined bin's place among the refined (KeyLeaves)
  void* entries;        // capacity
  uint64_t slots;       // stride of the V x slots arrays
};

uint64_t select_bins_of(uint64_t bins, uint64_t pairs) { return (bins == 0 ? default_select_bins(pairs) : bins) + 2; }

// The selection and the key bins keep one histogram row per virtual thread. On a machine of
// many cores those rows would outgrow everything else the call holds (64 threads x 2^18
// slots is about 1 GiB), so a call uses at most as many virtual threads as keep the rows
// within kHistogramRowsBudget or the 2-bit signs' size, whichever is larger, and no more than
// the row groups (a row beyond them would count nothing). The results do not depend on it:
// the rows merge as integers and ties are ordered by pair index.
constexpr size_t kHistogramRowsBudget = size_t{64} << 20;
int histogram_threads(int64_t n, int threads, size_t row_bytes) {
  const uint64_t pairs = pair_count(static_cast<uint64_t>(n));
  const size_t budget = std::max<size_t>(kHistogramRowsBudget, static_cast<size_t>(pairs / 4));
  const uint64_t fit = std::max<uint64_t>(1, budget / std::max<size_t>(row_bytes, 1));
  const uint64_t groups = make_plan(n, 0, threads).groups;
  return static_cast<int>(std::min<uint64_t>({static_cast<uint64_t>(std::max(threads, 1)), fit, groups}));
}

// The virtual threads of the selection's passes (see histogram_threads): a row holds a
// BinCount and two offsets per slot.
template <typename T>
int selection_threads(int64_t n, uint64_t bins, int threads) {
  const uint64_t pairs = pair_count(static_cast<uint64_t>(n));
  const uint64_t count = select_bins_of(bins, pairs);
  const uint64_t slots = count + leaf_slots_of(count);
  return histogram_threads(n, threads, slots * (sizeof(BinCount<T>) + 2 * sizeof(uint64_t)));
}

template <typename T>
size_t select_layout(int64_t n, int64_t d, uint64_t capacity, uint64_t bins, int threads, char* base,
                     SelectWorkspace<T>* out) {
  const uint64_t pairs = pair_count(static_cast<uint64_t>(n));
  const uint64_t count = select_bins_of(bins, pairs);
  const uint64_t slots = count + leaf_slots_of(count);
  const size_t entry = packs<T>(pairs) ? sizeof(PackedEntries::Entry) : sizeof(WideEntries::Entry);
  const size_t virtual_threads = static_cast<size_t>(selection_threads<T>(n, bins, threads));
  const size_t sizes[] = {
      static_cast<size_t>(padded_count<T>(n) * d) * sizeof(T),
      select_sample_size(pairs) * sizeof(T),
      virtual_threads * slots * sizeof(BinCount<T>),
      virtual_threads * slots * sizeof(uint64_t),
      (slots + 1) * sizeof(uint64_t),
      slots * sizeof(uint8_t),
      slots * sizeof(uint64_t),
      virtual_threads * slots * sizeof(uint64_t),
      slots * sizeof(double),
      count * sizeof(uint32_t),
      capacity * entry,
  };
  constexpr int kParts = sizeof sizes / sizeof sizes[0];
  size_t offset = 0;
  void* parts[kParts];
  for (int i = 0; i < kParts; ++i) {
    parts[i] = base == nullptr ? nullptr : base + offset;
    offset += align64(sizes[i]);
  }
  if (out != nullptr) {
    *out = {static_cast<T*>(parts[0]),        static_cast<T*>(parts[1]),        static_cast<BinCount<T>*>(parts[2]),
            static_cast<uint64_t*>(parts[3]), static_cast<uint64_t*>(parts[4]), static_cast<uint8_t*>(parts[5]),
            static_cast<uint64_t*>(parts[6]), static_cast<uint64_t*>(parts[7]), static_cast<double*>(parts[8]),
            static_cast<uint32_t*>(parts[9]), parts[10],                      slots};
  }
  return offset + 64;
}

// Bins from the smallest and largest positive key of a strided sample of pairs.
template <typename T>
KeyBins<T> sample_key_bins(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t pairs) {
  using U = typename KeyBins<T>::U;
  const int64_t size = static_cast<int64_t>(select_sample_size(pairs));
  sample_keys(a.z, a.n, a.d, pairs, size, a.threads, ws.sample);
  U lo = ~U{0}, hi = 0;
  for (int64_t s = 0; s < size; ++s) {
    const U bits = key_bits(ws.sample[s]);
    if (bits == 0) continue;
    lo = std::min(lo, bits);
    hi = std::max(hi, bits);
  }
  if (hi == 0) lo = hi = 1;  // every sampled key is 0: the in-range bins start at the smallest subnormal
  return choose_key_bins<T>(lo, hi, a.bins == 0 ? default_select_bins(pairs) : a.bins);
}

// One pass over every pair: count(v's row of `stride` records, key bits) for each key, into
// virtual thread v's own histogram row, whose slots [lo, hi) are first set to `empty`.
template <typename T, typename Record, typename Count>
void fill_histograms(const ForwardArgs<T>& a, const Plan& plan, const T* zt, Record* hist, uint64_t stride,
                     uint64_t lo, uint64_t hi, Record empty, Count&& count) {
  // Each row cleared by a thread of its own: with many virtual threads the rows are tens of MiB.
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t v = 0; v < std::max(a.threads, 1); ++v)
    std::fill(hist + static_cast<size_t>(v) * stride + lo, hist + static_cast<size_t>(v) * stride + hi, empty);
  const ShareRows share = share_rows(a.n, a.share_rank, a.share_world);
  for_group_slices(a, plan.groups, [&](uint64_t g, int v) {
    Record* mine = hist + static_cast<size_t>(v) * stride;
    for_group_blocks(g, plan.groups, a.n, [&](int64_t i0) {
      if (!share.contains(i0)) return;  // another rank's rows (share runs are whole row blocks)
      visit_block_runs(a.z, zt, a.n, a.d, i0, [&](int64_t, int64_t, const T* keys, int64_t run) {
        // A local copy per run: the counts' stores could alias `count`, and GCC reloaded
        // what it captures (the bins) for every key.
        const Count local = count;
        for (int64_t l = 0; l < run; ++l) local(mine, key_bits(keys[l]));
      });
    });
  });
}

template <typename T>
void add_key(BinCount<T>& h, typename KeyBins<T>::U bits) {
  ++h.count;
  h.sum += KeyBins<T>::significand(bits);
}

// Merges slots [lo, hi) into v = 0's histogram (integer sums: any order gives the same
// bits), keeping each v's offset within every slot for the collection passes.
template <typename T>
void merge_histograms(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t lo, uint64_t hi) {
  const int64_t virtual_threads = std::max(a.threads, 1);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t sb = static_cast<int64_t>(lo); sb < static_cast<int64_t>(hi); ++sb) {
    const uint64_t b = static_cast<uint64_t>(sb);
    uint64_t running = 0;
    typename SignificandSum<T>::type sum = 0;
    for (int64_t v = 0; v < virtual_threads; ++v) {
      const BinCount<T>& h = ws.hist[static_cast<size_t>(v) * ws.slots + b];
      ws.offset[static_cast<size_t>(v) * ws.slots + b] = running;
      running += h.count;
      sum += h.sum;
    }
    ws.hist[b] = {running, sum};
  }
}

template <typename T>
void count_bins(const ForwardArgs<T>& a, const Plan& plan, const SelectWorkspace<T>& ws, const KeyBins<T>& bins) {
  const uint64_t count = bins.count();
  fill_histograms(a, plan, ws.zt, ws.hist, ws.slots, 0, count, BinCount<T>{0, 0},
                  [bins](BinCount<T>* mine, typename KeyBins<T>::U bits) {
                    add_key<T>(mine[bins.bin_of(bits)], bits);
                  });
  merge_histograms(a, ws, 0, count);
  ws.first[0] = 0;
  for (uint64_t b = 0; b < count; ++b) ws.first[b + 1] = ws.first[b] + ws.hist[b].count;
}

// Slot b's class from the key range [low, high] it may hold and, for a decided one, its
// share of the value (step 3). A slot of non-finite keys is mixed.
template <typename T>
void classify_slot(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t b, bool finite, T low, T high,
                   double unit) {
  const uint64_t m = ws.hist[b].count, first = ws.first[b];
  ws.value[b] = 0.0;
  if (m == 0) {
    ws.cls[b] = kBinEmpty;
    return;
  }
  BinClass cls = kBinMixed;
  if (finite) {
    int64_t segment = -1;
    const T first_target = a.quantiles(first, &segment);
    const T last_target = a.quantiles(first + m - 1, &segment);
    cls = classify_bin(low, high, first_target, last_target);
  }
  ws.cls[b] = cls;
  if (cls == kBinMixed) return;
  const double keys = integer_to_double(ws.hist[b].sum) * unit;
  const double targets = a.quantiles.range_sum(first, m);
  ws.value[b] = cls == kBinAbove ? keys - targets : targets - keys;
}

template <typename T>
void classify_bins(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, const KeyBins<T>& bins) {
  const int64_t count = static_cast<int64_t>(bins.count());
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 64)
  for (int64_t sb = 0; sb < count; ++sb) {
    const uint64_t b = static_cast<uint64_t>(sb);
    const bool finite = bins.finite(b);
    classify_slot(a, ws, b, finite, finite ? bins.low(b) : T(0), finite ? bins.high(b) : T(0),
                  finite ? bins.unit(b) : 0.0);
  }
}

// ---- second level: refining the mixed bins
//
// Near its target a large sample's empirical CDF stays within a bin of the target's over
// long stretches, so many pairs fall in mixed bins (n = 131072: 5.7% with 2^18 bins, 8 GiB
// of sort entries). One more pass over the pairs counts the keys of the mixed bins again in
// leaves (KeyLeaves), and only the mixed leaves are sorted.

// When refining pays, and which bins it cuts, is choose_refinement's decision
// (common/cdf_select.h, with the costs it rests on), the same on every rank of a split with
// the sort budget the ranks agreed on (the least of theirs). At n = 8192, D = 64, with 27%
// of the pairs mixed, the refined forward + backward took 0.81 s against 0.84 s (0.04% left
// to sort, 329 against 396 MiB peak).

// Marks the bins choose_refinement picks kBinRefined, each with its place among them (bin
// order); returns the leaves (none when refining would not pay or no bin can be cut).
template <typename T>
KeyLeaves<T> plan_leaves(const SelectWorkspace<T>& ws, const KeyBins<T>& bins, uint64_t pairs, uint64_t capacity) {
  const uint64_t count = bins.count();
  std::vector<RefineCandidate> candidates;
  uint64_t mixed = 0;
  for (uint64_t b = 0; b < count; ++b) {
    if (ws.cls[b] != kBinMixed) continue;
    mixed += ws.hist[b].count;
    if (bins.finite(b) && ws.hist[b].count > 1) candidates.push_back({ws.hist[b].count, b});
  }
  const Refinement refinement =
      choose_refinement(std::move(candidates), mixed, bins.shift, ws.slots - count, pairs, capacity);
  KeyLeaves<T> leaves;
  if (refinement.bins.empty()) return leaves;
  leaves.bits = refinement.bits;
  leaves.first = count;
  for (const uint64_t b : refinement.bins) {
    ws.refined[b] = static_cast<uint32_t>(leaves.used++);
    ws.cls[b] = kBinRefined;
  }
  return leaves;
}

// One pass over (this rank's) pairs: the keys of refined bins counted in their leaves.
template <typename T>
void count_leaves(const ForwardArgs<T>& a, const Plan& plan, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                  const KeyLeaves<T>& leaves) {
  const uint64_t lo = leaves.first, hi = lo + leaves.slots();
  fill_histograms(a, plan, ws.zt, ws.hist, ws.slots, lo, hi, BinCount<T>{0, 0},
                  [bins, leaves, cls = ws.cls, refined = ws.refined](BinCount<T>* mine, typename KeyBins<T>::U bits) {
                    const uint64_t b = bins.bin_of(bits);
                    if (cls[b] == kBinRefined) add_key<T>(mine[leaves.slot_of(bins, refined[b], bits)], bits);
                  });
  merge_histograms(a, ws, lo, hi);
}

// The leaves' first ranks (their bin's first rank plus the leaves before them) and classes.
template <typename T>
void classify_leaves(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                     const KeyLeaves<T>& leaves) {
  const uint64_t count = bins.count();
  for (uint64_t b = 0; b < count; ++b) {
    if (ws.cls[b] != kBinRefined) continue;
    uint64_t rank = ws.first[b];
    const uint64_t slot0 = leaves.first_slot(static_cast<uint64_t>(ws.refined[b]));
    for (uint64_t leaf = 0; leaf < leaves.per_bin(); ++leaf) {
      ws.first[slot0 + leaf] = rank;
      rank += ws.hist[slot0 + leaf].count;
    }
    if (rank != ws.first[b] + ws.hist[b].count)
      throw std::invalid_argument("cdf_attraction: a refined bin's leaves do not hold its keys");
  }
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 64)
  for (int64_t sb = 0; sb < static_cast<int64_t>(count); ++sb) {
    const uint64_t b = static_cast<uint64_t>(sb);
    if (ws.cls[b] != kBinRefined) continue;
    const uint64_t slot0 = leaves.first_slot(static_cast<uint64_t>(ws.refined[b]));
    for (uint64_t leaf = 0; leaf < leaves.per_bin(); ++leaf)
      classify_slot(a, ws, slot0 + leaf, true, leaves.low(bins, b, leaf), leaves.high(bins, b, leaf), bins.unit(b));
  }
}

// Whether the engine may rank every pair by the full sort instead (its default bins, and a
// sort budget that holds every pair: with less, the full sort's buckets of tied keys could
// overflow a pass where the selection's slots do not).
template <typename T>
bool may_sort_all(const ForwardArgs<T>& a, const Plan& plan) {
  return a.bins == 0 && a.capacity >= plan.pairs;
}

// The second level in one process, as planned: count in one more pass, classify.
template <typename T>
void refine_mixed_bins(const ForwardArgs<T>& a, const Plan& plan, const SelectWorkspace<T>& ws,
                       const KeyBins<T>& bins, const KeyLeaves<T>& leaves) {
  if (leaves.used == 0) return;
  count_leaves(a, plan, ws, bins, leaves);
  classify_leaves(a, ws, bins, leaves);
}

// Mixed slots from `b0` (below `count`) whose pairs fit `capacity` entries together: marks
// them kBinMixed (the rest kBinLater), sets their start and cursor, returns the end of the run.
template <typename T>
uint64_t plan_mixed_pass(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t count, uint64_t b0) {
  uint64_t used = 0, b = b0;
  for (; b < count; ++b) {
    if (ws.cls[b] != kBinMixed && ws.cls[b] != kBinLater) continue;
    const uint64_t m = ws.hist[b].count;
    if (used + m > a.capacity) break;
    ws.cls[b] = kBinMixed;
    ws.start[b] = used;
    for (int64_t v = 0; v < std::max(a.threads, 1); ++v)
      ws.cursor[static_cast<size_t>(v) * ws.slots + b] = used + ws.offset[static_cast<size_t>(v) * ws.slots + b];
    used += m;
  }
  if (b < count && used == 0) refuse_tied_bin(ws.hist[b].count, a.capacity);
  for (uint64_t rest = b; rest < count; ++rest)
    if (ws.cls[rest] == kBinMixed) ws.cls[rest] = kBinLater;
  return b;
}

// Sign bits of one row's run of consecutive pair indices, flushed a word at a time (rows
// handled by other threads may share the word at either end).
struct RowSigns {
  uint64_t word = ~uint64_t{0}, pos = 0, neg = 0;

  void flush(uint64_t* pos_bits, uint64_t* neg_bits) {
    if (pos) __atomic_fetch_or(pos_bits + word, pos, __ATOMIC_RELAXED);
    if (neg) __atomic_fetch_or(neg_bits + word, neg, __ATOMIC_RELAXED);
    pos = neg = 0;
  }
  // The signs of `count` (<= 32) consecutive pair indices from k: bit l of above/below.
  void set_run(uint64_t k, uint64_t above, uint64_t below, int64_t count, uint64_t* pos_bits, uint64_t* neg_bits) {
    if ((k >> 6) != word) {
      flush(pos_bits, neg_bits);
      word = k >> 6;
    }
    const int offset = static_cast<int>(k & 63);
    pos |= above << offset;
    neg |= below << offset;
    if (offset + count > 64) {  // the run spills into the next word
      flush(pos_bits, neg_bits);
      ++word;
      pos = above >> (64 - offset);
      neg = below >> (64 - offset);
    }
  }
};

// One pass over every pair: decided slots' signs (first pass only), the current mixed slots'
// entries.
template <typename T, typename E>
void classify_pairs(const ForwardArgs<T>& a, const Plan& plan, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                    const KeyLeaves<T>& leaves, bool write_signs) {
  auto* entries = static_cast<typename E::Entry*>(ws.entries);
  const uint64_t n = static_cast<uint64_t>(a.n);
  const ShareRows share = share_rows(a.n, a.share_rank, a.share_world);
  for_group_slices(a, plan.groups, [&](uint64_t g, int v) {
    uint64_t* cursor = ws.cursor + static_cast<size_t>(v) * ws.slots;
    for_group_blocks(g, plan.groups, a.n, [&](int64_t i0) {
      if (!share.contains(i0)) return;
      RowSigns rows[kRowBlock];
      visit_block_runs(a.z, ws.zt, a.n, a.d, i0, [&](int64_t i, int64_t j, const T* keys, int64_t count) {
        // Locals per run: the entries' stores could alias what the lambda references, and GCC
        // reloaded the bins and pointers for every key.
        const KeyBins<T> kb = bins;
        const KeyLeaves<T> kl = leaves;
        const uint8_t* const cls_of = ws.cls;
        const uint32_t* const refined = ws.refined;
        typename E::Entry* const out = entries;
        uint64_t* const at = cursor;
        const uint64_t k = pair_index(n, i, j);
        uint64_t above = 0, below = 0;  // branch-free: neighbouring keys fall above or below at random
        for (int64_t l = 0; l < count; ++l) {
          const auto bits = key_bits(keys[l]);
          uint64_t b = kb.bin_of(bits);
          uint8_t cls = cls_of[b];
          if (cls == kBinRefined) {
            b = kl.slot_of(kb, refined[b], bits);
            cls = cls_of[b];
          }
          above |= static_cast<uint64_t>(cls == kBinAbove) << l;
          below |= static_cast<uint64_t>(cls == kBinBelow) << l;
          if (cls == kBinMixed) out[at[b]++] = E::make(bits, k + l);
        }
        if (write_signs) rows[i - i0].set_run(k, above, below, count, a.pos_bits, a.neg_bits);
      });
      for (auto& row : rows) row.flush(a.pos_bits, a.neg_bits);
    });
  });
}

// Sorts each current mixed bin and ranks it as the full sort does (value share, sign bits).
template <typename T, typename E>
void rank_mixed_bins(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t b0, uint64_t b1) {
  auto* entries = static_cast<typename E::Entry*>(ws.entries);
  const ShareRows share = share_rows(a.n, a.share_rank, a.share_world);
  uint64_t largest = 0;
  for (uint64_t b = b0; b < b1; ++b)
    if (ws.cls[b] == kBinMixed) largest = std::max(largest, ws.hist[b].count);
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<typename E::Entry> scratch(largest);
#pragma omp for schedule(dynamic, 1)
    for (int64_t sb = static_cast<int64_t>(b0); sb < static_cast<int64_t>(b1); ++sb) {
      const uint64_t b = static_cast<uint64_t>(sb);
      if (ws.cls[b] != kBinMixed) continue;
      auto* first = entries + ws.start[b];
      const uint64_t count = ws.hist[b].count;
      sort_bucket_by_key<E>(first, count, scratch.data());
      order_ties_by_index<E>(first, count);
      double sum = 0.0;
      QuantileWalk walk;
      for (uint64_t pos = 0; pos < count; ++pos) {
        const T e = key_value<T>(E::key(first[pos])) - a.quantiles(ws.first[b] + pos, &walk);
        sum += abs_power(e, 1);
        const uint64_t k = E::index(first[pos]);
        const bool mine =
            share.all || share.contains(static_cast<int64_t>(pair_of(static_cast<uint64_t>(a.n), k).i));
        if (e != T(0) && mine)
          __atomic_fetch_or((e > T(0) ? a.pos_bits : a.neg_bits) + (k >> 6), uint64_t{1} << (k & 63),
                            __ATOMIC_RELAXED);
      }
      ws.value[b] = sum;
    }
  }
}

// What a selection did: ranked every pair (sort_all false), or gave up after `passes`
// passes over the pairs and `refined` bins cut (sort_all_instead), having written nothing.
struct SelectOutcome {
  bool sort_all;
  int64_t passes, refined;
};

template <typename T, typename E>
SelectOutcome select_forward(const ForwardArgs<T>& a, const Plan& plan, const SelectWorkspace<T>& ws) {
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  const KeyBins<T> bins = sample_key_bins(a, ws, plan.pairs);
  count_bins(a, plan, ws, bins);
  a.poll();
  classify_bins(a, ws, bins);
  const KeyLeaves<T> leaves = plan_leaves(ws, bins, plan.pairs, a.capacity);
  if (may_sort_all(a, plan) && sort_all_rather_than_refine(leaves.slots(), plan.pairs)) return {true, 1, 0};
  refine_mixed_bins(a, plan, ws, bins, leaves);
  const uint64_t count = bins.count() + leaves.slots();  // slots in use: bins, then leaves

  int64_t passes = leaves.used > 0 ? 2 : 1, sorted_pairs = 0, mixed_slots = 0;
  for (uint64_t b = 0; b < count; ++b) {
    if (ws.cls[b] != kBinMixed) continue;
    ++mixed_slots;
    sorted_pairs += static_cast<int64_t>(ws.hist[b].count);
  }
  if (may_sort_all(a, plan) && sort_all_instead(static_cast<uint64_t>(sorted_pairs), plan.pairs))
    return {true, passes, static_cast<int64_t>(leaves.used)};
  uint64_t b0 = 0;
  bool first_pass = true;
  while (first_pass || b0 < count) {
    const uint64_t b1 = plan_mixed_pass(a, ws, count, b0);
    classify_pairs<T, E>(a, plan, ws, bins, leaves, first_pass);
    ++passes;
    rank_mixed_bins<T, E>(a, ws, b0, b1);
    for (uint64_t b = b0; b < b1; ++b)
      if (ws.cls[b] == kBinMixed) ws.cls[b] = kBinEmpty;  // done: later passes skip it
    first_pass = false;
    b0 = b1;
    while (b0 < count && ws.cls[b0] != kBinLater) ++b0;
  }
  double total = 0.0;  // slot order: the same sum for any thread count
  for (uint64_t b = 0; b < count; ++b) total += ws.value[b];
  *a.value = total;
  if (a.stats != nullptr) {
    a.stats[kStatSortedPairs] = sorted_pairs;
    a.stats[kStatPasses] = passes;
    a.stats[kStatBins] = static_cast<int64_t>(bins.count());
    a.stats[kStatMixedBins] = mixed_slots;  // bins and leaves
    a.stats[kStatRefinedBins] = static_cast<int64_t>(leaves.used);
  }
  return {false, passes, static_cast<int64_t>(leaves.used)};
}

// ---------------------------------------------------------------- shares across ranks (p = 1)
//
// The selection with the pairs split over the ranks of a process group (SPEC 1). Every
// rank holds all n points and calls these in order on one workspace; the caller
// (gaussreg/engines/cdf_attraction.py, sharded_cdf_pairs) runs the collectives between:
//   1. share_count: this rank's pairs (ShareRows) counted in the bins, which come from a
//      sample of all pairs and so are the same on every rank; the caller all-reduces the
//      counts and the significand sums (as 32-bit limbs, which add without overflow);
//   2. share_classify: the global histogram classifies every bin as one process would;
//      returns this rank's mixed pairs and all ranks' together, or, when the mixed pairs
//      are many, the leaves they are cut into (the second level, decided alike on every
//      rank from the global histogram): then
//      2b. share_count_leaves counts this rank's pairs of refined bins in the leaves, the
//          caller all-reduces them as in step 1, and
//      2c. share_classify_leaves classifies the leaves and returns the mixed pairs;
//   3. share_collect: this rank's pairs once more: decided ones get their sign bits, mixed
//      ones go out as (key bits, pair index); the caller all-gathers every rank's;
//   4. share_rank: each mixed entry placed in its bin, every mixed bin sorted and ranked as
//      in one process (ties by pair index); sign bits of this rank's pairs only, and the
//      value, the same on every rank.
// The backward (cdf_pairs_backward given rank and world) then adds this rank's pairs'
// terms to every point's gradient; the sum over the ranks is the gradient of one process.

constexpr int kSumLimbs = 4;

template <typename T>
void write_limbs(typename SignificandSum<T>::type sum, int64_t* out) {
  const unsigned __int128 wide = sum;
  for (int l = 0; l < kSumLimbs; ++l)
    out[l] = static_cast<int64_t>(static_cast<uint64_t>(wide >> (32 * l)) & 0xffffffffu);
}

template <typename T>
typename SignificandSum<T>::type read_limbs(const int64_t* in) {
  unsigned __int128 wide = 0;
  for (int l = 0; l < kSumLimbs; ++l) {
    if (in[l] < 0) throw std::invalid_argument("cdf_attraction: a negative limb of a histogram sum");
    wide += static_cast<unsigned __int128>(static_cast<uint64_t>(in[l])) << (32 * l);
  }
  return static_cast<typename SignificandSum<T>::type>(wide);
}

// The bins and leaves one call hands from step to step in `layout` (kLayoutSize int64): the
// bins (base, shift, range), which step 1 writes, then the leaves (bits, first slot, refined
// bins), which step 2 writes when it refines (zero otherwise).
constexpr int kLayoutSize = 6;

template <typename T>
void write_leaves(const KeyLeaves<T>& leaves, int64_t* layout) {
  layout[3] = leaves.bits;
  layout[4] = static_cast<int64_t>(leaves.first);
  layout[5] = static_cast<int64_t>(leaves.used);
}

// This rank's counts and significand sums of slots [lo, hi), for the caller's all-reduce.
template <typename T>
void write_histogram(const SelectWorkspace<T>& ws, uint64_t lo, uint64_t hi, int64_t* counts, int64_t* limbs) {
  for (uint64_t b = lo; b < hi; ++b) {
    counts[b - lo] = static_cast<int64_t>(ws.hist[b].count);
    write_limbs<T>(ws.hist[b].sum, limbs + kSumLimbs * (b - lo));
  }
}

// Also writes the bins to `layout`, which the later steps take instead of sampling them again.
template <typename T>
uint64_t share_count(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, int64_t* counts, int64_t* limbs,
                     int64_t* layout) {
  const Plan plan = make_plan(a.n, 1, a.threads);
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  const KeyBins<T> bins = sample_key_bins(a, ws, plan.pairs);
  layout[0] = static_cast<int64_t>(bins.base);
  layout[1] = bins.shift;
  layout[2] = static_cast<int64_t>(bins.range);
  write_leaves(KeyLeaves<T>{}, layout);
  count_bins(a, plan, ws, bins);
  write_histogram(ws, 0, bins.count(), counts, limbs);
  return bins.count();
}

// Replaces this rank's counts of slots [lo, hi) by the all-reduced ones, keeping this rank's
// in `start` until share_mixed_totals; returns their total.
template <typename T>
uint64_t take_global_counts(const SelectWorkspace<T>& ws, uint64_t lo, uint64_t hi, const int64_t* counts,
                            const int64_t* limbs) {
  uint64_t total = 0;
  for (uint64_t b = lo; b < hi; ++b) {
    ws.start[b] = ws.hist[b].count;
    if (counts[b - lo] < 0 || static_cast<uint64_t>(counts[b - lo]) < ws.hist[b].count)
      throw std::invalid_argument("cdf_attraction: a global bin count below this rank's");
    ws.hist[b] = {static_cast<uint64_t>(counts[b - lo]), read_limbs<T>(limbs + kSumLimbs * (b - lo))};
    total += ws.hist[b].count;
  }
  return total;
}

// Cursors of this rank's mixed pairs among its own entries, each mixed slot's start among all
// ranks' entries; totals[0]: this rank's mixed pairs, totals[1]: all ranks', totals[2] = 0.
template <typename T>
void share_mixed_totals(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, uint64_t slots, int64_t* totals) {
  uint64_t mine = 0, all = 0;
  for (uint64_t b = 0; b < slots; ++b) {
    if (ws.cls[b] != kBinMixed) continue;
    for (int64_t v = 0; v < std::max(a.threads, 1); ++v)
      ws.cursor[static_cast<size_t>(v) * ws.slots + b] = mine + ws.offset[static_cast<size_t>(v) * ws.slots + b];
    mine += ws.start[b];
    ws.start[b] = all;
    all += ws.hist[b].count;
  }
  totals[0] = static_cast<int64_t>(mine);
  totals[1] = static_cast<int64_t>(all);
  totals[2] = 0;
}

// totals[2] > 0: the mixed bins are cut into that many leaves, which steps 2b and 2c count
// and classify before totals[0] and totals[1] are set; else the mixed pairs as in
// share_mixed_totals.
template <typename T>
void share_classify(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                    const int64_t* counts, const int64_t* limbs, int64_t* totals, int64_t* layout) {
  const Plan plan = make_plan(a.n, 1, a.threads);
  const uint64_t count = bins.count();
  if (take_global_counts(ws, 0, count, counts, limbs) != plan.pairs)
    throw std::invalid_argument("cdf_attraction: the global histogram does not hold n' pairs");
  ws.first[0] = 0;
  for (uint64_t b = 0; b < count; ++b) ws.first[b + 1] = ws.first[b] + ws.hist[b].count;
  classify_bins(a, ws, bins);
  // a.capacity: the mixed pairs the ranks agreed to hold (the least over the ranks), so the
  // same decision on every rank.
  const KeyLeaves<T> leaves = plan_leaves(ws, bins, plan.pairs, a.capacity);
  write_leaves(leaves, layout);
  if (leaves.used == 0) {
    share_mixed_totals(a, ws, count, totals);
    return;
  }
  totals[0] = totals[1] = -1;
  totals[2] = static_cast<int64_t>(leaves.slots());
}

// Step 2b: this rank's pairs of refined bins per leaf (leaves.slots() of them).
template <typename T>
void share_count_leaves(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                        const KeyLeaves<T>& leaves, int64_t* counts, int64_t* limbs) {
  if (leaves.used == 0) throw std::invalid_argument("cdf_attraction: step 2 cut no bin into leaves");
  const Plan plan = make_plan(a.n, 1, a.threads);
  count_leaves(a, plan, ws, bins, leaves);
  write_histogram(ws, leaves.first, leaves.first + leaves.slots(), counts, limbs);
}

// Step 2c: the all-reduced leaf counts classify the leaves; totals as share_mixed_totals.
template <typename T>
void share_classify_leaves(const ForwardArgs<T>& a, const SelectWorkspace<T>& ws, const KeyBins<T>& bins,
                           const KeyLeaves<T>& leaves, const int64_t* counts, const int64_t* limbs, int64_t* totals) {
  if (leaves.used == 0) throw std::invalid_argument("cdf_attraction: step 2 cut no bin into leaves");
  take_global_counts(ws, leaves.first, leaves.first + leaves.slots(), counts, limbs);
  classify_leaves(a, ws, bins, leaves);  // refuses leaves whose counts do not add up to their bin's
  share_mixed_totals(a, ws, leaves.first + leaves.slots(), totals);
}

template <typename T>
void share_collect(const ForwardArgs<T>& a, SelectWorkspace<T> ws, const KeyBins<T>& bins,
                   const KeyLeaves<T>& leaves, WideEntry* mine) {
  const Plan plan = make_plan(a.n, 1, a.threads);
  ws.entries = mine;
  classify_pairs<T, WideEntries>(a, plan, ws, bins, leaves, true);
}

template <typename T>
void share_rank(const ForwardArgs<T>& a, SelectWorkspace<T> ws, const KeyBins<T>& bins, const KeyLeaves<T>& leaves,
                const WideEntry* all, int64_t all_count, WideEntry* placed) {
  using U = typename KeyBins<T>::U;
  const uint64_t slots = bins.count() + leaves.slots();
  uint64_t* cursor = ws.cursor;  // v = 0's row: the collection is done
  uint64_t expected = 0;
  for (uint64_t b = 0; b < slots; ++b) {
    cursor[b] = ws.start[b];
    if (ws.cls[b] == kBinMixed) expected += ws.hist[b].count;
  }
  if (static_cast<uint64_t>(all_count) != expected)
    throw std::invalid_argument("cdf_attraction: the gathered entries are not the mixed bins' pairs");
  for (int64_t e = 0; e < all_count; ++e) {
    const U bits = static_cast<U>(all[e].key);
    uint64_t b = bins.bin_of(bits);
    if (ws.cls[b] == kBinRefined) b = leaves.slot_of(bins, ws.refined[b], bits);
    if (ws.cls[b] != kBinMixed || cursor[b] >= ws.start[b] + ws.hist[b].count)
      throw std::invalid_argument("cdf_attraction: a gathered entry outside its mixed bin");
    placed[cursor[b]++] = all[e];
  }
  ws.entries = placed;
  rank_mixed_bins<T, WideEntries>(a, ws, 0, slots);
  double total = 0.0;
  for (uint64_t b = 0; b < slots; ++b) total += ws.value[b];
  *a.value = total;
}

// ---------------------------------------------------------------- key ranges (KS statistic)
//
// gaussreg.diagnostics.ks_distances needs sup_x |Fhat(x) - F(x)| over the n' keys (SPEC 8).
// F is monotone, so the gaps of a bin's ranks (A_b, A_b + m_b] are bounded by its smallest
// and largest key: one pass counts every key in the selection bins with those two, the
// caller bounds each bin, and a second pass collects (sorted) only the keys of the bins
// whose bound beats the gaps already attained at the bins' ends. No pair is stored twice,
// and no sign is kept.

template <typename T>
struct BinRange {
  using U = typename KeyBins<T>::U;
  uint64_t count;
  U low, high;  // bit patterns of the smallest and largest key seen
};

template <typename T>
struct RangeWorkspace {
  T* zt;                  // points in panels (transpose_points)
  T* sample;              // select_sample_size keys
  BinRange<T>* hist;      // V x bins
  uint64_t* cursor;       // bins: next entry of a collected bin
};

// The virtual threads of the key-bin passes (see histogram_threads): a BinRange per bin.
template <typename T>
int range_threads(int64_t n, uint64_t bins, int threads) {
  return histogram_threads(n, threads, select_bins_of(bins, pair_count(static_cast<uint64_t>(n))) * sizeof(BinRange<T>));
}

template <typename T>
size_t range_layout(int64_t n, int64_t d, uint64_t bins, int threads, char* base, RangeWorkspace<T>* out) {
  const uint64_t pairs = pair_count(static_cast<uint64_t>(n));
  const uint64_t count = select_bins_of(bins, pairs);
  const size_t virtual_threads = static_cast<size_t>(range_threads<T>(n, bins, threads));
  const size_t sizes[] = {
      static_cast<size_t>(padded_count<T>(n) * d) * sizeof(T),
      select_sample_size(pairs) * sizeof(T),
      virtual_threads * count * sizeof(BinRange<T>),
      count * sizeof(uint64_t),
  };
  size_t offset = 0;
  void* parts[4];
  for (int i = 0; i < 4; ++i) {
    parts[i] = base == nullptr ? nullptr : base + offset;
    offset += align64(sizes[i]);
  }
  if (out != nullptr)
    *out = {static_cast<T*>(parts[0]), static_cast<T*>(parts[1]), static_cast<BinRange<T>*>(parts[2]),
            static_cast<uint64_t*>(parts[3])};
  return offset + 64;
}

// Arguments of both passes; `a` carries the points, the bin budget, threads and the poll.
template <typename T>
struct RangeArgs {
  ForwardArgs<T> a;
  int64_t* layout;   // 3: the bins' base, shift and in-range count (written, then read back)
  double low_key;    // with high_key > 0: bins between these keys (a refinement), else sampled
  double high_key;
  int64_t* counts;   // bins: keys per bin
  T* low;            // bins: smallest key per bin (0 where empty)
  T* high;           // bins: largest key per bin (0 where empty)
};

template <typename T>
KeyBins<T> bins_of_layout(const int64_t* layout) {
  return {static_cast<typename KeyBins<T>::U>(layout[0]), static_cast<int>(layout[1]), static_cast<uint64_t>(layout[2])};
}

// The bins of a first count come from a sample of pairs; a refinement asks for bins
// between two keys (the rest fall in the clamp bins, whose counts keep the ranks right).
template <typename T>
KeyBins<T> key_bins_of_ranges(const RangeArgs<T>& r, const RangeWorkspace<T>& ws, uint64_t pairs) {
  if (!(r.high_key > 0.0)) {
    SelectWorkspace<T> sample_ws{};
    sample_ws.sample = ws.sample;
    return sample_key_bins(r.a, sample_ws, pairs);
  }
  const auto lo = std::max<typename KeyBins<T>::U>(key_bits(static_cast<T>(r.low_key)), 1);
  const auto hi = std::max(lo, static_cast<typename KeyBins<T>::U>(key_bits(static_cast<T>(r.high_key))));
  return choose_key_bins<T>(lo, hi, r.a.bins == 0 ? default_select_bins(pairs) : r.a.bins);
}

template <typename T>
void count_key_ranges(const RangeArgs<T>& r, const RangeWorkspace<T>& ws) {
  const ForwardArgs<T>& a = r.a;
  using U = typename KeyBins<T>::U;
  const Plan plan = make_plan(a.n, 1, a.threads);
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  const KeyBins<T> bins = key_bins_of_ranges(r, ws, plan.pairs);
  const uint64_t count = bins.count();
  const int64_t virtual_threads = std::max(a.threads, 1);
  const BinRange<T> empty{0, ~U{0}, 0};
  fill_histograms(a, plan, ws.zt, ws.hist, count, 0, count, empty, [bins](BinRange<T>* mine, U bits) {
    BinRange<T>& h = mine[bins.bin_of(bits)];
    ++h.count;
    h.low = std::min(h.low, bits);
    h.high = std::max(h.high, bits);
  });
  for (uint64_t b = 0; b < count; ++b) {
    BinRange<T> merged{0, ~U{0}, 0};
    for (int64_t v = 0; v < virtual_threads; ++v) {
      const BinRange<T>& h = ws.hist[static_cast<size_t>(v) * count + b];
      merged.count += h.count;
      merged.low = std::min(merged.low, h.low);
      merged.high = std::max(merged.high, h.high);
    }
    r.counts[b] = static_cast<int64_t>(merged.count);
    r.low[b] = merged.count == 0 ? T(0) : KeyBins<T>::value_of(merged.low);
    r.high[b] = merged.count == 0 ? T(0) : KeyBins<T>::value_of(merged.high);
  }
  r.layout[0] = static_cast<int64_t>(bins.base);
  r.layout[1] = bins.shift;
  r.layout[2] = static_cast<int64_t>(bins.range);
}

// The keys of the bins with starts[b] >= 0, bin b's sorted at keys[starts[b], ends[b]).
// The ranges come from count_key_ranges' counts, so a mismatch means other points or
// bins: refused rather than written out of bounds.
template <typename T>
void collect_key_bins(const RangeArgs<T>& r, const int64_t* starts, const int64_t* ends, T* keys,
                      const RangeWorkspace<T>& ws) {
  const ForwardArgs<T>& a = r.a;
  const Plan plan = make_plan(a.n, 1, a.threads);
  const KeyBins<T> bins = bins_of_layout<T>(r.layout);
  const int64_t count = static_cast<int64_t>(bins.count());
  for (int64_t b = 0; b < count; ++b) ws.cursor[b] = starts[b] < 0 ? ~uint64_t{0} : static_cast<uint64_t>(starts[b]);
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  bool overflow = false;
  for_group_slices(a, plan.groups, [&](uint64_t g, int) {
    for_group_blocks(g, plan.groups, a.n, [&](int64_t i0) {
      visit_block_pairs(a.z, ws.zt, a.n, a.d, i0, [&](int64_t, int64_t, T key) {
        const uint64_t b = bins.bin_of(key_bits(key));
        if (ws.cursor[b] == ~uint64_t{0}) return;
        // Keys only (their pairs do not matter to a KS statistic), sorted below: the order
        // in which threads claim slots leaves no trace.
        const uint64_t slot = __atomic_fetch_add(ws.cursor + b, 1, __ATOMIC_RELAXED);
        if (slot < static_cast<uint64_t>(ends[b]))
          keys[slot] = key;
        else
          __atomic_store_n(&overflow, true, __ATOMIC_RELAXED);
      });
    });
  });
  for (int64_t b = 0; b < count; ++b)
    if (starts[b] >= 0 && ws.cursor[b] != static_cast<uint64_t>(ends[b])) overflow = true;
  if (overflow) throw std::invalid_argument("ks bins: the bin ranges do not match these points' counts");
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t b = 0; b < count; ++b)
    if (starts[b] >= 0) std::sort(keys + starts[b], keys + ends[b]);
}

// ---------------------------------------------------------------- few pairs: one bucket

// Up to this many pairs (n <= 256) a call sorts them all as one bucket (one_bucket_forward)
// instead of sampling splitters and counting buckets, or (p = 1) running the selection: fixed
// steps and one pass more over the pairs. Measured on 2 Xeon cores, D = 64, the engine's
// forward: n = 64 35-60 us against 80-160, n = 256 480-500 against 560-880; from n = 362 on
// (2^16 pairs) the one-thread sort lost to the selection (p = 1) or was within the noise.
constexpr uint64_t kOneBucketPairs = uint64_t{1} << 15;

// With the default bins and a sort budget for every pair (forced bins are for the selection).
inline bool sorts_in_one_bucket(uint64_t pairs, uint64_t capacity, uint64_t bins) {
  return pairs <= kOneBucketPairs && capacity >= pairs && bins == 0;
}

// The workspace of one_bucket_forward: the transposed points, every pair's entry, and as
// many again for the sort's scratch.
template <typename T>
struct OneBucketWorkspace {
  T* zt;
  void* entries;
  void* scratch;
};

template <typename T>
size_t one_bucket_layout(int64_t n, int64_t d, uint64_t pairs, char* base, OneBucketWorkspace<T>* out) {
  const size_t entry = packs<T>(pairs) ? sizeof(PackedEntries::Entry) : sizeof(WideEntries::Entry);
  const size_t zt = align64(static_cast<size_t>(padded_count<T>(n) * d) * sizeof(T));
  const size_t entries = align64(pairs * entry);
  if (out != nullptr) *out = {reinterpret_cast<T*>(base), base + zt, base + zt + entries};
  return zt + 2 * entries + 64;  // slack for aligning the base pointer
}

// Every key written at its own pair index, then one stable sort: equal keys stay in pair-index
// order (the selection's and CUDA's tie rule, for p = 2 too), and the result depends on
// nothing but the points. One thread sorts and ranks; its bits need no atomics.
template <typename T, typename E>
void one_bucket_forward(const ForwardArgs<T>& a, uint64_t pairs, void* workspace) {
  OneBucketWorkspace<T> ws;
  one_bucket_layout<T>(a.n, a.d, pairs, aligned_base(workspace), &ws);
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  auto* entries = static_cast<typename E::Entry*>(ws.entries);
  const uint64_t n = static_cast<uint64_t>(a.n);
  const int64_t blocks = (a.n + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for num_threads(a.threads) schedule(dynamic, 1)
  for (int64_t block = 0; block < blocks; ++block)
    visit_block_runs(a.z, ws.zt, a.n, a.d, block * kRowBlock, [&](int64_t i, int64_t j, const T* keys, int64_t run) {
      const uint64_t k = pair_index(n, i, j);
      typename E::Entry* const out = entries + k;
      for (int64_t l = 0; l < run; ++l) out[l] = E::make(key_bits(keys[l]), k + l);
    });
  sort_bucket_by_key<E>(entries, pairs, static_cast<typename E::Entry*>(ws.scratch));
  *a.value = rank_sorted_run<false, T, E>(a, entries, pairs, 0);
  if (a.stats != nullptr) {
    a.stats[kStatSortedPairs] = static_cast<int64_t>(pairs);
    a.stats[kStatPasses] = 1;
    a.stats[kStatBins] = 1;
    a.stats[kStatMixedBins] = 1;
    a.stats[kStatRefinedBins] = 0;
  }
}

// ---------------------------------------------------------------- forward

// Workspace of either forward: the selection (p = 1) or the full sort (p = 2, sorted output).
template <typename T>
size_t forward_workspace_bytes(int64_t n, int64_t d, uint64_t capacity, uint64_t bins, int threads) {
  const Plan plan = make_plan(n, capacity, threads);
  if (sorts_in_one_bucket(plan.pairs, capacity, bins)) return one_bucket_layout<T>(n, d, plan.pairs, nullptr, nullptr);
  return std::max(workspace_layout<T>(n, d, capacity, plan, nullptr, nullptr),
                  select_layout<T>(n, d, capacity, bins, threads, nullptr, nullptr));
}

template <typename T>
void forward(const ForwardArgs<T>& a, void* workspace, size_t ws_bytes) {
  const Plan plan = make_plan(a.n, a.capacity, a.threads);
  char* base = aligned_base(workspace);
  if (forward_workspace_bytes<T>(a.n, a.d, a.capacity, a.bins, a.threads) > ws_bytes)
    throw std::invalid_argument("cdf_attraction: workspace smaller than cdf_pairs_workspace_bytes");
  if (a.p == 1) {
    const uint64_t words = bit_words(plan.pairs);
    std::fill(a.pos_bits, a.pos_bits + words, uint64_t{0});
    std::fill(a.neg_bits, a.neg_bits + words, uint64_t{0});
  }
  if (sorts_in_one_bucket(plan.pairs, a.capacity, a.bins)) {
    packs<T>(plan.pairs) ? one_bucket_forward<T, PackedEntries>(a, plan.pairs, workspace)
                         : one_bucket_forward<T, WideEntries>(a, plan.pairs, workspace);
    return;
  }
  SelectOutcome selection{false, 0, 0};   // a selection's passes, when it sorts all instead
  if (a.p == 1 && a.sorted == nullptr) {  // signs only: selection
    SelectWorkspace<T> sws;
    select_layout<T>(a.n, a.d, a.capacity, a.bins, a.threads, base, &sws);
    ForwardArgs<T> sa = a;
    sa.threads = selection_threads<T>(a.n, a.bins, a.threads);
    selection = packs<T>(plan.pairs) ? select_forward<T, PackedEntries>(sa, plan, sws)
                                     : select_forward<T, WideEntries>(sa, plan, sws);
    if (!selection.sort_all) return;
    a.poll();
  }
  Workspace<T> ws;
  workspace_layout<T>(a.n, a.d, a.capacity, plan, base, &ws);
  // The entries, residuals and sorted keys are written at random (p = 2 at n = 4096: forward
  // + backward 10% faster on 2 Xeon cores).
  prefer_huge_pages(workspace, ws_bytes);
  if (a.p == 2) prefer_huge_pages(a.residual, plan.pairs * sizeof(T));
  if (a.sorted != nullptr) prefer_huge_pages(a.sorted, plan.pairs * sizeof(T));
  transpose_points(a.z, a.n, a.d, ws.zt, a.threads);
  const BucketFinder<T> find = choose_splitters(a, plan, ws);
  count_buckets(a, plan, ws, find);
  const int64_t passes = packs<T>(plan.pairs) ? sort_all_passes<T, PackedEntries>(a, plan, ws, find)
                                              : sort_all_passes<T, WideEntries>(a, plan, ws, find);
  if (a.stats != nullptr) {
    a.stats[kStatSortedPairs] = static_cast<int64_t>(plan.pairs);
    a.stats[kStatPasses] = selection.passes + passes;
    a.stats[kStatBins] = static_cast<int64_t>(plan.buckets);
    a.stats[kStatMixedBins] = static_cast<int64_t>(plan.buckets);
    a.stats[kStatRefinedBins] = selection.refined;
  }
  double total = 0.0;
  for (uint64_t b = 0; b < plan.buckets; ++b) total += ws.partial[b];
  *a.value = total;
}

// ---------------------------------------------------------------- backward

// The binding's call (common/cdf_attraction_bind.h) with the CPU engine's Ctrl-C poll and
// threads; with world > 1 only rank's pairs have signs (ShareRows).
template <typename T>
struct BackwardArgs : CdfBackwardCall<T> {
  InterruptPoll poll;
  int threads;
};

// The backward is a product with the n x n matrix of weights w_ij = s_ij (sgn(e) for p = 1,
// e for p = 2, 0 on the diagonal): g_i = scale * ((sum_j w_ij) z_i - sum_j w_ij z_j). Rows
// go in tiles of kTileRows, partners in tiles of one bit-set word; a tile's weights are
// expanded once into floats, then every loaded z_j feeds the accumulators of all the
// tile's rows (held in registers, two vectors of coordinates at a time).
// 2 * kTileRows vector accumulators + 2 of z_j + a weight: within the 32 registers of AVX-512
// (12 rows: 27) or the 16 of AVX2 (6 rows: 15). More rows per loaded z_j, and fewer sign runs
// to read per pair in the tiles below the diagonal. The results do not depend on it: each
// row's sums run over its partners in the same order.
constexpr int64_t kTileRows = kSimdBytes == 64 ? 12 : 6;
constexpr int64_t kTileCols = 64;

template <typename T>
using WeightTile = T[kTileRows][kTileCols];

// sgn(e) (p = 1) or e (p = 2) of pair index k.
template <typename T>
T pair_weight(const BackwardArgs<T>& a, uint64_t k) {
  if (a.p == 2) return a.residual[k];
  const uint64_t bit = uint64_t{1} << (k & 63);
  return T((a.pos[k >> 6] & bit) != 0) - T((a.neg[k >> 6] & bit) != 0);
}

// out[q] = bit q of pos - bit q of neg (q < 64): a p = 1 sign run as weights, L at a time
// (a broadcast, a shift by the lane's index and a conversion instead of a scalar
// conversion per pair).
template <typename T>
void expand_sign_run(uint64_t pos, uint64_t neg, T* out) {
  using V = typename Simd<T>::type;
  constexpr int64_t L = Simd<T>::kLanes;
  using Lanes = SimdLanes<T>;
  Lanes lane;
  for (int64_t l = 0; l < L; ++l) lane[l] = static_cast<uint32_t>(l);
  for (int64_t q = 0; q < kTileCols; q += L) {
    const Lanes p = ((Lanes{} + static_cast<uint32_t>(pos >> q)) >> lane) & 1u;
    const Lanes m = ((Lanes{} + static_cast<uint32_t>(neg >> q)) >> lane) & 1u;
    const V w = __builtin_convertvector(p, V) - __builtin_convertvector(m, V);
    std::memcpy(out + q, &w, sizeof w);
  }
}

// w[r][t] = weight of the pair (j0 + t, i0 + r) for the tiles wholly below the diagonal
// (j < i), where the pairs of one column t are consecutive in r: each column's run of
// `rows` signs is read once, then bit r of all 64 runs is expanded into row r, L at a time.
template <typename T>
void column_signs(const BackwardArgs<T>& a, int64_t i0, int64_t rows, int64_t j0, int64_t cols, WeightTile<T>& w) {
  using V = typename Simd<T>::type;
  constexpr int64_t L = Simd<T>::kLanes;
  using Lanes = SimdLanes<T>;
  alignas(64) uint32_t pos[kTileCols] = {}, neg[kTileCols] = {};
  const uint64_t n = static_cast<uint64_t>(a.n);
  for (int64_t t = 0; t < cols; ++t) {
    const uint64_t start = pair_index(n, j0 + t, i0);
    pos[t] = static_cast<uint32_t>(extract_bits(a.pos, start, static_cast<int>(rows)));
    neg[t] = static_cast<uint32_t>(extract_bits(a.neg, start, static_cast<int>(rows)));
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < kTileCols; q += L) {
      Lanes p, m;
      std::memcpy(&p, pos + q, sizeof p);
      std::memcpy(&m, neg + q, sizeof m);
      const V weight = __builtin_convertvector((p >> r) & 1u, V) - __builtin_convertvector((m >> r) & 1u, V);
      std::memcpy(&w[r][q], &weight, sizeof weight);
    }
}

// The weights of `count` (<= 64) consecutive pair indices from `start`, `stride` apart in out
// (p = 1 only along a tile row, stride 1: its columns go through column_signs).
template <typename T>
void weights_of_run(const BackwardArgs<T>& a, uint64_t start, int64_t count, T* out, int64_t stride) {
  if (a.p == 2) {
    for (int64_t q = 0; q < count; ++q) out[q * stride] = a.residual[start + q];
    return;
  }
  const uint64_t pos = extract_bits(a.pos, start, static_cast<int>(count));
  const uint64_t neg = extract_bits(a.neg, start, static_cast<int>(count));
  expand_sign_run(pos, neg, out);  // bits past count are 0: so are their weights
}

// w[r][t] = w_{i0 + r, j0 + t}; zero for rows past `rows`, columns past `cols` and i = j.
template <typename T>
void fill_weights(const BackwardArgs<T>& a, int64_t i0, int64_t rows, int64_t j0, int64_t cols, WeightTile<T>& w) {
  const uint64_t n = static_cast<uint64_t>(a.n);
  std::memset(&w, 0, sizeof w);
  if (j0 + cols <= i0) {  // every j < i: pairs (j, i0 + r) are consecutive in r (a tile column)
    if (a.p == 1) return column_signs(a, i0, rows, j0, cols, w);
    for (int64_t t = 0; t < cols; ++t) weights_of_run(a, pair_index(n, j0 + t, i0), rows, &w[0][t], kTileCols);
  } else if (j0 >= i0 + rows) {  // every j > i: pairs (i, j0 + t) are consecutive in t (a tile row)
    for (int64_t r = 0; r < rows; ++r) weights_of_run(a, pair_index(n, i0 + r, j0), cols, &w[r][0], 1);
  } else {  // the tile crosses the diagonal
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < cols; ++t) {
        const uint64_t i = static_cast<uint64_t>(i0 + r), j = static_cast<uint64_t>(j0 + t);
        if (i != j) w[r][t] = pair_weight(a, i < j ? pair_index(n, i, j) : pair_index(n, j, i));
      }
  }
}

// sum of one tile row, in vectors (a chain of 64 dependent scalar adds cost a fifth of the
// backward); exact for p = 1 (small integers), a fixed order for p = 2.
template <typename T>
double tile_row_sum(const T* row) {
  using V = typename Simd<T>::type;
  constexpr int64_t L = Simd<T>::kLanes;
  V sum = {};
  for (int64_t t = 0; t < kTileCols; t += L) {
    V part;
    std::memcpy(&part, row + t, sizeof part);
    sum += part;
  }
  T lanes[L];
  std::memcpy(lanes, &sum, sizeof lanes);
  double total = 0.0;
  for (int64_t l = 0; l < L; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

// The coordinates from c on that are left over after the two-vector sweep (D = 8, 20, 40,
// ...): one vector of kBytes at a time, then halves, down to two lanes; returns the first
// coordinate still to do. Each lane sums over t in order, as the scalar loop it replaced did
// (p = 1's bits unchanged; p = 2's gradients moved by about an ulp against it), but 8
// coordinates of D = 8 take one FMA per row instead of eight.
template <typename T, int kBytes>
int64_t accumulate_narrow(const T* z, int64_t d, int64_t j0, int64_t cols, const WeightTile<T>& w, T* acc,
                          int64_t c) {
  if constexpr (kBytes < 2 * static_cast<int>(sizeof(T))) {
    return c;
  } else {
    using V = typename VectorOf<T, kBytes>::type;
    constexpr int64_t N = kBytes / sizeof(T);
    for (; c + N <= d; c += N) {
      V sum[kTileRows];
      for (int64_t r = 0; r < kTileRows; ++r) std::memcpy(&sum[r], acc + r * d + c, sizeof sum[r]);
      for (int64_t t = 0; t < cols; ++t) {
        V zj;
        std::memcpy(&zj, z + (j0 + t) * d + c, sizeof zj);
        for (int64_t r = 0; r < kTileRows; ++r) sum[r] += w[r][t] * zj;
      }
      for (int64_t r = 0; r < kTileRows; ++r) std::memcpy(acc + r * d + c, &sum[r], sizeof sum[r]);
    }
    return accumulate_narrow<T, kBytes / 2>(z, d, j0, cols, w, acc, c);
  }
}

// acc[r][c] += sum_t w[r][t] z[j0 + t][c] for the tile's kTileRows rows (acc is kTileRows x d).
template <typename T>
void accumulate_tile(const T* z, int64_t d, int64_t j0, int64_t cols, const WeightTile<T>& w, T* acc) {
  using V = typename Simd<T>::type;
  constexpr int64_t L = Simd<T>::kLanes;
  int64_t c = 0;
  for (; c + 2 * L <= d; c += 2 * L) {
    V sum[kTileRows][2];
    for (int64_t r = 0; r < kTileRows; ++r) std::memcpy(sum[r], acc + r * d + c, sizeof sum[r]);
    for (int64_t t = 0; t < cols; ++t) {
      // Two named vectors, not an array: GCC keeps them in registers (an array went
      // through the stack, 6x slower).
      V lo, hi;
      std::memcpy(&lo, z + (j0 + t) * d + c, sizeof lo);
      std::memcpy(&hi, z + (j0 + t) * d + c + L, sizeof hi);
      for (int64_t r = 0; r < kTileRows; ++r) {
        const T weight = w[r][t];
        sum[r][0] += weight * lo;
        sum[r][1] += weight * hi;
      }
    }
    for (int64_t r = 0; r < kTileRows; ++r) std::memcpy(acc + r * d + c, sum[r], sizeof sum[r]);
  }
  c = accumulate_narrow<T, kSimdBytes>(z, d, j0, cols, w, acc, c);
  for (; c < d; ++c)
    for (int64_t r = 0; r < kTileRows; ++r) {
      T sum = acc[r * d + c];
      for (int64_t t = 0; t < cols; ++t) sum += w[r][t] * z[(j0 + t) * d + c];
      acc[r * d + c] = sum;
    }
}

// The partners j of rows [i0, i1) that can share a signed pair with them: all of [0, n)
// in one process; with shares, the owned rows below i1 (pairs (j, i), j owned) and, when
// the tile holds an owned row, every j from i0 on (pairs (i, j)). Sorted, disjoint; a
// partner outside the rank's pairs has no sign bits, so covering a few more costs only time.
struct PartnerRanges {
  int64_t start[3], stop[3];
  int count = 0;
};

inline PartnerRanges partner_ranges(const ShareRows& share, int64_t n, int64_t i0, int64_t i1) {
  PartnerRanges out;
  if (share.all) {
    out.start[0] = 0;
    out.stop[0] = n;
    out.count = 1;
    return out;
  }
  int64_t lo[3], hi[3];
  int m = 0;
  bool owned_row = false;
  for (int q = 0; q < 2; ++q) {
    if (share.stop[q] > share.start[q] && std::min(share.stop[q], i1) > share.start[q]) {
      lo[m] = share.start[q];
      hi[m++] = std::min(share.stop[q], i1);
    }
    owned_row = owned_row || (share.start[q] < i1 && share.stop[q] > i0);
  }
  if (owned_row) {
    lo[m] = i0;
    hi[m++] = n;
  }
  for (int q = 1; q < m; ++q)  // by start (at most 3 ranges), then merged where they touch
    for (int r = q; r > 0 && lo[r] < lo[r - 1]; --r) {
      std::swap(lo[r], lo[r - 1]);
      std::swap(hi[r], hi[r - 1]);
    }
  for (int q = 0; q < m; ++q) {
    if (out.count > 0 && lo[q] <= out.stop[out.count - 1]) {
      out.stop[out.count - 1] = std::max(out.stop[out.count - 1], hi[q]);
    } else {
      out.start[out.count] = lo[q];
      out.stop[out.count++] = hi[q];
    }
  }
  return out;
}

// g_i for the rows [i0, i0 + kTileRows): partners in ascending order, a fixed summation
// order whatever the thread count (bitwise reproducible).
template <typename T>
void backward_tile(const BackwardArgs<T>& a, int64_t i0, T* acc) {
  const int64_t rows = std::min(kTileRows, a.n - i0);
  std::fill(acc, acc + kTileRows * a.d, T(0));
  double weight_sum[kTileRows] = {};
  alignas(64) WeightTile<T> w;
  const PartnerRanges partners = partner_ranges(share_rows(a.n, a.rank, a.world), a.n, i0, i0 + rows);
  for (int q = 0; q < partners.count; ++q) {
    for (int64_t j0 = partners.start[q]; j0 < partners.stop[q]; j0 += kTileCols) {
      const int64_t cols = std::min(kTileCols, partners.stop[q] - j0);
      fill_weights(a, i0, rows, j0, cols, w);
      for (int64_t r = 0; r < rows; ++r) weight_sum[r] += tile_row_sum(w[r]);
      accumulate_tile(a.z, a.d, j0, cols, w, acc);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* zi = a.z + (i0 + r) * a.d;
    const T row_weight = static_cast<T>(weight_sum[r]);
    T* g = a.grad + (i0 + r) * a.d;
    for (int64_t c = 0; c < a.d; ++c) g[c] = static_cast<T>(a.scale) * (row_weight * zi[c] - acc[r * a.d + c]);
  }
}

// z moved by its mean (per coordinate, summed in float64 in row order, rounded to T). The
// gradient depends on differences z_i - z_j only, but a tile forms it as
// (sum_j w_ij) z_i - sum_j w_ij z_j, which cancels when the points lie far from the origin
// compared with their spread: float32, spread 1, n = 300, D = 8, against float64 with the same
// signs: relative error 2.3e-5 at offset 100 and 3.5e-3 at 1e4 uncentered, 3e-8 to 6e-8 centered
// (near the mean, z - mean is exact). The copy is n x D; the sum runs on one thread, in order.
template <typename T>
std::vector<T> centered_points(const T* z, int64_t n, int64_t d) {
  std::vector<double> sum(static_cast<size_t>(d), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) sum[c] += static_cast<double>(z[i * d + c]);
  std::vector<T> mean(static_cast<size_t>(d));
  for (int64_t c = 0; c < d; ++c) mean[c] = static_cast<T>(sum[c] / static_cast<double>(n));
  std::vector<T> out(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) out[i * d + c] = z[i * d + c] - mean[c];
  return out;
}

template <typename T>
void backward(const BackwardArgs<T>& call) {
  const std::vector<T> centered = centered_points(call.z, call.n, call.d);
  BackwardArgs<T> a = call;
  a.z = centered.data();
  const int64_t tiles = (a.n + kTileRows - 1) / kTileRows;
  // Some tiles per parallel region, so that a pending interrupt is noticed between them.
  const int64_t slice = 64 * std::max(a.threads, 1);
  for (int64_t t0 = 0; t0 < tiles; t0 += slice) {
    a.poll();
    const int64_t t1 = std::min(tiles, t0 + slice);
#pragma omp parallel num_threads(a.threads)
    {
      std::vector<T> acc(static_cast<size_t>(kTileRows * a.d));
#pragma omp for schedule(dynamic, 4)
      for (int64_t t = t0; t < t1; ++t) backward_tile(a, t * kTileRows, acc.data());
    }
  }
}

// ---------------------------------------------------------------- bindings

// The CPU side of the shared bindings (csrc/common/cdf_attraction_bind.h); the GIL is
// released, and the Ctrl-C poll takes it briefly between chunks.
struct CdfPairsCpu {
  static constexpr const char* kLastArg = "threads";

  template <typename T>
  static std::size_t workspace_bytes(int64_t n, int64_t d, uint64_t capacity, uint64_t bins, std::uintptr_t threads) {
    return forward_workspace_bytes<T>(n, d, capacity, bins, static_cast<int>(threads));
  }

  static std::size_t entry_bytes(bool single, uint64_t pairs) {
    return single && packs<float>(pairs) ? sizeof(PackedEntries::Entry) : sizeof(WideEntries::Entry);
  }

  template <typename T>
  static void forward(const CdfForwardCall<T>& c, std::uintptr_t threads) {
    run_interruptible_released([&](InterruptPoll poll) {
      const ForwardArgs<T> a{c.z,     c.n,    c.d,        c.quantiles, c.p,     c.value, c.pos,
                             c.neg,   c.residual, c.sorted, c.capacity,  c.bins,  c.stats, poll,
                             static_cast<int>(threads)};
      cpu::forward(a, c.workspace, c.ws_bytes);
    });
  }

  template <typename T>
  static void backward(const CdfBackwardCall<T>& c, std::uintptr_t threads) {
    run_interruptible_released([&](InterruptPoll poll) {
      cpu::backward(BackwardArgs<T>{c, poll, static_cast<int>(threads)});
    });
  }
};

template <typename T>
RangeArgs<T> range_args(int64_t n, int64_t d, uintptr_t z, uint64_t bins, uintptr_t layout, double low_key,
                        double high_key, uintptr_t counts, uintptr_t low, uintptr_t high, InterruptPoll poll,
                        int threads) {
  ForwardArgs<T> a{};
  a.z = ptr<const T>(z);
  a.n = n;
  a.d = d;
  a.bins = bins;
  a.poll = poll;
  a.threads = range_threads<T>(n, bins, threads);
  return {a, ptr<int64_t>(layout), low_key, high_key, ptr<int64_t>(counts), ptr<T>(low), ptr<T>(high)};
}

template <typename T>
RangeWorkspace<T> range_workspace(int64_t n, int64_t d, uint64_t bins, int threads, uintptr_t workspace,
                                  size_t ws_bytes) {
  if (range_layout<T>(n, d, bins, threads, nullptr, nullptr) > ws_bytes)
    throw std::invalid_argument("ks_distances: workspace smaller than ks_distances_workspace_bytes");
  RangeWorkspace<T> ws;
  range_layout<T>(n, d, bins, threads, aligned_base(ptr<void>(workspace)), &ws);
  return ws;
}

template <typename T>
void ks_count_typed(int64_t n, int64_t d, uintptr_t z, uint64_t bins, double low_key, double high_key,
                    uintptr_t layout, uintptr_t counts, uintptr_t low, uintptr_t high, uintptr_t workspace,
                    size_t ws_bytes, int threads) {
  const RangeWorkspace<T> ws = range_workspace<T>(n, d, bins, threads, workspace, ws_bytes);
  run_interruptible([&](InterruptPoll poll) {
    count_key_ranges<T>(range_args<T>(n, d, z, bins, layout, low_key, high_key, counts, low, high, poll, threads),
                        ws);
  });
}

// The layout written by ks_distances_count: refused unless it is one this n and budget give.
template <typename T>
void check_range_layout(int64_t n, uint64_t bins, const int64_t* layout) {
  const uint64_t most = select_bins_of(bins, pair_count(static_cast<uint64_t>(n))) - 2;
  if (layout[1] < 0 || layout[1] > FloatBits<T>::kMantissa || layout[2] < 1 || static_cast<uint64_t>(layout[2]) > most)
    throw std::invalid_argument("ks_distances: a bin layout that ks_distances_count did not write");
}

template <typename T>
void ks_collect_typed(int64_t n, int64_t d, uintptr_t z, uint64_t bins, uintptr_t layout, uintptr_t starts,
                      uintptr_t ends, uintptr_t keys, int64_t keys_count, uintptr_t workspace, size_t ws_bytes,
                      int threads) {
  const int64_t* lay = ptr<const int64_t>(layout);
  check_range_layout<T>(n, bins, lay);
  const int64_t count = lay[2] + 2;
  const int64_t* s = ptr<const int64_t>(starts);
  const int64_t* e = ptr<const int64_t>(ends);
  for (int64_t b = 0; b < count; ++b)
    if (s[b] >= 0 && (e[b] < s[b] || e[b] > keys_count))
      throw std::invalid_argument("ks_distances: a bin's key range lies outside the keys");
  const RangeWorkspace<T> ws = range_workspace<T>(n, d, bins, threads, workspace, ws_bytes);
  run_interruptible([&](InterruptPoll poll) {
    RangeArgs<T> r = range_args<T>(n, d, z, bins, layout, 0.0, 0.0, 0, 0, 0, poll, threads);
    collect_key_bins<T>(r, s, e, ptr<T>(keys), ws);
  });
}

// ---- shares across ranks: one argument pack for the four steps and the backward

// What every step takes: the points, the quantile source, the bins, this rank's share and
// the workspace (the same one through all four steps).
struct ShareCall {
  int64_t n, d;
  uintptr_t z;
  int source;
  uintptr_t table, values;
  int64_t count;
  uint64_t bins;
  int64_t rank, world;
  uint64_t capacity;  // mixed pairs every rank may hold before the second level is forced
  uintptr_t workspace;
  size_t ws_bytes;
  int threads;
  uintptr_t layout;  // kLayoutSize int64: the bins from step 1, the leaves from step 2

  template <typename T>
  ForwardArgs<T> args(InterruptPoll poll) const {
    ForwardArgs<T> a{};
    a.z = ptr<const T>(z);
    a.n = n;
    a.d = d;
    a.quantiles = rank_quantiles<T>(source, table, values, count, pair_count(static_cast<uint64_t>(n)));
    a.p = 1;
    a.bins = bins;
    a.capacity = capacity;
    a.poll = poll;
    a.threads = selection_threads<T>(n, bins, threads);
    a.share_rank = rank;
    a.share_world = world;
    return a;
  }

  // The bins step 1 wrote.
  template <typename T>
  KeyBins<T> key_bins() const {
    const int64_t* lay = ptr<const int64_t>(layout);
    check_range_layout<T>(n, bins, lay);
    return bins_of_layout<T>(lay);
  }

  // The leaves step 2 wrote (none when it did not refine), refused unless they are the ones
  // its classes in the workspace imply: as many as the refined bins, cut as step 2 cuts them
  // (so a changed layout cannot send a key past the workspace's slots).
  template <typename T>
  KeyLeaves<T> key_leaves(const SelectWorkspace<T>& ws) const {
    const int64_t* lay = ptr<const int64_t>(layout);
    const KeyBins<T> b = key_bins<T>();
    uint64_t refined = 0;
    for (uint64_t k = 0; k < b.count(); ++k) refined += ws.cls[k] == kBinRefined;
    KeyLeaves<T> leaves;
    if (refined > 0) {
      leaves.bits = choose_leaf_bits(b.shift, refined, ws.slots - b.count());
      leaves.first = b.count();
      leaves.used = refined;
    }
    if (lay[3] != leaves.bits || lay[4] != static_cast<int64_t>(leaves.first) ||
        lay[5] != static_cast<int64_t>(leaves.used))
      throw std::invalid_argument("cdf_attraction: leaves that cdf_share_classify did not write");
    return leaves;
  }

  // The same with the sign bit sets the steps 3 and 4 write.
  template <typename T>
  ForwardArgs<T> signed_args(InterruptPoll poll, uintptr_t pos, uintptr_t neg) const {
    if (pos == 0 || neg == 0) throw std::invalid_argument("cdf_attraction: null sign bits");
    ForwardArgs<T> a = args<T>(poll);
    a.pos_bits = ptr<uint64_t>(pos);
    a.neg_bits = ptr<uint64_t>(neg);
    return a;
  }

  template <typename T>
  SelectWorkspace<T> space() const {
    check_cdf_pairs_sizes(n, d, 1, 1);
    if (z == 0 || workspace == 0) throw std::invalid_argument("cdf_attraction: null points or workspace");
    if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("cdf_attraction: rank outside the group");
    if (layout == 0) throw std::invalid_argument("cdf_attraction: null bin layout");
    if (select_layout<T>(n, d, 0, bins, threads, nullptr, nullptr) > ws_bytes)
      throw std::invalid_argument("cdf_attraction: workspace smaller than cdf_share_workspace_bytes");
    SelectWorkspace<T> ws;
    select_layout<T>(n, d, 0, bins, threads, aligned_base(ptr<void>(workspace)), &ws);
    return ws;
  }
};

ShareCall share_call(const py::dict& c) {
  return {c["n"].cast<int64_t>(),         c["d"].cast<int64_t>(),     c["z"].cast<uintptr_t>(),
          c["source"].cast<int>(),        c["table"].cast<uintptr_t>(), c["values"].cast<uintptr_t>(),
          c["count"].cast<int64_t>(),     c["bins"].cast<uint64_t>(),  c["rank"].cast<int64_t>(),
          c["world"].cast<int64_t>(),     c["capacity"].cast<uint64_t>(), c["workspace"].cast<uintptr_t>(),
          c["ws_bytes"].cast<size_t>(),
          c["threads"].cast<int>(),       c["layout"].cast<uintptr_t>()};
}

// The element type of a SelectWorkspace<T> (the generic step lambdas see only the workspace).
template <typename W>
using ScalarOf = std::remove_pointer_t<decltype(std::declval<std::decay_t<W>>().zt)>;

// One step: the call's arguments read, its workspace laid out for the dtype, then
// step(call, workspace, poll) with the GIL released and Ctrl-C polled.
template <typename Step>
auto share_step(int dtype, const py::dict& call, Step&& step) {
  const ShareCall c = share_call(call);
  return by_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    const SelectWorkspace<T> ws = c.space<T>();
    decltype(step(c, ws, InterruptPoll{})) out{};
    run_interruptible([&](InterruptPoll poll) { out = step(c, ws, poll); });
    return out;
  });
}

void bind_cdf_shares(py::module_& m) {
  m.def(
      "cdf_share_workspace_bytes",
      [](int dtype, int64_t n, int64_t d, uint64_t bins, int threads) {
        check_cdf_pairs_sizes(n, d, 1, 1);
        return by_dtype(dtype, [&](auto t) {
          return select_layout<decltype(t)>(n, d, 0, bins, threads, nullptr, nullptr);
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("bins"), py::arg("threads"),
      "Workspace bytes of the cdf_share_* steps.");
  m.def(
      "cdf_share_count",
      [](int dtype, const py::dict& call, uintptr_t counts, uintptr_t limbs) {
        return share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          return share_count<T>(c.args<T>(poll), ws, ptr<int64_t>(counts), ptr<int64_t>(limbs),
                                ptr<int64_t>(c.layout));
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("counts"), py::arg("limbs"),
      "Step 1: the bins into call['layout'] (6 int64), this rank's pairs per bin into counts (int64, "
      "ks_distances_bin_count of them) and their significand sums as 4 32-bit limbs a bin into limbs; returns "
      "the bins used.");
  m.def(
      "cdf_share_classify",
      [](int dtype, const py::dict& call, uintptr_t counts, uintptr_t limbs, uintptr_t totals) {
        share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          share_classify<T>(c.args<T>(poll), ws, c.key_bins<T>(), ptr<const int64_t>(counts),
                            ptr<const int64_t>(limbs), ptr<int64_t>(totals), ptr<int64_t>(c.layout));
          return 0;
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("counts"), py::arg("limbs"), py::arg("totals"),
      "Step 2: the all-reduced counts and limbs classify the bins; totals (3 int64) receives this rank's mixed "
      "pairs, all ranks' and 0, or -1, -1 and the leaves that steps 2b and 2c count and classify first (their "
      "layout into call['layout']).");
  m.def(
      "cdf_share_count_leaves",
      [](int dtype, const py::dict& call, uintptr_t counts, uintptr_t limbs) {
        share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          share_count_leaves<T>(c.args<T>(poll), ws, c.key_bins<T>(), c.key_leaves<T>(ws), ptr<int64_t>(counts),
                                ptr<int64_t>(limbs));
          return 0;
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("counts"), py::arg("limbs"),
      "Step 2b: this rank's pairs per leaf into counts and limbs (totals[2] of each, as in step 1).");
  m.def(
      "cdf_share_classify_leaves",
      [](int dtype, const py::dict& call, uintptr_t counts, uintptr_t limbs, uintptr_t totals) {
        share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          share_classify_leaves<T>(c.args<T>(poll), ws, c.key_bins<T>(), c.key_leaves<T>(ws),
                                   ptr<const int64_t>(counts), ptr<const int64_t>(limbs), ptr<int64_t>(totals));
          return 0;
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("counts"), py::arg("limbs"), py::arg("totals"),
      "Step 2c: the all-reduced leaf counts and limbs classify the leaves; totals as step 2 without leaves.");
  m.def(
      "cdf_share_collect",
      [](int dtype, const py::dict& call, uintptr_t pos, uintptr_t neg, uintptr_t mine) {
        share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          share_collect<T>(c.signed_args<T>(poll, pos, neg), ws, c.key_bins<T>(), c.key_leaves<T>(ws),
                           ptr<WideEntry>(mine));
          return 0;
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("pos"), py::arg("neg"), py::arg("mine"),
      "Step 3: sign bits of this rank's pairs in decided bins (pos, neg zeroed by the caller); its mixed pairs "
      "into mine as (key bits, pair index), totals[0] of them.");
  m.def(
      "cdf_share_rank",
      [](int dtype, const py::dict& call, uintptr_t pos, uintptr_t neg, uintptr_t all, int64_t all_count,
         uintptr_t placed, uintptr_t value) {
        if (value == 0 || (all_count > 0 && (all == 0 || placed == 0)))
          throw std::invalid_argument("cdf_attraction: null value or entries");
        share_step(dtype, call, [&](const ShareCall& c, const auto& ws, InterruptPoll poll) {
          using T = ScalarOf<decltype(ws)>;
          ForwardArgs<T> a = c.signed_args<T>(poll, pos, neg);
          a.value = ptr<double>(value);
          share_rank<T>(a, ws, c.key_bins<T>(), c.key_leaves<T>(ws), ptr<const WideEntry>(all), all_count,
                        ptr<WideEntry>(placed));
          return 0;
        });
      },
      py::arg("dtype"), py::arg("call"), py::arg("pos"), py::arg("neg"), py::arg("all"), py::arg("all_count"),
      py::arg("placed"), py::arg("value"),
      "Step 4: every rank's mixed entries (all, totals[1] of them; placed: as many for the work) ranked; sign bits "
      "of this rank's pairs; value receives sum_k |d_(k) - c'_k|, the same on every rank.");
}

}  // namespace

void bind_cdf_attraction(py::module_& m) {
  bind_cdf_shares(m);
  bind_cdf_pairs_engine<CdfPairsCpu>(m);
  m.def(
      "ks_distances_workspace_bytes",
      [](int dtype, int64_t n, int64_t d, uint64_t bins, int threads) {
        check_cdf_pairs_sizes(n, d, 1, 1);
        return is_float(dtype) ? range_layout<float>(n, d, bins, threads, nullptr, nullptr)
                               : range_layout<double>(n, d, bins, threads, nullptr, nullptr);
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("bins"), py::arg("threads"),
      "Workspace bytes of ks_distances_count and ks_distances_collect (bins: in-range bins, 0 for the default).");
  m.def(
      "ks_distances_bin_count",
      [](int64_t n, uint64_t bins) { return select_bins_of(bins, pair_count(static_cast<uint64_t>(n))); },
      py::arg("n"), py::arg("bins"), "Most bins (clamp bins included) ks_distances_count may write.");
  m.def(
      "ks_distances_count",
      [](int dtype, int64_t n, int64_t d, uintptr_t z, uint64_t bins, double low_key, double high_key,
         uintptr_t layout, uintptr_t counts, uintptr_t low, uintptr_t high, uintptr_t workspace, size_t ws_bytes,
         int threads) {
        check_cdf_pairs_sizes(n, d, 1, 1);
        if (z == 0 || layout == 0 || counts == 0 || low == 0 || high == 0 || workspace == 0)
          throw std::invalid_argument("ks_distances: null pointer");
        if (is_float(dtype))
          ks_count_typed<float>(n, d, z, bins, low_key, high_key, layout, counts, low, high, workspace, ws_bytes,
                                threads);
        else
          ks_count_typed<double>(n, d, z, bins, low_key, high_key, layout, counts, low, high, workspace, ws_bytes,
                                 threads);
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("z"), py::arg("bins"), py::arg("low_key"),
      py::arg("high_key"), py::arg("layout"), py::arg("counts"), py::arg("low"), py::arg("high"),
      py::arg("workspace"), py::arg("ws_bytes"), py::arg("threads"),
      "Histogram of the n' half squared distances of contiguous (n, d) points over the selection bins (from a "
      "sample of pairs, or between low_key and high_key when high_key > 0): "
      "`layout` (3 int64) receives the bins, `counts` (ks_distances_bin_count int64) the keys per bin, `low` and "
      "`high` (same length, z's dtype) each bin's smallest and largest key. Only layout[2] + 2 bins are used.");
  m.def(
      "ks_distances_collect",
      [](int dtype, int64_t n, int64_t d, uintptr_t z, uint64_t bins, uintptr_t layout, uintptr_t starts,
         uintptr_t ends, uintptr_t keys, int64_t keys_count, uintptr_t workspace, size_t ws_bytes, int threads) {
        check_cdf_pairs_sizes(n, d, 1, 1);
        if (z == 0 || layout == 0 || starts == 0 || ends == 0 || (keys == 0 && keys_count > 0) || workspace == 0)
          throw std::invalid_argument("ks_distances: null pointer");
        if (is_float(dtype))
          ks_collect_typed<float>(n, d, z, bins, layout, starts, ends, keys, keys_count, workspace, ws_bytes,
                                  threads);
        else
          ks_collect_typed<double>(n, d, z, bins, layout, starts, ends, keys, keys_count, workspace, ws_bytes,
                                   threads);
      },
      py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("z"), py::arg("bins"), py::arg("layout"),
      py::arg("starts"), py::arg("ends"), py::arg("keys"), py::arg("keys_count"), py::arg("workspace"),
      py::arg("ws_bytes"), py::arg("threads"),
      "The keys of the bins b with starts[b] >= 0 (layout from ks_distances_count), each bin's ascending in "
      "keys[starts[b]:ends[b]]; ends[b] - starts[b] must be that bin's count.");
  m.def(
      "pair_of",
      [](uint64_t n, py::array_t<uint64_t, py::array::c_style | py::array::forcecast> k) {
        py::array_t<uint64_t> out({k.size(), py::ssize_t{2}});
        for (py::ssize_t t = 0; t < k.size(); ++t) {
          const PairIJ ij = pair_of(n, k.data()[t]);
          out.mutable_data()[2 * t] = ij.i;
          out.mutable_data()[2 * t + 1] = ij.j;
        }
        return out;
      },
      "(i, j) of pair indices k (common/pair_index.h).");
  m.def(
      "pair_index",
      [](uint64_t n, uint64_t i, uint64_t j) { return pair_index(n, i, j); }, "k(i, j) for i < j.");
}

}  // namespace cpu
}  // namespace gaussreg
