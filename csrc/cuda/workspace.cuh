// Carving one caller-allocated workspace into aligned buffers (the engines never cudaMalloc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace gaussreg {
namespace cuda {

constexpr size_t kWorkspaceAlign = 256;  // CUB's own alignment for its buffers

inline size_t align_up(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// parts[i] = the i-th buffer of sizes[i] bytes in `base` (nullptr: sizes only). Returns the
// bytes to allocate, with the slack that aligned_base() may skip at the start.
template <size_t N>
size_t carve_workspace(char* base, const size_t (&sizes)[N], void* (&parts)[N]) {
  size_t offset = 0;
  for (size_t i = 0; i < N; ++i) {
    parts[i] = base == nullptr ? nullptr : base + offset;
    offset += align_up(sizes[i]);
  }
  return offset + kWorkspaceAlign;
}

// The first aligned address of a workspace the caller allocated (torch aligns less strictly).
inline char* aligned_base(void* workspace) {
  return reinterpret_cast<char*>(align_up(reinterpret_cast<uintptr_t>(workspace)));
}

}  // namespace cuda
}  // namespace gaussreg
