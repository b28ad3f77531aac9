// CUDA engine of the segmented-sort losses (SPEC 2, 6, 7): many independent sorts of n
// values (one per column of z, or per projection direction), each followed by a pass over
// the ranks. Twin of csrc/cpu/segmented.cpp: same bindings, with the stream last instead
// of the thread count.
//
// Keys are ordered_bits(v) (or of v mod 1 on the torus) with the row index as the payload,
// sorted by CUB's radix sorts, which are stable (DeviceSegmentedRadixSort shares
// DeviceRadixSort's implementation): ties keep row order, as in the CPU's LSD radix sort,
// so ranks depend on the data only.
//
// Segments are sorted in batches of whole segments of at most kBatchItems values, so the
// workspace stays bounded and CUB's int item counts never overflow:
//   - many segments per batch: one DeviceSegmentedRadixSort (a block per segment);
//   - few segments of many values (a batch would give CUB too few blocks to fill the GPU):
//     one device-wide DeviceRadixSort per segment instead.
// After each batch's sort, one kernel over the batch's sorted positions writes what the
// loss needs at each row's own position (forward: slopes and |e|^p; counts: the end of the
// row's tie run).
//
// Determinism: |e|^p is summed per fixed chunk of kChunk sorted positions of a batch (8
// positions per thread, 256 apart, then block_sum), one partial per chunk, stored at a
// slot fixed by (batch, chunk); sum_partials adds all partials in slot order. The
// batches and chunks depend on (segments, n) only, so the value is bitwise reproducible.
// No floating-point atomics anywhere.
#include "common/segmented.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/config.h"
#include "common/segmented_bind.h"
#include "cuda/check.cuh"
#include "cuda/workspace.cuh"
#include "cuda/reduce.cuh"

namespace py = pybind11;

namespace gaussreg {
namespace cuda {
namespace {

// Values per CUB call: keeps the workspace near 24 bytes x 2^26 (double keys, both double
// buffers) whatever segments * n is, while one call still holds enough work for a GPU.
constexpr int64_t kBatchItems = int64_t{1} << 26;
// A segmented call with at most this many segments of at least kWideSegment values leaves
// most SMs idle (one block per segment): such segments get a device-wide sort each.
constexpr int64_t kFewSegments = 32;
constexpr int64_t kWideSegment = int64_t{1} << 17;

constexpr int kThreads = 256;  // keys, counts and offsets kernels
constexpr int kRankThreads = 256;
constexpr int kRanksPerThread = 8;
constexpr int64_t kChunk = int64_t{kRankThreads} * kRanksPerThread;  // positions per partial sum
constexpr int64_t kMaxBlocks = int64_t{1} << 20;                       // grid-stride beyond this


using Index = uint32_t;  // row index payload: n <= 2^31 - 1 (check_segmented_sizes)

template <typename T>
using Key = typename OrderedBits<T>::type;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_for(int64_t work_items, int64_t per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work_items, per_block), kMaxBlocks)));
}

// ---------------------------------------------------------------- plan and workspace

struct Plan {
  int64_t segments, n;
  int64_t batch_segments;  // segments per batch (the last batch may hold fewer)
  int64_t batches;
  bool per_segment;        // a device-wide sort per segment (then batch_segments == 1)
  int64_t batch_chunks;    // partial-sum slots of a full batch
  int64_t chunks;          // partial-sum slots of all batches
  size_t sort_temp;        // CUB temporary storage, the largest any batch asks for
};

template <typename T>
size_t segmented_sort_temp(int64_t batch_segments, int64_t n, cudaStream_t stream) {
  cub::DoubleBuffer<Key<T>> keys(nullptr, nullptr);
  cub::DoubleBuffer<Index> index(nullptr, nullptr);
  const int* offsets = nullptr;
  size_t bytes = 0;
  check_cuda(cub::DeviceSegmentedRadixSort::SortPairs(nullptr, bytes, keys, index, static_cast<int>(batch_segments * n),
                                                      static_cast<int>(batch_segments), offsets, offsets + 1, 0,
                                                      static_cast<int>(8 * sizeof(Key<T>)), stream),
             "cub::DeviceSegmentedRadixSort::SortPairs (size)");
  return bytes;
}

