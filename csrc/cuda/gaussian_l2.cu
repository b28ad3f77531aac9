// CUDA pair sums of the Gaussian-smoothed L2 distance (SPEC 3): the kernels of common/gaussian_l2.h on the CUDA engine.
#include "common/gaussian_l2.h"

#include "cuda/backend.cuh"

namespace gaussreg {
namespace cuda {

void bind_gaussian_l2(py::module_& m) { bind_pair_sum_stem<CudaBackend, GaussianL2Stem>(m, "gaussian_l2"); }

}  // namespace cuda
}  // namespace gaussreg
