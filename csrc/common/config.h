// Shared configuration for code compiled by both the host compiler and nvcc.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GAUSSREG_HD __host__ __device__ __forceinline__
#else
#define GAUSSREG_HD inline
#endif

namespace gaussreg {

// Element types crossing the Python boundary, in the order _native.py uses.
enum class DType : int { Float32 = 0, Float64 = 1 };

}  // namespace gaussreg