template <typename T>
size_t device_sort_temp(int64_t n, cudaStream_t stream) {
  cub::DoubleBuffer<Key<T>> keys(nullptr, nullptr);
  cub::DoubleBuffer<Index> index(nullptr, nullptr);
  size_t bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, index, static_cast<uint32_t>(n), 0,
                                             static_cast<int>(8 * sizeof(Key<T>)), stream),
             "cub::DeviceRadixSort::SortPairs (size)");
  return bytes;
}

// Depends on (segments, n) only: the batches fix the summation order of the value.
template <typename T>
Plan make_plan(int64_t segments, int64_t n, cudaStream_t stream) {
  Plan plan{};
  plan.segments = segments;
  plan.n = n;
  const int64_t fit = std::max<int64_t>(1, kBatchItems / n);  // whole segments per batch
  plan.per_segment = n >= kWideSegment && std::min(segments, fit) <= kFewSegments;
  plan.batch_segments = plan.per_segment ? 1 : std::min(segments, fit);
  plan.batches = ceil_div(segments, plan.batch_segments);
  plan.batch_chunks = ceil_div(plan.batch_segments * n, kChunk);
  const int64_t rest = segments - (plan.batches - 1) * plan.batch_segments;  // segments of the last batch
  plan.chunks = (plan.batches - 1) * plan.batch_chunks + ceil_div(rest * n, kChunk);
  if (plan.per_segment) {
    plan.sort_temp = device_sort_temp<T>(n, stream);
  } else {
    plan.sort_temp = segmented_sort_temp<T>(plan.batch_segments, n, stream);
    if (rest != plan.batch_segments) plan.sort_temp = std::max(plan.sort_temp, segmented_sort_temp<T>(rest, n, stream));
  }
  return plan;
}

struct Workspace {
  void* keys[2];     // Key<T>, a batch's values: CUB's double buffer
  Index* index[2];   // row indices travelling with the keys
  int* offsets;      // batch_segments + 1 segment starts (segmented sorts only)
  double* partials;  // plan.chunks partial sums of |e|^p, then sum_partials' scratch
  void* sort_temp;
};

// Carves the workspace from `base` (nullptr: sizes only); returns the bytes needed,
// including the slack for aligning the caller's pointer.
template <typename T>
size_t workspace_layout(const Plan& plan, char* base, Workspace* out) {
  const size_t items = static_cast<size_t>(plan.batch_segments * plan.n);
  const size_t sizes[] = {
      items * sizeof(Key<T>),
      items * sizeof(Key<T>),
      items * sizeof(Index),
      items * sizeof(Index),
      plan.per_segment ? 0 : static_cast<size_t>(plan.batch_segments + 1) * sizeof(int),
      static_cast<size_t>(plan.chunks + sum_partials_scratch(plan.chunks)) * sizeof(double),
      plan.sort_temp,
  };
  void* parts[sizeof(sizes) / sizeof(sizes[0])];
  const size_t total = carve_workspace(base, sizes, parts);
  if (out != nullptr) {
    *out = {{parts[0], parts[1]},
            {static_cast<Index*>(parts[2]), static_cast<Index*>(parts[3])},
            static_cast<int*>(parts[4]),
            static_cast<double*>(parts[5]),
            parts[6]};
  }
  return total;
}

// ---------------------------------------------------------------- kernels

// SPEC 2 / 6 / 7: sort keys of a batch, keys[pos] = ordered_bits(v or v mod 1) and
// index[pos] = the row, pos = local segment * n + row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
segment_keys_kernel(const T* __restrict__ values, int64_t items, int64_t n, bool torus, Key<T>* __restrict__ keys,
                    Index* __restrict__ index) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pos < items; pos += stride) {
    const T v = values[pos];
    keys[pos] = ordered_bits(torus ? torus_wrap(v) : v);
    index[pos] = static_cast<Index>(pos % n);
  }
}

// SPEC 2 / 6 / 7: CUB's segment starts, offsets[b] = b * n (the last one ends the batch).
__global__ void __launch_bounds__(kThreads) segment_offsets_kernel(int64_t count, int64_t n, int* offsets) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < count; b += stride)
    offsets[b] = static_cast<int>(b * n);
}

template <typename T>
struct GapsPass {
  const Key<T>* keys;   // sorted keys of the batch
  const Index* index;   // their rows
  int64_t items, n;
  int64_t first_segment;
  bool torus;
  RankTargets<T> targets;
  int p;
  T* slope;             // (segments, n), by row
  T* sorted_slope;      // optional (segments, n), by rank
  double* partials;     // this batch's slots
};

