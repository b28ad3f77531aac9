// CPU engine of the segmented-sort losses (SPEC 2, 6, 7): many independent sorts of n
// values (one per column of z, or per projection direction), each followed by a pass
// over the ranks.
//
// Segments are contiguous (the Python side passes z^T or the (L, n) projections), so a
// segment is sorted by one thread, in L2 for n up to ~10^5, with no synchronisation;
// OpenMP hands out segments dynamically. Each segment: (ordered key, row) entries, a
// stable LSD radix sort by key (ties keep row order, so ranks depend on the data only),
// then one pass by rank that writes what the loss needs at each row's own position.
// Sums are per segment, in rank order, added in segment order: bitwise reproducible for
// any thread count.
#include "common/segmented.h"

#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

#include "common/config.h"
#include "common/segmented_bind.h"
#include "cpu/radix_sort.h"

#if defined(GAUSSREG_HAVE_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace gaussreg {
namespace cpu {
namespace {

// float keys pack with a 32-bit row into one word; double keys need two.
template <typename T>
struct SegmentEntries;
template <>
struct SegmentEntries<float> {
  using type = PackedEntries;
};
template <>
struct SegmentEntries<double> {
  using type = WideEntries;
};

template <typename T>
std::size_t entry_bytes() {
  return sizeof(typename SegmentEntries<T>::type::Entry);
}

// Below this many values a call takes microseconds: waking a thread team costs more (and
// much more when other processes share the cores).
constexpr int64_t kParallelMinValues = int64_t{1} << 15;

int clamp_threads(int requested, int64_t segments, int64_t n) {
  if (segments * n < kParallelMinValues) return 1;
  const int64_t t = requested < 1 ? 1 : requested;
  return static_cast<int>(t < segments ? t : segments);
}

// Per thread: the entries of one segment and the radix sort's scratch.
template <typename T>
std::size_t workspace_bytes(int64_t segments, int64_t n, int threads) {
  return static_cast<std::size_t>(clamp_threads(threads, segments, n)) * 2 * static_cast<std::size_t>(n) *
         entry_bytes<T>();
}

template <typename T>
T value_of_entry(uint64_t key) {
  return value_of_ordered<T>(static_cast<typename OrderedBits<T>::type>(key));
}

// Sorts every segment (keys: the values, or v mod 1 on the torus) and hands each sorted
// segment to visit(segment, entries) on the thread that sorted it.
template <typename T, typename Visit>
void for_each_sorted_segment(const T* values, int64_t segments, int64_t n, bool torus, void* workspace,
                             std::size_t ws_bytes, int threads, Visit&& visit) {
  using E = typename SegmentEntries<T>::type;
  using Entry = typename E::Entry;
  const int team = clamp_threads(threads, segments, n);
  if (ws_bytes < workspace_bytes<T>(segments, n, team))
    throw std::invalid_argument("segmented sort: workspace too small");
  Entry* all = static_cast<Entry*>(workspace);
#pragma omp parallel num_threads(team)
  {
#if defined(GAUSSREG_HAVE_OPENMP)
    const int me = omp_get_thread_num();
#else
    const int me = 0;
#endif
    Entry* entries = all + static_cast<std::size_t>(me) * 2 * n;
    Entry* scratch = entries + n;
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < segments; ++s) {
      const T* v = values + s * n;
      for (int64_t i = 0; i < n; ++i) {
        const T key = torus ? torus_wrap(v[i]) : v[i];
        entries[i] = E::make(ordered_bits(key), static_cast<uint64_t>(i));
      }
      sort_bucket_by_key<E>(entries, static_cast<uint64_t>(n), scratch);
      visit(s, entries);
    }
  }
}

// SPEC 2 / 6: e = key_(r) - t_r per rank r of each segment (wrapped on the torus).
template <typename T>
void sorted_gaps(const SortedGapsCall<T>& a, int threads) {
  using E = typename SegmentEntries<T>::type;
  std::vector<double> per_segment(static_cast<std::size_t>(a.segments), 0.0);
  for_each_sorted_segment<T>(a.values, a.segments, a.n, a.torus, a.workspace, a.ws_bytes, threads,
                             [&](int64_t s, const typename E::Entry* entries) {
    double sum = 0.0;
    T* slope = a.slope + s * a.n;
    for (int64_t r = 0; r < a.n; ++r) {
      const T key = value_of_entry<T>(E::key(entries[r]));
      const T e = segment_residual(key, a.targets(s, r), a.torus);
      sum += residual_power(e, a.p);
      const T g = residual_slope(e, a.p);
      slope[E::index(entries[r])] = g;
      if (a.sorted_slope != nullptr) a.sorted_slope[s * a.n + r] = g;
    }
    per_segment[s] = sum;
  });
  double total = 0.0;
  for (double s : per_segment) total += s;
  *a.value = total;
}

// SPEC 7: #{i' : v_i' <= v_i} per value (ties counted together, -0 equal to +0).
template <typename T>
void counts_at_or_below(const T* values, int64_t segments, int64_t n, int64_t* counts, void* workspace,
                        std::size_t ws_bytes, int threads) {
  using E = typename SegmentEntries<T>::type;
  for_each_sorted_segment<T>(values, segments, n, false, workspace, ws_bytes, threads,
                             [&](int64_t s, const typename E::Entry* entries) {
    int64_t* out = counts + s * n;
    int64_t run = 0;
    while (run < n) {
      const T key = value_of_entry<T>(E::key(entries[run]));
      int64_t end = run + 1;
      while (end < n && value_of_entry<T>(E::key(entries[end])) == key) ++end;
      for (int64_t r = run; r < end; ++r) out[E::index(entries[r])] = end;
      run = end;
    }
  });
}

// The CPU side of the shared bindings (common/segmented_bind.h).
struct SegmentedCpu {
  static constexpr const char* kLastArg = "num_threads";

  template <typename T>
  static std::size_t workspace_bytes(int64_t segments, int64_t n, std::uintptr_t threads) {
    return cpu::workspace_bytes<T>(segments, n, static_cast<int>(threads));
  }

  template <typename T>
  static void sorted_gaps(const SortedGapsCall<T>& c, std::uintptr_t threads) {
    cpu::sorted_gaps(c, static_cast<int>(threads));
  }

  template <typename T>
  static void counts(const T* values, int64_t segments, int64_t n, int64_t* counts, void* workspace,
                     std::size_t ws_bytes, std::uintptr_t threads) {
    counts_at_or_below<T>(values, segments, n, counts, workspace, ws_bytes, static_cast<int>(threads));
  }
};

}  // namespace

void bind_segmented(py::module_& m) { bind_segmented_engine<SegmentedCpu>(m); }

}  // namespace cpu
}  // namespace gaussreg
