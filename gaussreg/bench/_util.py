"""Small utilities shared by the harness modules: whether an exception means "not enough memory"
(:func:`is_oom`) and its one-line summary for a row's note, the time of one call (CUDA events
after a synchronize on GPU, ``time.perf_counter`` on CPU), the memory available on a device and
the release of cached memory, and the ``--dtype`` choices. They import nothing else from
``gaussreg.bench``, so that every other harness module can use them without an import cycle.
"""
from __future__ import annotations

import gc
import time
from typing import Callable, Optional

import torch

# The --dtype choices (the command line, the measurement and the memory worker).
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def is_oom(exc: BaseException) -> bool:
    """Whether an exception means 'not enough memory' (CPU or CUDA, torch or gaussreg)."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate", "cannot allocate", "not enough memory"))


def _short(exc: BaseException, limit: int = 160) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events (after a synchronize) on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _available_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
