// gaussreg._cuda: the CUDA implementations. Framework-free: pointers and the stream arrive as ints.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace gaussreg {
namespace cuda {
void bind_gaussian_l2(py::module_& m);
void bind_mmd(py::module_& m);
void bind_cramer_wold(py::module_& m);
void bind_cdf_attraction(py::module_& m);
void bind_segmented(py::module_& m);
void bind_epps_pulley(py::module_& m);
}  // namespace cuda
}  // namespace gaussreg

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "gaussreg CUDA kernels (CUB, static CUDA runtime)";
  m.def("device_count", []() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
  }, "CUDA devices visible to the module's runtime.");
  gaussreg::cuda::bind_gaussian_l2(m);
  gaussreg::cuda::bind_mmd(m);
  gaussreg::cuda::bind_cramer_wold(m);
  gaussreg::cuda::bind_cdf_attraction(m);
  gaussreg::cuda::bind_segmented(m);
  gaussreg::cuda::bind_epps_pulley(m);
}