// SPEC 2 / 6: e = key_(r) - t_r per rank r (wrapped on the torus); slope at the row's own
// position, |e|^p summed per chunk of kChunk positions in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kRankThreads) sorted_gaps_kernel(GapsPass<T> a) {
  const int64_t chunks = ceil_div(a.items, kChunk);
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {  // uniform over the block: block_sum below
    double sum = 0.0;
    for (int q = 0; q < kRanksPerThread; ++q) {
      const int64_t pos = c * kChunk + static_cast<int64_t>(q) * kRankThreads + threadIdx.x;  // coalesced
      if (pos >= a.items) break;
      const int64_t local = pos / a.n, r = pos - local * a.n, s = a.first_segment + local;
      const T key = value_of_ordered<T>(a.keys[pos]);
      const T e = segment_residual(key, a.targets(s, r), a.torus);
      const T g = residual_slope(e, a.p);
      a.slope[s * a.n + static_cast<int64_t>(a.index[pos])] = g;
      if (a.sorted_slope != nullptr) a.sorted_slope[s * a.n + r] = g;
      sum += residual_power(e, a.p);
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) a.partials[c] = sum;
  }
}

// SPEC 7: counts[s, i] = #{i' : v_i' <= v_i}. The sorted segment is non-decreasing in
// value, so that count is the end of v_i's tie run: the first position after r whose
// value is greater (upper bound, O(log n)). Values, not bits, are compared, so -0 and +0
// (adjacent keys) form one run.
template <typename T>
__global__ void __launch_bounds__(kThreads)
segment_counts_kernel(const Key<T>* __restrict__ keys, const Index* __restrict__ index, int64_t items, int64_t n,
                      int64_t first_segment, int64_t* __restrict__ counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pos < items; pos += stride) {
    const int64_t local = pos / n, r = pos - local * n;
    const Key<T>* segment = keys + local * n;
    const T v = value_of_ordered<T>(segment[r]);
    int64_t lo = r + 1, hi = n;  // the answer lies in [lo, hi]
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (value_of_ordered<T>(segment[mid]) > v) hi = mid; else lo = mid + 1;
    }
    counts[(first_segment + local) * n + static_cast<int64_t>(index[pos])] = lo;
  }
}

// ---------------------------------------------------------------- drivers

// Runs for each batch: keys written, sorted on `stream`, then visit(first segment, values
// in the batch, sorted keys, their rows, batch number), all on the host's thread.
template <typename T, typename Visit>
void for_each_sorted_batch(const Plan& plan, const T* values, bool torus, const Workspace& ws, cudaStream_t stream,
                           Visit&& visit) {
  const int bits = static_cast<int>(8 * sizeof(Key<T>));
  const int* offsets = ws.offsets;  // the same iterator type as segmented_sort_temp's query
  if (!plan.per_segment) {
    segment_offsets_kernel<<<grid_for(plan.batch_segments + 1, kThreads), kThreads, 0, stream>>>(
        plan.batch_segments + 1, plan.n, ws.offsets);
    check_launch("segment_offsets_kernel");
  }
  for (int64_t b = 0; b < plan.batches; ++b) {
    const int64_t s0 = b * plan.batch_segments;
    const int64_t count = std::min(plan.batch_segments, plan.segments - s0);
    const int64_t items = count * plan.n;
    Key<T>* key_in = static_cast<Key<T>*>(ws.keys[0]);
    segment_keys_kernel<T><<<grid_for(items, kThreads), kThreads, 0, stream>>>(values + s0 * plan.n, items, plan.n,
                                                                               torus, key_in, ws.index[0]);
    check_launch("segment_keys_kernel");
    // Fresh double buffers per batch: the keys kernel always fills buffer 0.
    cub::DoubleBuffer<Key<T>> keys(key_in, static_cast<Key<T>*>(ws.keys[1]));
    cub::DoubleBuffer<Index> index(ws.index[0], ws.index[1]);
    size_t bytes = plan.sort_temp;
    if (plan.per_segment) {
      check_cuda(cub::DeviceRadixSort::SortPairs(ws.sort_temp, bytes, keys, index, static_cast<uint32_t>(items), 0,
                                                 bits, stream),
                 "cub::DeviceRadixSort::SortPairs");
    } else {
      check_cuda(cub::DeviceSegmentedRadixSort::SortPairs(ws.sort_temp, bytes, keys, index, static_cast<int>(items),
                                                          static_cast<int>(count), offsets, offsets + 1, 0, bits,
                                                          stream),
                 "cub::DeviceSegmentedRadixSort::SortPairs");
    }
    visit(s0, items, keys.Current(), index.Current(), b);
  }
}

