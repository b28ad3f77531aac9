// gaussreg._C: the OpenMP implementations. Framework-free: pointers arrive as ints.
#include <pybind11/pybind11.h>

#if defined(GAUSSREG_HAVE_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace gaussreg {
namespace cpu {
void bind_gaussian_l2(py::module_& m);
void bind_mmd(py::module_& m);
void bind_cramer_wold(py::module_& m);
void bind_cdf_attraction(py::module_& m);
void bind_segmented(py::module_& m);
void bind_epps_pulley(py::module_& m);
}  // namespace cpu
}  // namespace gaussreg

PYBIND11_MODULE(_C, m) {
  m.doc() = "gaussreg CPU kernels (C++17, OpenMP)";
#if defined(GAUSSREG_HAVE_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  gaussreg::cpu::bind_gaussian_l2(m);
  gaussreg::cpu::bind_mmd(m);
  gaussreg::cpu::bind_cramer_wold(m);
  gaussreg::cpu::bind_cdf_attraction(m);
  gaussreg::cpu::bind_segmented(m);
  gaussreg::cpu::bind_epps_pulley(m);
}
