// OpenMP engine for the pair-kernel sums of SPEC 3, 4 and 5 (value and gradient fused in
// one pass over the pairs, O((n + m) D) memory, never an n x m matrix).
//
// Layout: y is packed into "panels" of L = 64 bytes / sizeof(T) points stored
// dimension-major (panel[c][l]), so that L squared distances, kernel values and the
// y-side gradient updates are each one SIMD vector; x into "quads" of kRowBlock rows
// stored dimension-major (quad[c][r]), so the micro-kernel reads all its x values from one
// pointer. The x-side gradient of a row is accumulated lane-wise over a tile and reduced
// once per row and tile.
//
// Work is cut into square blocks of points and scheduled in rounds in which no two
// tasks touch the same block (round-robin pairing for x with itself, cyclic diagonals
// for x against y). Gradients are then written without atomics or per-thread copies,
// and the summation order does not depend on the thread count: results are bitwise
// reproducible.
#pragma once

#include "common/interrupt.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(GAUSSREG_HAVE_OPENMP)
#include <omp.h>
#endif

#include "common/config.h"
#include "common/pair_sum_args.h"

namespace gaussreg {
namespace cpu {

template <typename T>
constexpr int simd_lanes() {
  return static_cast<int>(64 / sizeof(T));
}

// Rows handled together by the micro-kernel: each panel load then feeds kRowBlock rows, and
// 2 * kRowBlock independent FMA chains hide the FMA latency of the distance sums.
constexpr int kRowBlock = 4;

// Panels per micro-kernel call: more panels amortise the row accumulators' loads and stores
// (4 rows x 4 panels: 16 accumulators, measured ~15% faster than 4 x 2 at D = 64).
constexpr int kPanelBlock = 4;

constexpr std::size_t kPageBytes = 4096;

// The first address at or after p whose offset from `ref` is `offset` modulo 4 KiB. x86
// cores stall a load on an earlier store to the same page offset ("4K aliasing"); keeping
// the y-gradient panels half a page away from the y panels read in the same loop avoids it.
template <typename T>
T* page_offset_from(T* p, const T* ref, std::size_t offset) {
  const std::size_t have = (reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(ref)) % kPageBytes;
  const std::size_t shift = (offset + kPageBytes - have) % kPageBytes;
  return reinterpret_cast<T*>(reinterpret_cast<char*>(p) + shift);
}

inline std::size_t align64(std::size_t b) { return (b + 63) & ~std::size_t(63); }

// Block edge: a multiple of kPanelBlock panels, from the sizes alone so
// that the summation order, hence every bit of the result, is the same for any thread
// count. About 16 blocks along the longer side keep 8 threads busy per round; up to 32
// panels per tile amortise the per-row, per-tile reduction of the x-side gradient
// lanes, and a tile's y panels stay within L2.
template <typename T>
index_t block_edge(index_t n, index_t m) {
  const index_t step = kPanelBlock * simd_lanes<T>();
  const index_t target = ceil_div(std::max(n, m), 16);
  return std::clamp<index_t>(ceil_div(target, step) * step, step, 8 * step);
}

// Byte offsets of the workspace regions; the same function sizes and carves it.
template <typename T>
struct WorkspacePlan {
  index_t edge = 0, panels = 0, quads = 0, blocks = 0;
  std::size_t quads_off = 0, panels_off = 0, pquad_off = 0, ppanel_off = 0, thread_off = 0, thread_stride = 0,
              partial_off = 0, total = 0;

  WorkspacePlan(index_t n, index_t m_or_0, index_t d, int threads) {
    const bool self = m_or_0 == 0;
    const index_t m = self ? n : m_or_0;
    const index_t L = simd_lanes<T>();
    edge = block_edge<T>(n, m);
    panels = ceil_div(m, L);
    quads = ceil_div(n, kRowBlock);
    blocks = std::max(ceil_div(n, edge), ceil_div(m, edge));
    std::size_t off = 0;
    quads_off = off;
    off += align64(sizeof(T) * quads * kRowBlock * d);
    panels_off = off;
    off += align64(sizeof(T) * panels * d * L);
    pquad_off = off;
    off += align64(sizeof(T) * quads * kRowBlock);
    ppanel_off = off;
    off += align64(sizeof(T) * panels * L);
    thread_stride = align64(sizeof(T) * (kRowBlock * d * L + edge * d) + kPageBytes);
    thread_off = off;
    off += thread_stride * static_cast<std::size_t>(std::max(threads, 1));
    partial_off = off;
    off += align64(sizeof(double) * blocks);
    total = off + 64;  // slack to align the caller's pointer to 64 bytes
  }
};

template <typename T>
std::size_t pair_sum_workspace_bytes(index_t n, index_t m_or_0, index_t d, int threads) {
  return WorkspacePlan<T>(n, m_or_0, d, threads).total;
}

// The packed operands every tile reads.
template <typename T>
struct Packed {
  const T* quads;   // (ceil(n / kRowBlock), d, kRowBlock), rows past n zero
  const T* panels;  // (ceil(m / L), d, L), points past m zero
  const T* pquad;   // (ceil(n / kRowBlock) * kRowBlock) per-point parameters of x, zeros when absent
  const T* ppanel;  // (ceil(m / L) * L) per-point parameters of y
  index_t n, m, d;
};

// One SIMD register of T (64 bytes: 16 floats or 8 doubles). GCC/Clang vector extensions
// keep the micro-kernel's accumulators in registers on any target (one zmm with AVX-512,
// two ymm with AVX2, lowered otherwise).
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(64)));
};

