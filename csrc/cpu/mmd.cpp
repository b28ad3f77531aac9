// CPU pair sums of WAE-MMD (SPEC 4): the kernels of common/mmd.h on the OpenMP engine.
#include "common/mmd.h"

#include "cpu/backend.h"

namespace gaussreg {
namespace cpu {

void bind_mmd(py::module_& m) { bind_pair_sum_stem<CpuBackend, MmdStem>(m, "mmd"); }

}  // namespace cpu
}  // namespace gaussreg
