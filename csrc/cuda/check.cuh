// Turning CUDA errors into C++ exceptions that name the kernel (-> RuntimeError in Python).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include <stdexcept>
#include <string>

namespace gaussreg {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("gaussreg CUDA: ") + what + ": " + cudaGetErrorString(err));
}

// After a launch: a bad configuration shows up here; faults in the kernel surface at the
// next synchronising call, as usual in CUDA (no device sync in the core).
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// The stream crosses the Python boundary as an integer (torch's cuda_stream handle).
inline cudaStream_t stream_of(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

}  // namespace cuda
}  // namespace gaussreg