// Sum of the lanes of a vector by repeated halving (a fixed order: results stay bitwise
// reproducible), 4 vector adds for 16 floats instead of 15 dependent scalar adds.
template <typename T, int kBytes>
inline T lane_sum(const void* v) {
  if constexpr (kBytes == static_cast<int>(sizeof(T))) {
    T x;
    std::memcpy(&x, v, sizeof(T));
    return x;
  } else {
    typedef T half __attribute__((vector_size(kBytes / 2)));
    half lo, hi;
    std::memcpy(&lo, v, kBytes / 2);
    std::memcpy(&hi, static_cast<const char*>(v) + kBytes / 2, kBytes / 2);
    const half both = lo + hi;
    return lane_sum<T, kBytes / 2>(&both);
  }
}

// Which pairs of a micro-kernel call count: rows i + r < n, points j < j1, and on diagonal
// tiles of a self sum only j > i + r (each unordered pair once).
struct PairMask {
  index_t n, j1;
  bool diagonal;
  // True when every pair of the call counts, so the kernel can skip the masking.
  bool all_valid(index_t i, index_t jfirst, index_t jend) const {
    return i + kRowBlock <= n && jend <= j1 && (!diagonal || jfirst > i + kRowBlock - 1);
  }
};

// kRowBlock rows of x (the quad starting at row i) against kPanels consecutive panels
// (kPanels * L points of y starting at panel p): the SPEC 3/4/5 pair terms. Squared
// distances come from coordinate differences; then kernel values and derivatives
// (masked as PairMask says), values into vsum, and when kGrad the row-side accumulators
// acc (d, kRowBlock, L: the rows of one coordinate side by side, so one sweep's loads and
// stores never sit 4 KiB apart) and the panels' y-side gradients gp (d, L each). Each
// (row, panel) pair is an independent FMA chain, which hides the FMA latency; each panel
// load and accumulator update feeds kRowBlock * kPanels pairs.
template <typename T, typename K, bool kGrad, bool kGradY, int kPanels>
inline void micro_kernel(const Packed<T>& pk, const K& kern, index_t i, index_t p, const PairMask& mask,
                         typename Simd<T>::type* vsum, T* acc, T* gp_first) {
  using V = typename Simd<T>::type;
  constexpr int L = simd_lanes<T>();
  constexpr int R = kRowBlock;
  const index_t d = pk.d;
  const T* xq = pk.quads + (i / R) * d * R;
  const V* panel[kPanels];
  for (int q = 0; q < kPanels; ++q) panel[q] = reinterpret_cast<const V*>(pk.panels + (p + q) * d * L);

  V t[R][kPanels];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kPanels; ++q) t[r][q] = V{};
  for (index_t c = 0; c < d; ++c) {
    V pv[kPanels];
    for (int q = 0; q < kPanels; ++q) pv[q] = panel[q][c];
    for (int r = 0; r < R; ++r) {
      const T xc = xq[c * R + r];
      for (int q = 0; q < kPanels; ++q) {
        const V diff = pv[q] - xc;
        t[r][q] += diff * diff;
      }
    }
  }

  // Kernel terms lane by lane (the functors are scalar; these loops vectorize).
  alignas(64) T kk[R][kPanels][L];
  alignas(64) T ww[R][kPanels][L];
  const int terms = kern.num_terms();
  for (int r = 0; r < R; ++r) {
    const T pi = pk.pquad[i + r];
    for (int q = 0; q < kPanels; ++q) {
      alignas(64) T tt[L];
      std::memcpy(tt, &t[r][q], sizeof(V));
      const T* pj = pk.ppanel + (p + q) * L;
      T* k = kk[r][q];
      T* dk = ww[r][q];
#pragma omp simd
      for (int l = 0; l < L; ++l) k[l] = dk[l] = T(0);
      for (int s = 0; s < terms; ++s) {
#pragma omp simd
        for (int l = 0; l < L; ++l) kern.eval(s, tt[l], pi, pj[l], k[l], dk[l]);
      }
    }
  }
  if (!mask.all_valid(i, p * L, (p + kPanels) * L)) {
    for (int r = 0; r < R; ++r) {
      const index_t jmin = mask.diagonal ? i + r + 1 : 0;
      const bool row_valid = i + r < mask.n;
      for (int q = 0; q < kPanels; ++q) {
        const index_t jbase = (p + q) * L;
        for (int l = 0; l < L; ++l) {
          const index_t j = jbase + l;
          if (!(row_valid && j < mask.j1 && j >= jmin)) kk[r][q][l] = ww[r][q][l] = T(0);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kPanels; ++q) {
      V kv;
      std::memcpy(&kv, kk[r][q], sizeof(V));
      vsum[r] += kv;
    }
  if (!kGrad) return;

  V w[R][kPanels];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < kPanels; ++q) std::memcpy(&w[r][q], ww[r][q], sizeof(V));
  V* gp[kPanels];
  for (int q = 0; q < kPanels; ++q) gp[q] = reinterpret_cast<V*>(gp_first + q * d * L);
  V* ac = reinterpret_cast<V*>(acc);
  for (index_t c = 0; c < d; ++c) {
    V pv[kPanels], g[kPanels];
    for (int q = 0; q < kPanels; ++q) {
      pv[q] = panel[q][c];
      g[q] = kGradY ? gp[q][c] : V{};
    }
    for (int r = 0; r < R; ++r) {
      const T xc = xq[c * R + r];
      V a = ac[c * R + r];
      for (int q = 0; q < kPanels; ++q) {
        // Two FMAs on one difference (not a shared product): 3 vector ops per pair and coordinate.
        const V diff = xc - pv[q];
        a += w[r][q] * diff;
        if (kGradY) g[q] -= w[r][q] * diff;
      }
      ac[c * R + r] = a;
    }
    if (kGradY)
      for (int q = 0; q < kPanels; ++q) gp[q][c] = g[q];
  }
}

// The quad of rows starting at i (a multiple of kRowBlock) against the points [j0, j1) of y
// (j0 a multiple of L).
template <typename T, typename K, bool kGrad, bool kGradY>
void run_quad(const Packed<T>& pk, const K& kern, index_t i, index_t j0, index_t j1, bool diagonal, T* acc,
              T* gpanel, T* grad_x, double& value) {
  using V = typename Simd<T>::type;
  constexpr int L = simd_lanes<T>();
  constexpr int R = kRowBlock;
  const index_t d = pk.d;
  const index_t p0 = j0 / L, p1 = ceil_div(j1, L);
  const PairMask mask{pk.n, j1, diagonal};
  if (kGrad) std::fill(acc, acc + R * d * L, T(0));
  V vsum[R];
  for (int r = 0; r < R; ++r) vsum[r] = V{};
  // Diagonal tiles start at the panel holding i + 1: earlier panels are all masked.
  index_t p = diagonal ? std::max(p0, (i + 1) / L) : p0;
  for (; p + kPanelBlock <= p1; p += kPanelBlock)
    micro_kernel<T, K, kGrad, kGradY, kPanelBlock>(pk, kern, i, p, mask, vsum, acc, gpanel + (p - p0) * d * L);
  for (; p < p1; ++p)
    micro_kernel<T, K, kGrad, kGradY, 1>(pk, kern, i, p, mask, vsum, acc, gpanel + (p - p0) * d * L);
  for (int r = 0; r < R && i + r < pk.n; ++r) {
    double row_value = 0;
    for (int l = 0; l < L; ++l) row_value += vsum[r][l];
    value += row_value;
    if (kGrad) {
      T* gi = grad_x + (i + r) * d;
      for (index_t c = 0; c < d; ++c) gi[c] += lane_sum<T, 64>(acc + (c * R + r) * L);
    }
  }
}

// One tile: rows [i0, i1) of x (i0 a multiple of kRowBlock) against points [j0, j1) of y
// (j0 a multiple of L); the y-side gradient (kGradY) is gathered per tile in panel layout.
template <typename T, typename K, bool kGrad, bool kGradY>
void run_tile(const Packed<T>& pk, const K& kern, index_t i0, index_t i1, index_t j0, index_t j1, bool diagonal,
              T* acc, T* gpanel, T* grad_x, T* grad_y, double& value) {
  constexpr int L = simd_lanes<T>();
  const index_t d = pk.d;
  const index_t p0 = j0 / L, p1 = ceil_div(j1, L);
  if (kGradY) std::fill(gpanel, gpanel + (p1 - p0) * d * L, T(0));
  double tile_value = 0;
  for (index_t i = i0; i < i1; i += kRowBlock)
    run_quad<T, K, kGrad, kGradY>(pk, kern, i, j0, j1, diagonal, acc, gpanel, grad_x, tile_value);
  value += tile_value;
  if (kGradY) {
    for (index_t p = p0; p < p1; ++p) {
      const T* gp = gpanel + (p - p0) * d * L;
      for (int l = 0; l < L; ++l) {
        const index_t j = p * L + l;
        if (j >= j1) break;
        T* gj = grad_y + j * d;
        for (index_t c = 0; c < d; ++c) gj[c] += gp[c * L + l];
      }
    }
  }
}

// Round-robin ("circle method") pairing of B blocks: B' = B rounded up to even, B' - 1
// rounds of disjoint pairs; a pair with the phantom block B (B odd) is skipped.
inline std::vector<std::vector<std::pair<index_t, index_t>>> self_rounds(index_t blocks) {
  std::vector<std::vector<std::pair<index_t, index_t>>> rounds;
  const index_t even = blocks + (blocks % 2);
  for (index_t r = 0; r + 1 < even; ++r) {
    std::vector<std::pair<index_t, index_t>> tasks;
    auto add = [&](index_t a, index_t b) {
      if (a < blocks && b < blocks) tasks.emplace_back(std::min(a, b), std::max(a, b));
    };
    add(even - 1, r);
    for (index_t k = 1; k < even / 2; ++k) add((r + k) % (even - 1), (r - k + even - 1) % (even - 1));
    rounds.push_back(std::move(tasks));
  }
  std::vector<std::pair<index_t, index_t>> diagonal;
  for (index_t b = 0; b < blocks; ++b) diagonal.emplace_back(b, b);
  rounds.push_back(std::move(diagonal));
  return rounds;
}

// Cyclic diagonals for x blocks against y blocks: round r pairs block a with (a + r) mod B.
inline std::vector<std::vector<std::pair<index_t, index_t>>> cross_rounds(index_t bx, index_t by) {
  const index_t b = std::max(bx, by);
  std::vector<std::vector<std::pair<index_t, index_t>>> rounds;
  for (index_t r = 0; r < b; ++r) {
    std::vector<std::pair<index_t, index_t>> tasks;
    for (index_t a = 0; a < bx; ++a) {
      const index_t c = (a + r) % b;
      if (c < by) tasks.emplace_back(a, c);
    }
    if (!tasks.empty()) rounds.push_back(std::move(tasks));
  }
  return rounds;
}

template <typename T>
void pack_quads(const T* src, index_t n, index_t d, index_t s0, index_t s1, index_t quads, T* out) {
  constexpr int R = kRowBlock;
#pragma omp for schedule(static)
  for (index_t b = 0; b < quads; ++b)
    for (index_t c = 0; c < d; ++c)
      for (int r = 0; r < R; ++r) {
        const index_t i = b * R + r;
        out[(b * d + c) * R + r] = i < n ? src[i * s0 + c * s1] : T(0);
      }
}

template <typename T>
void pack_panels(const T* src, index_t m, index_t d, index_t s0, index_t s1, index_t panels, T* out) {
  constexpr int L = simd_lanes<T>();
#pragma omp for schedule(static)
  for (index_t p = 0; p < panels; ++p)
    for (index_t c = 0; c < d; ++c)
      for (int l = 0; l < L; ++l) {
        const index_t j = p * L + l;
        out[(p * d + c) * L + l] = j < m ? src[j * s0 + c * s1] : T(0);
      }
}

template <typename T>
void pack_params(const T* src, index_t count, index_t padded, T* out) {
#pragma omp for schedule(static)
  for (index_t i = 0; i < padded; ++i) out[i] = (src != nullptr && i < count) ? src[i] : T(0);
}

template <typename T>
void check_args(const PairSumArgs<T>& a) {
  check_pair_sum_args(a, pair_sum_workspace_bytes<T>(a.n, a.y ? a.m : 0, a.d, a.num_threads));
}

// Entry point of the engine: value (and gradients when asked) of the pair sum.
template <typename T, typename K>
void pair_sum(const PairSumArgs<T>& a, const K& kern, InterruptPoll poll = {}) {
  check_args(a);
  const bool self = a.y == nullptr;
  const index_t n = a.n, d = a.d, m = self ? a.n : a.m;
  const WorkspacePlan<T> plan(n, self ? 0 : m, d, a.num_threads);
  // The micro-kernel's vector loads need 64-byte alignment; the plan reserved the slack.
  char* ws = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(a.workspace) + 63) & ~std::uintptr_t(63));
  T* quads = reinterpret_cast<T*>(ws + plan.quads_off);
  T* panels = reinterpret_cast<T*>(ws + plan.panels_off);
  T* pquad = reinterpret_cast<T*>(ws + plan.pquad_off);
  T* ppanel = reinterpret_cast<T*>(ws + plan.ppanel_off);
  double* partial = reinterpret_cast<double*>(ws + plan.partial_off);
  constexpr index_t L = simd_lanes<T>();
  const index_t bx = ceil_div(n, plan.edge), by = ceil_div(m, plan.edge);
  const auto rounds = self ? self_rounds(bx) : cross_rounds(bx, by);
  const bool grad = a.grad_x != nullptr;
  T* grad_y = self ? a.grad_x : a.grad_y;  // nullptr in a cross sum whose y needs no gradient
  const bool grad_y_wanted = grad && grad_y != nullptr;
  const Packed<T> pk{quads, panels, pquad, ppanel, n, m, d};

  // More threads than the largest round has tasks would only wait at its barriers.
  std::size_t widest = 1;
  for (const auto& tasks : rounds) widest = std::max(widest, tasks.size());
  const int threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(a.num_threads), widest));
  bool stop = false;  // set between rounds by the master thread when an interrupt is pending

