// CPU pair sums of the Gaussian-smoothed L2 distance (SPEC 3): the kernels of common/gaussian_l2.h on the OpenMP engine.
#include "common/gaussian_l2.h"

#include "cpu/backend.h"

namespace gaussreg {
namespace cpu {

void bind_gaussian_l2(py::module_& m) { bind_pair_sum_stem<CpuBackend, GaussianL2Stem>(m, "gaussian_l2"); }

}  // namespace cpu
}  // namespace gaussreg