template <typename T>
void check_workspace(const Plan& plan, void* workspace, size_t ws_bytes, char** base, Workspace* ws,
                     const char* what) {
  const size_t need = workspace_layout<T>(plan, nullptr, nullptr);
  if (workspace == nullptr || ws_bytes < need)
    throw std::invalid_argument(std::string(what) + ": workspace of " + std::to_string(ws_bytes) + " bytes, need " +
                                std::to_string(need) + " (segmented_workspace_bytes)");
  *base = aligned_base(workspace);
  workspace_layout<T>(plan, *base, ws);
}

// a.value is one double on the device.
template <typename T>
void sorted_gaps(const SortedGapsCall<T>& a, cudaStream_t stream) {
  const Plan plan = make_plan<T>(a.segments, a.n, stream);
  char* base = nullptr;
  Workspace ws{};
  check_workspace<T>(plan, a.workspace, a.ws_bytes, &base, &ws, "segmented_forward");
  for_each_sorted_batch<T>(plan, a.values, a.torus, ws, stream,
                           [&](int64_t s0, int64_t items, const Key<T>* keys, const Index* index, int64_t b) {
    // Batches before the last are full, so batch b's partials start at b * batch_chunks.
    const GapsPass<T> pass{keys,        index, items,   a.n,           s0,
                           a.torus,     a.targets, a.p, a.slope,       a.sorted_slope,
                           ws.partials + b * plan.batch_chunks};
    sorted_gaps_kernel<T><<<grid_for(items, kChunk), kRankThreads, 0, stream>>>(pass);
    check_launch("sorted_gaps_kernel");
  });
  sum_partials(ws.partials, plan.chunks, 1.0, a.value, ws.partials + plan.chunks, stream);
}

template <typename T>
void counts_at_or_below(const T* values, int64_t segments, int64_t n, int64_t* counts, void* workspace,
                        size_t ws_bytes, cudaStream_t stream) {
  const Plan plan = make_plan<T>(segments, n, stream);
  char* base = nullptr;
  Workspace ws{};
  check_workspace<T>(plan, workspace, ws_bytes, &base, &ws, "segmented_counts");
  for_each_sorted_batch<T>(plan, values, false, ws, stream,
                           [&](int64_t s0, int64_t items, const Key<T>* keys, const Index* index, int64_t) {
    segment_counts_kernel<T><<<grid_for(items, kThreads), kThreads, 0, stream>>>(keys, index, items, n, s0, counts);
    check_launch("segment_counts_kernel");
  });
}

// ---------------------------------------------------------------- bindings

// The CUDA side of the shared bindings (common/segmented_bind.h). Everything runs on
// `stream`, with no synchronisation; the workspace comes from segmented_workspace_bytes
// (sort keys and rows of one batch of segments, segment offsets, per-2048-position partial
// sums and CUB's temporary storage). Errors: std::invalid_argument (sizes, options,
// workspace), std::runtime_error (CUDA, naming the kernel or CUB call).
struct SegmentedCuda {
  static constexpr const char* kLastArg = "stream";

  template <typename T>
  static size_t workspace_bytes(int64_t segments, int64_t n, uintptr_t stream) {
    return workspace_layout<T>(make_plan<T>(segments, n, stream_of(stream)), nullptr, nullptr);
  }

  template <typename T>
  static void sorted_gaps(const SortedGapsCall<T>& c, uintptr_t stream) {
    cuda::sorted_gaps(c, stream_of(stream));
  }

  template <typename T>
  static void counts(const T* values, int64_t segments, int64_t n, int64_t* counts, void* workspace,
                     size_t ws_bytes, uintptr_t stream) {
    counts_at_or_below<T>(values, segments, n, counts, workspace, ws_bytes, stream_of(stream));
  }
};

}  // namespace

void bind_segmented(py::module_& m) { bind_segmented_engine<SegmentedCuda>(m); }

}  // namespace cuda
}  // namespace gaussreg
