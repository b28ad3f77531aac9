// CPU pair sums of the Cramer-Wold distance (SPEC 5): the kernels of common/cramer_wold.h on
// the OpenMP engine; also 1F1 itself, so tests check the header the kernels use.
#include "common/cramer_wold.h"

#include <pybind11/numpy.h>

#include "cpu/backend.h"

namespace gaussreg {
namespace cpu {

void bind_cramer_wold(py::module_& m) {
  bind_pair_sum_stem<CpuBackend, CramerWoldStem>(m, "cramer_wold");
  m.def(
      "hyp1f1_neg",
      [](double a, double b, py::array_t<double, py::array::c_style | py::array::forcecast> s) {
        py::array_t<double> out(s.size());
        const double* in = s.data();
        double* o = out.mutable_data();
        for (py::ssize_t i = 0; i < s.size(); ++i) o[i] = hyp1f1_neg(a, b, in[i]);
        return out;
      },
      py::arg("a"), py::arg("b"), py::arg("s"), "1F1(a; b; -s) elementwise, s >= 0 (common/hyp1f1.h).");
}

}  // namespace cpu
}  // namespace gaussreg
