"""Where a run ran, and the rates its floors divide by: the device name (the GPU's from torch, or
the CPU model) and its slug for the results folder, the commit the imported gaussreg was built
from (recorded by setup.py, not read from the current directory) and, for an editable install or
a checkout, the commit its Python sources are at; :func:`metadata` gathers these with the
torch/gaussreg versions, thread count, load average and date into the stamp of every output.
Also the FLOP/s of a large matmul and the bandwidth of a large copy, timed on the same device
in the same run, from which the floor columns are computed: *achievable-peak proxies*, not the
datasheet peaks.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

from ._util import _release, _short, _time_once


def device_name(device: torch.device) -> str:
    """GPU name from torch, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(name: str) -> str:
    """'Intel(R) Xeon(R) Processor @ 2.80GHz' -> 'intel-xeon-processor-2-80ghz'."""
    s = re.sub(r"\((r|tm|c)\)", "", name.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown-device"


def _git(where: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_commit() -> str:
    """The commit the imported gaussreg was built from, as setup.py recorded it at build time.

    Not the commit of the current directory: a run may start anywhere, and an installed
    package does not change when the checkout it came from moves on. '+dirty' when tracked
    files differed from it at build time; 'unknown' when not built from git or built before
    setup.py wrote ``gaussreg/_build_info.py``.
    """
    try:
        from gaussreg._build_info import GIT_COMMIT
    except ImportError:
        return "unknown"
    return GIT_COMMIT


def source_commit(package_dir: Path) -> Optional[str]:
    """HEAD ('+dirty' as above) of the git work tree that holds ``package_dir``, or None.

    Set for an editable install or a run inside a checkout, where the Python sources are
    the tree's current ones while the compiled modules are those of the last build; None
    for an installed copy (its directory is no work tree's root).
    """
    root = package_dir.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    head = _git(root, "rev-parse", "HEAD")
    if not top or not head or Path(top).resolve() != root.resolve():
        return None
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def measure_matmul_rate(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3) -> float:
    """FLOP/s of a size x size @ size x size matmul: the best of ``repeats`` after a warm-up."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    b = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    c = torch.empty(size, size, dtype=dtype, device=device)
    fn = lambda: torch.mm(a, b, out=c)  # noqa: E731
    _time_once(fn, device)
    best = min(_time_once(fn, device) for _ in range(repeats))
    del a, b, c
    _release(device)
    return 2.0 * size ** 3 / best


def measure_copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 3) -> float:
    """Bytes/s of a device-to-device copy of ``nbytes``, counting bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    _time_once(fn, device)
    best = min(_time_once(fn, device) for _ in range(repeats))
    del src, dst
    _release(device)
    return 2.0 * (nbytes // 4) * 4 / best


def metadata(family: str, args: argparse.Namespace, device: torch.device) -> dict:
    package_dir = built = source = None
    try:
        import gaussreg
        gaussreg_version = getattr(gaussreg, "__version__", "unknown")
        backends = gaussreg.backends()
        package_dir = Path(gaussreg.__file__).resolve().parent
        built, source = build_commit(), source_commit(package_dir)
    except Exception as exc:  # the harness itself does not need gaussreg
        gaussreg_version, backends = f"not importable ({_short(exc)})", None
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    name = device_name(device)
    return {
        "family": family,
        "date": now.isoformat(timespec="seconds"),
        "device": name,
        "device_type": device.type,
        "device_slug": slug(name),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gaussreg": gaussreg_version,
        "gaussreg_backends": backends,
        "gaussreg_path": None if package_dir is None else str(package_dir),
        "git_commit": built or "unknown",
        "source_git_commit": source,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "argv": list(args._argv),
    }
