// CUDA pair sums of the Cramer-Wold distance (SPEC 5): the kernels of common/cramer_wold.h on the CUDA engine.
#include "common/cramer_wold.h"

#include "cuda/backend.cuh"

namespace gaussreg {
namespace cuda {

void bind_cramer_wold(py::module_& m) { bind_pair_sum_stem<CudaBackend, CramerWoldStem>(m, "cramer_wold"); }

}  // namespace cuda
}  // namespace gaussreg
