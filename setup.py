"""Build gaussreg's compiled modules with CMake + Ninja.

Environment:
  GAUSSREG_CUDA_ARCHS  CUDA architectures for gaussreg._cuda (default "80;90", PTX for the last)
  GAUSSREG_CUDA=1      always build the CUDA module gaussreg._cuda (fails without nvcc);
                       build machines and CI, where no GPU is visible
  GAUSSREG_NO_CUDA=1   never build it
  (neither)            build it when nvcc is found and a GPU is visible (nvidia-smi lists
                       one): a GPU user gets it, a CPU user does not wait several minutes
  GAUSSREG_NATIVE=0    build the CPU module for a generic x86-64/arm64 target instead of -march=native
  GAUSSREG_DEBUG=1     build without optimisation, with assertions

Every build also writes gaussreg/_build_info.py (into the wheel, or the source tree for an
editable install; not tracked by git): the git commit of the source tree it was built from,
read by the benchmarks (gaussreg.bench) so that results name the build they timed rather
than whatever repository the run happened to start in.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name, optional=False):
        super().__init__(name, sources=[], optional=optional)


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
    # Both ways, not only OFF: a build folder is reused (build/ of an in-tree `pip install .`),
    # and an OFF left in its CMake cache by an earlier CPU-only build would otherwise stick.
    args.append(f"-DGAUSSREG_WITH_CUDA={'ON' if CUDA_CHOICE.build else 'OFF'}")
    args.append(f"-DGAUSSREG_REQUIRE_CUDA={'ON' if CUDA_CHOICE.required else 'OFF'}")
    args.append(f"-DGAUSSREG_NATIVE={'OFF' if os.environ.get('GAUSSREG_NATIVE', '1') == '0' else 'ON'}")
    return args


class CudaChoice:
    """Whether this build compiles gaussreg._cuda, and why (recorded in _build_info.py, where
    ``gaussreg.backends()`` reads it to explain a missing module)."""

    def __init__(self, build, required, reason):
        self.build, self.required, self.reason = build, required, reason


def _gpu_visible():
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _choose_cuda():
    if os.environ.get("GAUSSREG_NO_CUDA", "0") == "1":
        return CudaChoice(False, False, "not built: GAUSSREG_NO_CUDA=1 at build time")
    if os.environ.get("GAUSSREG_CUDA", "0") == "1":
        return CudaChoice(True, True, "GAUSSREG_CUDA=1 at build time")
    nvcc = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if not nvcc:
        return CudaChoice(False, False, "not built: nvcc was not found at build time")
    if not _gpu_visible():
        return CudaChoice(False, False, "not built: no GPU was visible at build time (nvidia-smi); "
                                        "reinstall with GAUSSREG_CUDA=1 to build it anyway")
    return CudaChoice(True, False, "nvcc found and a GPU visible at build time")


CUDA_CHOICE = _choose_cuda()


def _git(*args):
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _source_commit():
    """HEAD of the source tree, '+dirty' when tracked files differ from it; 'unknown' outside git.

    Only a tree that is its own repository's root counts: a source tree unpacked inside some
    other repository (an sdist in a project folder) must not take that repository's commit.
    """
    top = _git("rev-parse", "--show-toplevel")
    head = _git("rev-parse", "HEAD")
    if not top or not head or Path(top).resolve() != ROOT:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def _write_build_info(package_dir):
    text = ('"""Written by setup.py at build time (not tracked by git): what this build was built from."""\n'
            f"GIT_COMMIT = {_source_commit()!r}\n"
            f"CUDA_BUILD = {CUDA_CHOICE.build!r}  # whether this build compiled gaussreg._cuda\n"
            f"CUDA_REASON = {CUDA_CHOICE.reason!r}\n")
    path = Path(package_dir) / "_build_info.py"
    if not path.is_file() or path.read_text() != text:  # unchanged: keep the timestamp, no rebuild churn
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


class BuildPy(build_py):
    """Writes gaussreg/_build_info.py with the package's modules.

    A wheel gets it in its build folder only: building one from a checkout must not change
    what that checkout's own editable install reports. An editable install imports the
    source tree, so there it goes into gaussreg/ (git ignores it).
    """

    def run(self):
        super().run()
        _write_build_info(ROOT / "gaussreg" if self.editable_mode else Path(self.build_lib) / "gaussreg")


class CMakeBuild(build_ext):
    """One CMake run builds every module (gaussreg._C, and gaussreg._cuda when chosen) into the
    package folder. Both are registered extensions, so that an editable install copies each
    module that was built into the source tree (setuptools copies only registered outputs);
    gaussreg._cuda is optional: skipped when this build does not make it."""

    def build_extension(self, ext):
        if ext.name != "gaussreg._C":
            return  # built by the CMake run of gaussreg._C
        print(f"gaussreg: building gaussreg._C (C++/OpenMP); gaussreg._cuda: "
              f"{'building, several minutes' if CUDA_CHOICE.build else 'skipped'} ({CUDA_CHOICE.reason})",
              file=sys.stderr, flush=True)
        ext_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = "Debug" if os.environ.get("GAUSSREG_DEBUG", "0") == "1" else "Release"
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _cmake_executable()
        subprocess.run([cmake, str(ROOT), *_cmake_args(ext_dir, build_type)], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("gaussreg._C"), CMakeExtension("gaussreg._cuda", optional=True)],
    cmdclass={"build_py": BuildPy, "build_ext": CMakeBuild},
)
