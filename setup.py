"""Build gaussreg's compiled modules with CMake + Ninja.

Environment:
  GAUSSREG_CUDA_ARCHS  CUDA architectures for gaussreg._cuda (default "80;90", PTX for the last)
  GAUSSREG_NO_CUDA=1   skip the CUDA module even when nvcc is found
  GAUSSREG_NATIVE=0    build the CPU module for a generic x86-64/arm64 target instead of -march=native
  GAUSSREG_DEBUG=1     build without optimisation, with assertions
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def _cmake_executable():
    found = shutil.which("cmake")
    if found:
        return found
    try:  # the cmake wheel from pyproject's build requirements
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        sys.exit("gaussreg: CMake >= 3.24 is needed to build the compiled modules (pip install cmake)")


def _cmake_args(ext_dir, build_type):
    import pybind11

    args = [
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DCMAKE_BUILD_TYPE={build_type}",
        "-G", "Ninja",
    ]
    try:
        import ninja

        args.append(f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}")
    except ImportError:
        pass  # a system ninja on PATH
    args.append(f"-DGAUSSREG_CUDA_ARCHS={os.environ.get('GAUSSREG_CUDA_ARCHS', '80;90')}")
    if os.environ.get("GAUSSREG_NO_CUDA", "0") == "1":
        args.append("-DGAUSSREG_WITH_CUDA=OFF")
    if os.environ.get("GAUSSREG_NATIVE", "1") == "0":
        args.append("-DGAUSSREG_NATIVE=OFF")
    return args


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        ext_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = "Debug" if os.environ.get("GAUSSREG_DEBUG", "0") == "1" else "Release"
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _cmake_executable()
        subprocess.run([cmake, str(ROOT), *_cmake_args(ext_dir, build_type)], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("gaussreg._C")],
    cmdclass={"build_ext": CMakeBuild},
)
