"""The compiled modules behind the losses: loading, backend choice, pointers and workspace.

``gaussreg._C`` (C++/OpenMP) is always built; ``gaussreg._cuda`` when nvcc was found at
build time. Neither knows PyTorch: they take raw pointers (``tensor.data_ptr()``),
sizes, element strides, a workspace allocated here with torch, and (CUDA) the current
stream. Importing gaussreg never fails because a module is missing; a call that needs
it raises an error that names the fix.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import threading
import warnings
from typing import Optional

import torch

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
_modules: dict = {}
_import_errors: dict = {}
_warned_fallback: set = set()

_REBUILD_HINT = (
    "reinstall gaussreg from source with a C++17 compiler and CMake available "
    "(`pip install --no-build-isolation -e .` in the repository shows the build log)"
)


def _load(name: str):
    if name in _modules:
        return _modules[name]
    if name in _import_errors:
        return None
    try:
        _modules[name] = importlib.import_module(f"gaussreg.{name}")
    except ImportError as exc:  # not built, or built against another runtime
        _import_errors[name] = exc
        return None
    return _modules[name]


def _built(name: str) -> bool:
    return importlib.util.find_spec(f"gaussreg.{name}") is not None


def _preload() -> None:
    """Import the built modules with gaussreg itself (errors recorded, never raised).

    Loading on first use would run importlib inside a torch.compile trace when a compiled
    model is the first caller, which dynamo refuses (a graph break, an error under
    fullgraph=True).
    """
    if _built("_C"):
        _load("_C")
    # The CUDA module links the CUDA runtime statically; loaded without a GPU it was seen to
    # hang some processes at exit (torchrun workers), so it loads only where it can run.
    if _built("_cuda") and torch.cuda.is_available():
        _load("_cuda")


def backends() -> dict:
    """What was built and what can run here.

    Returns:
        ``{"cpu": {...}, "cuda": {...}}``; each entry has ``built`` (the compiled module
        is installed), ``available`` (it imports and, for CUDA, a GPU is visible) and
        ``detail`` (why not, or build facts such as OpenMP).

    Example:
        >>> import gaussreg
        >>> gaussreg.backends()["cpu"]["available"]
        True
    """
    cpu = _load("_C")
    cpu_entry = {
        "built": _built("_C"),
        "available": cpu is not None,
        "detail": (f"OpenMP: {'yes' if cpu.openmp else 'no'}" if cpu is not None
                   else f"not importable: {_import_errors.get('_C', 'not built')}"),
    }
    cuda_built = _built("_cuda")
    gpu = torch.cuda.is_available()
    if cuda_built and gpu:
        mod = _load("_cuda")
        cuda_entry = {"built": True, "available": mod is not None,
                      "detail": "ok" if mod is not None else f"not importable: {_import_errors['_cuda']}"}
    else:
        cuda_entry = {"built": cuda_built, "available": False,
                      "detail": "no CUDA device visible to torch" if cuda_built else _cuda_missing_reason()}
    return {"cpu": cpu_entry, "cuda": cuda_entry}


def _cuda_missing_reason() -> str:
    """Why gaussreg._cuda is not installed, as the build recorded it (setup.py)."""
    try:
        from . import _build_info
    except ImportError:  # built by other means than setup.py
        return "not built (nvcc was not found at build time, or GAUSSREG_NO_CUDA=1)"
    if getattr(_build_info, "CUDA_BUILD", False):
        return ("built, but not installed with the package (a stale or partial install); "
                "reinstall gaussreg")
    return getattr(_build_info, "CUDA_REASON", "not built")


def module_for(device: torch.device):
    """The compiled module for ``device``, or None when it cannot run there."""
    if device.type == "cpu":
        return _load("_C")
    if device.type == "cuda":
        return _load("_cuda") if _built("_cuda") else None
    return None


def use_native(device: torch.device, backend: str, what: str, entry: Optional[str] = None) -> bool:
    """Whether to run the compiled kernels (True) or reference.py (False).

    ``backend`` is "auto" (compiled when available, else the reference with a warning),
    "native" (compiled or an error that names the fix) or "reference". ``entry``: a
    function the module must have (a module built from older sources lacks newer engines).
    """
    if backend == "reference":
        return False
    if backend not in ("auto", "native"):
        raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")
    module = module_for(device)
    if module is not None and (entry is None or hasattr(module, entry)):
        return True
    why = (_missing_reason(device) if module is None else
           f"the compiled module has no {entry} (built from older sources); {_REBUILD_HINT}")
    if backend == "native":
        raise RuntimeError(f"gaussreg.{what}: no compiled backend for device {device}: {why}")
    if (device.type, what) not in _warned_fallback:
        _warned_fallback.add((device.type, what))
        warnings.warn(f"gaussreg.{what}: no compiled backend for device {device} ({why}); "
                      "falling back to the slow pure-PyTorch reference (O(n^2) memory)",
                      RuntimeWarning, stacklevel=3)
    return False


def _missing_reason(device: torch.device) -> str:
    if device.type == "cuda":
        if not _built("_cuda"):
            return ("gaussreg._cuda was not built: install the CUDA toolkit (nvcc) and "
                    + _REBUILD_HINT)
        return f"gaussreg._cuda does not import: {_import_errors.get('_cuda')}"
    if device.type == "cpu":
        return f"gaussreg._C does not import ({_import_errors.get('_C', 'not built')}); {_REBUILD_HINT}"
    return f"device type {device.type!r} is not supported (CPU and CUDA are)"


def dtype_code(dtype: torch.dtype) -> int:
    return _DTYPE_CODES[dtype]


_forked = False  # this process was forked from one that may have run OpenMP parallel regions


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    # No other thread runs in the child: the kept workspace is free whatever the parent did.
    _cache.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    """OpenMP threads for a CPU call: follows torch.get_num_threads().

    In a forked child, one thread: GNU libgomp (torch's OpenMP runtime, which the CPU module
    shares) cannot start a parallel region with more threads after a fork once the parent
    has used one; such a region hangs for good. The results are the same bits with any
    thread count. DataLoader workers run one torch thread anyway; other children are
    warned once, as the fix is the "spawn" or "forkserver" start method.
    """
    threads = max(1, torch.get_num_threads())
    if _forked and threads > 1:
        if "fork" not in _warned_fallback:
            _warned_fallback.add("fork")
            warnings.warn("gaussreg: in a forked process the compiled CPU kernels run on one thread (GNU OpenMP "
                          "hangs in a forked child whose parent ran parallel regions); use the 'spawn' or "
                          "'forkserver' start method for more", RuntimeWarning, stacklevel=3)
        return 1
    return threads


def _device_capacity(device: torch.device) -> Optional[int]:
    if device.type == "cuda":  # the total, from the cached properties: no CUDA call (allowed during graph capture)
        return torch.cuda.get_device_properties(device).total_memory
    return ram_bytes()


@functools.lru_cache(maxsize=1)
def ram_bytes() -> Optional[int]:
    """This machine's physical memory, or None where the system does not say (asked once:
    it was a tenth of the Python work of a small batch's call)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, device: torch.device, what: str, option: str = "", floor: Optional[tuple] = None) -> None:
    """Raise MemoryError naming the bytes when a request cannot fit on ``device`` at all.

    ``option``: how to lower the need (e.g. a multi-pass mode), named in the message.
    ``floor``: ``(bytes, why)``, what the request needs whatever the option; when even that
    cannot fit, the message says so (and why) instead of naming an option that cannot help.
    """
    capacity = _device_capacity(device)
    if capacity is None or nbytes <= capacity:
        return
    message = (f"gaussreg.{what}: needs {nbytes} bytes ({nbytes / 2**30:.1f} GiB) of working memory "
               f"on {device}, more than its {capacity} bytes")
    if floor is not None and floor[0] > capacity:
        message += f"; it needs at least {floor[0]} bytes ({floor[0] / 2**30:.1f} GiB) whatever the options: {floor[1]}"
    elif option:
        message += f"; {option}"
    raise MemoryError(message)


