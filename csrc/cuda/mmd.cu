// CUDA pair sums of WAE-MMD (SPEC 4): the kernels of common/mmd.h on the CUDA engine.
#include "common/mmd.h"

#include "cuda/backend.cuh"

namespace gaussreg {
namespace cuda {

void bind_mmd(py::module_& m) { bind_pair_sum_stem<CudaBackend, MmdStem>(m, "mmd"); }

}  // namespace cuda
}  // namespace gaussreg