#pragma omp parallel num_threads(threads)
  {
#if defined(GAUSSREG_HAVE_OPENMP)
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    pack_quads(a.x, n, d, a.x_stride0, a.x_stride1, plan.quads, quads);
    if (self) {
      pack_panels(a.x, n, d, a.x_stride0, a.x_stride1, plan.panels, panels);
      pack_params(a.px, n, plan.panels * L, ppanel);
    } else {
      pack_panels(a.y, m, d, a.y_stride0, a.y_stride1, plan.panels, panels);
      pack_params(a.py, m, plan.panels * L, ppanel);
    }
    pack_params(a.px, n, plan.quads * kRowBlock, pquad);
#pragma omp for schedule(static)
    for (index_t b = 0; b < plan.blocks; ++b) partial[b] = 0;
    if (grad) {
#pragma omp for schedule(static)
      for (index_t i = 0; i < n * d; ++i) a.grad_x[i] = T(0);
      if (!self && grad_y_wanted) {
#pragma omp for schedule(static)
        for (index_t j = 0; j < m * d; ++j) a.grad_y[j] = T(0);
      }
    }
    T* acc = reinterpret_cast<T*>(ws + plan.thread_off + plan.thread_stride * tid);
    T* gpanel = page_offset_from(acc + kRowBlock * d * L, panels, kPageBytes / 2);
    for (const auto& tasks : rounds) {
      // The implicit barrier at the end of each round keeps the blocks of a round disjoint.
#pragma omp for schedule(dynamic, 1)
      for (std::size_t t = 0; t < tasks.size(); ++t) {
        const index_t bi = tasks[t].first, bj = tasks[t].second;
        const index_t i0 = bi * plan.edge, i1 = std::min(n, i0 + plan.edge);
        const index_t j0 = bj * plan.edge, j1 = std::min(m, j0 + plan.edge);
        const bool diagonal = self && bi == bj;
        if (grad_y_wanted)
          run_tile<T, K, true, true>(pk, kern, i0, i1, j0, j1, diagonal, acc, gpanel, a.grad_x, grad_y, partial[bi]);
        else if (grad)
          run_tile<T, K, true, false>(pk, kern, i0, i1, j0, j1, diagonal, acc, gpanel, a.grad_x, nullptr, partial[bi]);
        else
          run_tile<T, K, false, false>(pk, kern, i0, i1, j0, j1, diagonal, acc, gpanel, nullptr, nullptr,
                                       partial[bi]);
      }
      // Between rounds (each a fraction of the pairs): the thread that entered asks whether
      // to stop, and the team leaves together.
#pragma omp master
      stop = poll.requested();
#pragma omp barrier
      if (stop) break;
    }
  }
  if (stop) throw Interrupted();
  double total = 0;
  for (index_t b = 0; b < plan.blocks; ++b) total += partial[b];
  *a.value = total;
}

}  // namespace cpu
}  // namespace gaussreg