def empty(shape, dtype: torch.dtype, device: torch.device, what: str) -> torch.Tensor:
    """torch.empty that turns an allocator failure into a MemoryError naming the bytes."""
    try:
        return torch.empty(shape, dtype=dtype, device=device)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        numel = 1
        for s in (shape if isinstance(shape, (tuple, list)) else (shape,)):
            numel *= int(s)
        nbytes = numel * dtype.itemsize
        raise MemoryError(f"gaussreg.{what}: could not allocate {nbytes} bytes on {device}: {exc}") from exc


# ---------------------------------------------------------------------------
# The CPU workspace kept between calls
# ---------------------------------------------------------------------------
#
# A large fresh buffer is mapped by the allocator and cleared page by page by the kernel on
# its first touch, every call: p = 2 at n = 8192 spent 0.1 to 0.75 s of system time per
# call on it (of 1.3 to 1.7 s of wall time, 2 Xeon cores). The engines' CPU workspace
# therefore stays allocated between calls, one buffer for all of them, up to a limit; CUDA
# has torch's caching allocator.


def _default_cache_limit() -> int:
    """1 GiB, or a sixteenth of RAM where that is less; GAUSSREG_WORKSPACE_CACHE (bytes) overrides."""
    text = os.environ.get("GAUSSREG_WORKSPACE_CACHE")
    if text is not None:
        try:
            limit = int(text)
        except ValueError:
            limit = -1
        if limit >= 0:
            return limit
        warnings.warn(f"gaussreg: GAUSSREG_WORKSPACE_CACHE={text!r} is not a byte count >= 0; using the default",
                      RuntimeWarning, stacklevel=2)
    ram = _device_capacity(torch.device("cpu"))
    return min(1 << 30, ram // 16) if ram else 1 << 30


class _WorkspaceCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while an engine uses the buffer
        self.buffer: Optional[torch.Tensor] = None
        self.limit = _default_cache_limit()


_cache = _WorkspaceCache()


class workspace:
    """A uint8 workspace of at least ``nbytes`` (at least 1) for one engine call, used inside the ``with``.

    On the CPU the kept buffer when the request is within the cache limit and no other thread
    holds it (grown to the request when smaller); otherwise a fresh allocation, as on CUDA.
    (A class, not a generator: entered on every engine call, it cost a few microseconds less.)
    """

    __slots__ = ("nbytes", "device", "what", "kept")

    def __init__(self, nbytes: int, device: torch.device, what: str) -> None:
        self.nbytes, self.device, self.what, self.kept = max(int(nbytes), 1), device, what, False

    def __enter__(self) -> torch.Tensor:
        if self.device.type != "cpu" or self.nbytes > _cache.limit or not _cache.lock.acquire(blocking=False):
            return empty((self.nbytes,), torch.uint8, self.device, self.what)
        self.kept = True
        try:
            if _cache.buffer is None or _cache.buffer.numel() < self.nbytes:
                _cache.buffer = None  # freed before the larger one is allocated
                _cache.buffer = empty((self.nbytes,), torch.uint8, self.device, self.what)
        except BaseException:
            self.kept = False
            _cache.lock.release()
            raise
        return _cache.buffer

    def __exit__(self, *exc) -> None:
        if self.kept:
            self.kept = False
            _cache.lock.release()


def set_workspace_cache(max_bytes: int) -> int:
    """Keep the compiled CPU engines' workspace between calls when it needs at most ``max_bytes``.

    Every CPU call of the compiled engines (``cdf_attraction``, the pair sums, the sorted-gap
    losses, ``diagnostics.ks_distances``) works in one buffer that stays allocated after the
    call, so that the next call finds its memory mapped: a fresh mapping is cleared page by
    page on first touch (for ``cdf_attraction(p=2)`` at n = 8192, 0.1 to 0.75 s of system
    time per call on 2 Xeon cores). A call that needs more than ``max_bytes`` allocates its
    own and frees it; 0 keeps nothing. The default is 1 GiB, or a sixteenth of RAM where that
    is less; the environment variable ``GAUSSREG_WORKSPACE_CACHE`` (bytes) sets it at import.
    Lowering the limit below the kept buffer frees it. Returns the previous limit.

    >>> import gaussreg
    >>> previous = gaussreg.set_workspace_cache(0)  # allocate per call, keep nothing
    >>> _ = gaussreg.set_workspace_cache(previous)
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"set_workspace_cache: max_bytes must be an int >= 0, got {max_bytes!r}")
    with _cache.lock:
        previous, _cache.limit = _cache.limit, max_bytes
        if _cache.buffer is not None and _cache.buffer.numel() > max_bytes:
            _cache.buffer = None
    return previous


def release_workspace() -> int:
    """Free the kept CPU workspace (see ``set_workspace_cache``); returns the bytes freed.

    The next call allocates again. The limit is unchanged.

    >>> import gaussreg
    >>> gaussreg.release_workspace() >= 0
    True
    """
    with _cache.lock:
        freed = 0 if _cache.buffer is None else _cache.buffer.numel()
        _cache.buffer = None
    return freed


def stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def launch(fn, device: torch.device, *args):
    """Call a compiled entry point with its last argument: the OpenMP thread count on the
    CPU; on CUDA the current stream, with the tensors' device made current (the kernels
    launch on the current device: multi-GPU)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return fn(*args, stream_handle(device))
    return fn(*args, num_threads())


_preload()
