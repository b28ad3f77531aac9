// The CPU backend of the shared pair-sum bindings (common/pair_sum_bind.h).
#pragma once

#include <cstdint>
#include <vector>

#include "common/pair_sum_args.h"
#include "common/pair_sum_bind.h"
#include "cpu/pair_sum.h"
#include "cpu/python_interrupt.h"

namespace gaussreg {
namespace cpu {

struct CpuBackend {
  static constexpr const char* kLastArg = "num_threads";

  template <typename T>
  static std::size_t workspace_bytes(index_t n, index_t m_or_0, index_t d, std::uintptr_t num_threads) {
    return pair_sum_workspace_bytes<T>(n, m_or_0, d, threads(num_threads));
  }

  template <typename T, typename Stem>
  static void run(int kind, const std::vector<double>& params, PairSumArgs<T> args, std::uintptr_t num_threads) {
    args.num_threads = threads(num_threads);
    // The shared binding has released the GIL; a Ctrl-C between rounds raises KeyboardInterrupt.
    run_interruptible_released([&](InterruptPoll poll) {
      Stem::template with_kernel<T>(kind, params, [&](const auto& kernel) { pair_sum(args, kernel, poll); });
    });
  }

 private:
  static int threads(std::uintptr_t requested) { return requested < 1 ? 1 : static_cast<int>(requested); }
};

}  // namespace cpu
}  // namespace gaussreg
