// The CUDA backend of the shared pair-sum bindings (common/pair_sum_bind.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/pair_sum_args.h"
#include "common/pair_sum_bind.h"
#include "cuda/pair_sum.cuh"

namespace gaussreg {
namespace cuda {

struct CudaBackend {
  static constexpr const char* kLastArg = "stream";

  template <typename T>
  static std::size_t workspace_bytes(index_t n, index_t m_or_0, index_t d, std::uintptr_t) {
    return pair_sum_workspace_bytes<T>(n, m_or_0, d);
  }

  template <typename T, typename Stem>
  static void run(int kind, const std::vector<double>& params, const PairSumArgs<T>& args, std::uintptr_t stream) {
    Stem::template with_kernel<T>(kind, params, [&](const auto& kernel) {
      pair_sum(args, kernel, reinterpret_cast<cudaStream_t>(stream));
    });
  }
};

}  // namespace cuda
}  // namespace gaussreg
