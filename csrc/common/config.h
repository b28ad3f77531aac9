// Shared configuration for code compiled by both the host compiler and nvcc.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define GAUSSREG_HD __host__ __device__ __forceinline__
#else
#define GAUSSREG_HD inline
#endif

namespace gaussreg {

// Element types crossing the Python boundary, in the order _native.py uses.
enum class DType : int { Float32 = 0, Float64 = 1 };

// True for float32, false for float64; any other code is a caller's bug.
inline bool is_float(int dtype) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument("dtype code " + std::to_string(dtype) + " is neither float32 (0) nor float64 (1)");
  return dtype == static_cast<int>(DType::Float32);
}

// Pointers cross the Python boundary as integers (tensor.data_ptr()).
template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace gaussreg
