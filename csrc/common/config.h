// Shared configuration for code compiled by both the host compiler and nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define GAUSSREG_HD __host__ __device__ __forceinline__
#else
#define GAUSSREG_HD inline
#endif

// Unroll the next loop in device code, or keep it rolled (host builds leave it to the compiler).
#if defined(__CUDA_ARCH__)
#define GAUSSREG_UNROLL _Pragma("unroll")
#define GAUSSREG_UNROLL_TWICE _Pragma("unroll 2")
#define GAUSSREG_NO_UNROLL _Pragma("unroll 1")
#else
#define GAUSSREG_UNROLL
#define GAUSSREG_UNROLL_TWICE
#define GAUSSREG_NO_UNROLL
#endif

namespace gaussreg {

// x * y + z rounded once, on the device and on the host (the same bits on both).
template <typename T>
GAUSSREG_HD T fused_multiply_add(T x, T y, T z) {
#if defined(__CUDA_ARCH__)
  return fma(x, y, z);
#else
  return std::fma(x, y, z);
#endif
}

// Element types crossing the Python boundary, in the order _native.py uses.
enum class DType : int { Float32 = 0, Float64 = 1 };

// True for float32, false for float64; any other code is a caller's bug.
inline bool is_float(int dtype) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument("dtype code " + std::to_string(dtype) + " is neither float32 (0) nor float64 (1)");
  return dtype == static_cast<int>(DType::Float32);
}

// fn(float{}) or fn(double{}) for a dtype code: the one dispatch of every binding.
template <typename Fn>
auto by_dtype(int dtype, Fn&& fn) {
  return is_float(dtype) ? fn(float{}) : fn(double{});
}

// Pointers cross the Python boundary as integers (tensor.data_ptr()).
template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// A binding's required pointers: the first that is null raises std::invalid_argument (a
// ValueError in Python) naming it, instead of a crash in the kernel.
struct NamedPointer {
  const char* name;
  std::uintptr_t address;
};
inline void require_pointers(const char* what, std::initializer_list<NamedPointer> pointers) {
  for (const NamedPointer& p : pointers)
    if (p.address == 0) throw std::invalid_argument(std::string(what) + ": null pointer for " + p.name);
}

}  // namespace gaussreg
