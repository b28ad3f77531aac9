// Asking Linux to back a large per-call buffer with 2 MiB pages.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gaussreg {
namespace cpu {

// The full sort writes its n' entries and residuals at random positions: with 4 KiB pages
// nearly every such write misses the TLB, and the first touch of each page faults (8192
// faults for the 32 MiB of residuals at n = 4096). Transparent huge pages in "madvise" mode
// (the usual default) back only ranges that ask; this asks for the whole 2 MiB pages inside
// [ptr, ptr + bytes). A hint: where it is refused or unsupported nothing changes.
inline void prefer_huge_pages(void* ptr, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (ptr != nullptr && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace gaussreg
