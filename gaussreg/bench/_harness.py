"""The one benchmark harness behind every family script in ``gaussreg/bench/`` (DESIGN.md, "Benchmarks").

A family script declares only what it measures -- :class:`Case` objects, each with an
input builder, the :class:`Impl` s to compare and a FLOP count -- and calls :func:`main`.
Everything else lives here and is the same for every family:

* **Correctness before speed.** Before its first timing each implementation is compared
  with the case's oracle (``gaussreg.reference``) in float64 on a small input (value,
  gradients, and the forward-only value); one that disagrees is reported as ``wrong`` and never timed. At every timed
  size the result is also compared with a float64 run at that size of the first usable
  ``Case.size_oracles`` entry (the compiled backend in float64 where the reference
  cannot run): the ``val err`` / ``grad err`` columns (informational).
* **Timing.** Warm-up, then the median, IQR and minimum of repeats, cycling through
  ``--rotate`` different input tensors so that warm caches do not flatter;
  forward+backward, and forward-only under ``torch.no_grad``; backward as the difference
  of the two medians (``bwd_est_s``). ``time.perf_counter`` on
  CPU; CUDA events with ``torch.cuda.synchronize`` before each timed call on GPU.
* **Memory.** CPU: the extra resident memory of one forward+backward call beyond its
  inputs, measured after all timings in a fresh subprocess (``--mem-isolation run``, the
  default, or ``case``) that runs on the parent's ``sys.path`` and checks that it imported
  the same gaussreg package (a row whose memory could not be measured says why): before
  each call the inputs are built, freed heap pages are returned (``malloc_trim``) and the
  peak RSS is reset through ``/proc/self/clear_refs``, so VmHWM - VmRSS is that call's
  own; a tiny call per implementation first keeps one-time library initialisation out. ``--mem-isolation call`` (also the fallback where
  clear_refs is not writable) starts one subprocess per call and reports the peak after
  the call minus the peak after building the inputs (VmHWM, or ``ru_maxrss`` without
  /proc; VmHWM because Linux carries a forking parent's RSS into the child's
  ``ru_maxrss``, which would hide every call smaller than the benchmark process). CUDA:
  ``torch.cuda.max_memory_allocated`` above the allocation before the call.
* **Failures are results.** Out-of-memory, a call slower than ``--timeout``, an exception,
  a size an implementation is not run at (``Impl.max_n``) or one whose estimated memory
  (``Impl.bytes_needed``) exceeds what is available: each becomes a row with a status and
  a note, and larger sizes of that implementation are skipped after a failure.
* **Efficiency.** GFLOP/s from the case's FLOP count, and measured/floor with
  floor = FLOPs / the rate of a large matmul timed on the same device in the same run.
  That rate is an *achievable-peak proxy*, not the datasheet peak.
* **Output.** A printed table, and JSON + CSV + PNG (time vs n, log-log, one line per
  implementation, plus the floor) under ``./gaussreg-bench-results/<device-slug>/`` of the
  current directory (``--results-dir`` / ``--out`` elsewhere), stamped with
  the device, torch/gaussreg versions, the commit gaussreg was built from (recorded by
  setup.py, not read from the current directory), thread count and date. Without
  matplotlib the plot is skipped with a message.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import floors
from .._progress import Progress

# Relative to the current directory: the package may be installed read-only, and a run
# inside a checkout must not overwrite the committed results (bench/results/) unless asked.
DEFAULT_RESULTS_DIR = Path("gaussreg-bench-results")
_MEM_TAG = "@@bench-mem "  # prefix of the memory worker's result lines on stdout

FLOOR_NOTE = ("floor = max(FLOPs / the rate of a {size}^3 {dtype} matmul, bytes / the bandwidth of a {copy_mib} MiB "
              "copy), both timed on this device in this run (best of {repeats}; gaussreg/bench/floors.py counts FLOPs and "
              "bytes): achievable-peak proxies, not datasheet peaks; 'x floor' = measured / floor")


# ---------------------------------------------------------------------------
# What a family script declares
# ---------------------------------------------------------------------------


@dataclass
class Impl:
    """One implementation of a case.

    Attributes:
        name: short label (table, CSV, plot legend).
        fn: ``fn(*inputs) -> 0-dim loss tensor``; inputs come from ``Case.make_inputs``.
        max_n: sizes above it are not run (recorded as ``skipped`` with ``max_n_note``).
        max_n_note: why, e.g. "n > --ref-max-n 1024 (O(n^2 D) memory and time)".
        bytes_needed: ``(n, d, itemsize) -> bytes`` estimate of its working memory; a size
            whose estimate exceeds ``--mem-fraction`` of the available memory is skipped
            (so an O(n^2 D) implementation is not run into the kernel's OOM killer).
        unavailable: None when usable, else why not (e.g. "pykeops is not installed").
        oracle_only: run only as the correctness oracle, never timed (set by ``--impls``).
        details: ``fn(*inputs) -> dict`` of what the implementation reports about one call
            (e.g. the fraction of pairs a selection sorted), run once per size, untimed,
            and written to the row's ``details`` field.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    max_n: Optional[int] = None
    max_n_note: str = ""
    bytes_needed: Optional[Callable[[int, int, int], float]] = None
    unavailable: Optional[str] = None
    oracle_only: bool = False
    details: Optional[Callable[..., dict]] = None


@dataclass
class Case:
    """One quantity to benchmark over n.

    Attributes:
        name: short label, also used by ``--cases``.
        make_inputs: ``(n, d, dtype, device, seed) -> tuple of tensors``; tensors that should
            receive gradients have ``requires_grad=True``. Different seeds give the rotated sets.
        impls: the implementations compared.
        cost: ``(n, d, itemsize, backward) -> floors.Cost(flops, bytes)`` of one call
            (forward+backward when ``backward``), or None for no FLOP/s and floor columns.
        oracle: name of the impl that the float64 small-case check compares against.
        size_oracles: impl names tried in order for the float64 run at each timed size.
        gate_rtol: tolerance of the float64 small-case check (value relative to the
            oracle's value, gradients norm-wise relative).
        description: one line printed above the case.
    """

    name: str
    make_inputs: Callable[[int, int, torch.dtype, torch.device, int], Tuple[torch.Tensor, ...]]
    impls: List[Impl]
    cost: Optional[Callable[[int, int, int, bool], "floors.Cost"]] = None
    oracle: str = "reference"
    size_oracles: Sequence[str] = ("reference",)
    gate_rtol: float = 1e-9
    description: str = ""


# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------


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


def _leaves(inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def _clear_grads(inputs: Sequence[torch.Tensor]) -> None:
    for t in _leaves(inputs):
        t.grad = None


def _forward_backward(impl: Impl, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    loss = impl.fn(*inputs)
    if _leaves(inputs):
        loss.backward()
    return loss


def _forward_only(impl: Impl, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return impl.fn(*inputs)


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


def _stats(times: List[float]) -> Dict[str, float]:
    if len(times) >= 2:
        q = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(times), "iqr": iqr, "min": min(times)}


def _value_and_grads(impl: Impl, inputs: Sequence[torch.Tensor]) -> Tuple[float, List[torch.Tensor]]:
    _clear_grads(inputs)
    loss = _forward_backward(impl, inputs)
    value = float(loss.detach())
    grads = [t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t) for t in _leaves(inputs)]
    _clear_grads(inputs)
    return value, grads


def _errors(value: float, grads: List[torch.Tensor], ref_value: float, ref_grads: List[torch.Tensor]
            ) -> Tuple[float, float]:
    """(relative value error, norm-wise relative gradient error) against a float64 result."""
    val_err = abs(value - ref_value) / max(abs(ref_value), 1e-300)
    if not ref_grads:
        return val_err, 0.0
    num = math.sqrt(sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(grads, ref_grads)))
    den = math.sqrt(sum(float(r.double().pow(2).sum()) for r in ref_grads))
    return val_err, num / max(den, 1e-300)


def _as_float64(inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    return tuple(t.detach().to(torch.float64).requires_grad_(t.requires_grad) for t in inputs)


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


# ---------------------------------------------------------------------------
# Device, versions, peak rate
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_parser(family: str, description: str, default_n: Dict[str, List[int]]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"gaussreg bench {family}", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Output: a table on stdout; JSON, CSV and PNG under ./{DEFAULT_RESULTS_DIR}/<device>/ of the current "
               "directory (--results-dir, --out: elsewhere).")
    axes = p.add_argument_group("axes")
    axes.add_argument("--n", type=int, nargs="+", default=None,
                      help=f"sizes (default: CPU {default_n['cpu']}, CUDA {default_n['cuda']})")
    axes.add_argument("--dim", type=int, nargs="+", default=[64], help="dimension(s) D (default 64); several make a "
                      "sweep over D")
    axes.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="default float32")
    axes.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:K")
    axes.add_argument("--cases", nargs="+", default=None, metavar="NAME", help="only these cases")
    axes.add_argument("--impls", nargs="+", default=None, metavar="NAME", help="only these implementations")
    timing = p.add_argument_group("timing")
    timing.add_argument("--repeats", type=int, default=5, help="timed repeats per row and mode (default 5)")
    timing.add_argument("--min-repeats", type=int, default=3,
                        help="repeats kept even past --row-budget (default 3)")
    timing.add_argument("--row-budget", type=float, default=1.5,
                        help="seconds per row and mode after which repeats stop early (default 1.5)")
    timing.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    timing.add_argument("--rotate", type=int, default=3, help="different input sets cycled (default 3)")
    timing.add_argument("--no-forward", action="store_true", help="time forward+backward only")
    timing.add_argument("--timeout", type=float, default=30.0,
                        help="a single call slower than this ends the row as 'timeout' and skips larger n (default 30 s)")
    timing.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (the compiled CPU backend follows it); default: torch's")
    checks = p.add_argument_group("checks, memory, floor")
    checks.add_argument("--check-n", type=int, default=577,
                        help="n of the float64 correctness check before timing (default 577: > one 512-row block, odd)")
    checks.add_argument("--no-size-check", action="store_true",
                        help="skip the float64 comparison at every timed size")
    checks.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    checks.add_argument("--mem-isolation", choices=("run", "case", "call"), default="run",
                        help="CPU memory: one fresh subprocess for the whole run (default) or per case, with the "
                             "peak RSS reset and malloc_trim between calls; or one per call (ru_maxrss delta; "
                             "slow: each imports torch)")
    checks.add_argument("--mem-timeout", type=float, default=900.0, help="seconds per memory subprocess")
    checks.add_argument("--mem-fraction", type=float, default=0.7,
                        help="skip a size whose estimated memory exceeds this fraction of the available memory")
    checks.add_argument("--peak-size", type=int, default=None,
                        help="matmul size for the peak-rate proxy (default 4096 on CPU, 8192 on CUDA)")
    checks.add_argument("--no-floor", action="store_true", help="skip the matmul rate and floor columns")
    out = p.add_argument_group("output")
    out.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, metavar="DIR",
                     help=f"results go to DIR/<device-slug>/ (default ./{DEFAULT_RESULTS_DIR}, in the current "
                          "directory); from the repository root, --results-dir bench/results updates the committed "
                          "results that README's tables are generated from")
    out.add_argument("--out", type=Path, default=None, help="this exact output folder instead (no <device-slug>)")
    out.add_argument("--tag", default="", help="suffix of the output file names: <family>-<tag>.json")
    out.add_argument("--no-save", action="store_true", help="print only")
    out.add_argument("--no-plot", action="store_true", help="no PNG")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar on stderr (drawn only on a terminal, with tqdm installed)")
    p.add_argument("--_mem-worker", dest="mem_worker", default=None, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------

CSV_FIELDS = [
    "case", "impl", "n", "d", "dtype", "device", "status", "note", "check",
    "repeats", "fb_median_s", "fb_iqr_s", "fb_min_s", "fwd_median_s", "fwd_iqr_s", "fwd_min_s", "bwd_est_s",
    "fb_flops", "fb_bytes", "fb_gflops", "fb_floor_s", "fb_x_floor", "fb_bound",
    "fwd_flops", "fwd_bytes", "fwd_gflops", "fwd_floor_s", "fwd_x_floor", "fwd_bound",
    "peak_mem_bytes", "mem_method", "size_oracle", "val_err", "grad_err", "details",
]


def _row(case: Case, impl: Impl, n: Optional[int], ctx: "_Ctx", status: str, note: str = "", **fields) -> dict:
    row = {k: None for k in CSV_FIELDS}
    row.update(case=case.name, impl=impl.name, n=n, d=ctx.dim, dtype=str(ctx.dtype).replace("torch.", ""),
               device=str(ctx.device), status=status, note=note, check=ctx.gate.get((case.name, impl.name), (None, ""))[1])
    row.update(fields)
    return row


@dataclass
class _Ctx:
    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    dim: int
    rate: Optional[float]
    bandwidth: Optional[float] = None
    gate: Dict[Tuple[str, str], Tuple[Optional[bool], str]] = field(default_factory=dict)
    gate_errors: Dict[Tuple[str, str], str] = field(default_factory=dict)


def _check_small(case: Case, ctx: _Ctx) -> None:
    """Float64 comparison of every impl with the case's oracle on a small input, before timing."""
    n, d = ctx.args.check_n, ctx.dim
    build = lambda: case.make_inputs(n, d, torch.float64, ctx.device, 12345)  # noqa: E731
    oracle = next((i for i in case.impls if i.name == case.oracle), None)
    ref = None
    if oracle is not None and oracle.unavailable is None:
        try:
            ref = _value_and_grads(oracle, build())
        except Exception as exc:
            print(f"  [check] oracle {case.oracle} failed at n={n}: {_short(exc)}; impls are unchecked")
    for impl in case.impls:
        if impl.unavailable is not None:
            continue
        key = (case.name, impl.name)
        if impl is oracle:
            ctx.gate[key] = (True, "oracle")
            continue
        if ref is None:
            ctx.gate[key] = (None, "unchecked (no oracle)")
            continue
        try:
            value, grads = _value_and_grads(impl, build())
            fwd_value = float(_forward_only(impl, build()))  # the no-grad path is timed too
        except Exception as exc:  # a crash is an error, not a wrong answer
            ctx.gate[key] = (None, f"error: the check raised {_short(exc)}")
            ctx.gate_errors[key] = _short(exc)
            continue
        val_err, grad_err = _errors(value, grads, *ref)
        val_err = max(val_err, _errors(fwd_value, [], ref[0], [])[0])
        ok = val_err <= case.gate_rtol and grad_err <= case.gate_rtol and math.isfinite(value)
        msg = f"f64 n={n}: val {val_err:.1e} grad {grad_err:.1e}"
        ctx.gate[key] = (ok, msg if ok else f"WRONG vs {case.oracle} ({msg}, tol {case.gate_rtol:g})")
    _release(ctx.device)


def _size_oracle(case: Case, n: int, inputs: Sequence[torch.Tensor], ctx: _Ctx, stopped: Dict[str, str]):
    """(name, value, grads) of a float64 run at this size on the first rotated input set, or None."""
    for name in case.size_oracles:
        impl = next((i for i in case.impls if i.name == name), None)
        if (impl is None or impl.unavailable is not None or ctx.gate.get((case.name, name), (None,))[0] is False
                or (impl.max_n is not None and n > impl.max_n) or name in stopped):
            continue
        if impl.bytes_needed is not None:
            avail = _available_bytes(ctx.device)
            if avail is not None and impl.bytes_needed(n, ctx.dim, 8) > ctx.args.mem_fraction * avail:
                continue
        try:
            value, grads = _value_and_grads(impl, _as_float64(inputs))
            return name, value, grads
        except Exception as exc:
            print(f"  [size check] {name} float64 failed at n={n}: {_short(exc)}")
            _release(ctx.device)
    return None


def _repeat(fn_of_inputs: Callable, sets: List[Tuple[torch.Tensor, ...]], ctx: _Ctx, first: int) -> List[float]:
    args = ctx.args
    times: List[float] = []
    gc.disable()  # a collection in the middle of a timed call is noise, not cost
    try:
        for r in range(args.repeats):
            inputs = sets[(first + r) % len(sets)]
            _clear_grads(inputs)
            times.append(_time_once(lambda: fn_of_inputs(inputs), ctx.device))
            if sum(times) > args.row_budget and len(times) >= args.min_repeats:
                break
    finally:
        gc.enable()
    return times


def _measure(case: Case, impl: Impl, n: int, ctx: _Ctx, oracle_cache: dict, stopped: Dict[str, str]) -> dict:
    args, device = ctx.args, ctx.device
    itemsize = torch.empty((), dtype=ctx.dtype).element_size()
    costs = {mode: case.cost(n, ctx.dim, itemsize, mode == "fb") if case.cost else None for mode in ("fb", "fwd")}
    fields: dict = {f"{mode}_{what}": getattr(cost, what) if cost else None
                    for mode, cost in costs.items() for what in ("flops", "bytes")}
    sets: List[Tuple[torch.Tensor, ...]] = []
    try:
        sets = [tuple(case.make_inputs(n, ctx.dim, ctx.dtype, device, seed)) for seed in range(max(1, args.rotate))]
        # First (untimed-for-stats) call on set 0: gives the error at this size and a timeout guard.
        holder = {}
        t_first = _time_once(lambda: holder.setdefault("loss", _forward_backward(impl, sets[0])), device)
        loss = holder.pop("loss")
        if not bool(torch.isfinite(loss.detach()).all()):
            return _row(case, impl, n, ctx, "error", f"non-finite loss {float(loss):g}", **fields)
        if not args.no_size_check:
            if n not in oracle_cache:
                oracle_cache[n] = _size_oracle(case, n, sets[0], ctx, stopped)
            oracle = oracle_cache[n]
            if oracle is not None:
                grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in _leaves(sets[0])]
                val_err, grad_err = _errors(float(loss.detach()), grads, oracle[1], oracle[2])
                fields.update(size_oracle=f"{oracle[0]}(float64)", val_err=val_err, grad_err=grad_err)
        del loss
        _clear_grads(sets[0])
        if impl.details is not None:
            fields["details"] = impl.details(*sets[0])
        if t_first > args.timeout:
            return _row(case, impl, n, ctx, "timeout", f"one call took {t_first:.3g} s > --timeout {args.timeout:g}",
                        repeats=1, fb_median_s=t_first, fb_min_s=t_first, **fields)
        for w in range(1, args.warmup):
            _clear_grads(sets[w % len(sets)])
            _forward_backward(impl, sets[w % len(sets)])
        fb = _repeat(lambda s: _forward_backward(impl, s), sets, ctx, first=1)
        st = _stats(fb)
        fields.update(repeats=len(fb), fb_median_s=st["median"], fb_iqr_s=st["iqr"], fb_min_s=st["min"])
        if not args.no_forward:
            _forward_only(impl, sets[0])  # warm-up of the no-grad path
            fwd = _repeat(lambda s: _forward_only(impl, s), sets, ctx, first=1)
            st = _stats(fwd)
            fields.update(fwd_median_s=st["median"], fwd_iqr_s=st["iqr"], fwd_min_s=st["min"])
            # Backward alone, as the difference of the medians: timing it directly would need a
            # retained graph, which changes what the forward keeps alive.
            fields["bwd_est_s"] = max(fields["fb_median_s"] - st["median"], 0.0)
        if device.type == "cuda" and not args.no_memory:
            inputs = sets[0]
            _clear_grads(inputs)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            _forward_backward(impl, inputs)
            torch.cuda.synchronize(device)
            fields.update(peak_mem_bytes=torch.cuda.max_memory_allocated(device) - base,
                          mem_method="cuda max_memory_allocated - allocated before the call")
    except Exception as exc:
        status = "oom" if is_oom(exc) else "error"
        return _row(case, impl, n, ctx, status, _short(exc), **fields)
    finally:
        del sets
        _release(device)
    for mode, cost in costs.items():
        med = fields.get(f"{mode}_median_s")
        if not med or cost is None:
            continue
        if cost.flops:
            fields[f"{mode}_gflops"] = cost.flops / med / 1e9
        if ctx.rate and ctx.bandwidth:
            floor = floors.floor_seconds(cost, ctx.rate, ctx.bandwidth)
            if floor > 0:
                fields.update({f"{mode}_floor_s": floor, f"{mode}_x_floor": med / floor,
                               f"{mode}_bound": floors.bound(cost, ctx.rate, ctx.bandwidth)})
    return _row(case, impl, n, ctx, "ok", "", **fields)


def _skip_reason(impl: Impl, n: int, ctx: _Ctx, stopped: Dict[str, str]) -> Optional[str]:
    if impl.name in stopped:
        return stopped[impl.name]
    if impl.max_n is not None and n > impl.max_n:
        return impl.max_n_note or f"n > {impl.max_n}"
    if impl.bytes_needed is not None:
        need = impl.bytes_needed(n, ctx.dim, torch.empty((), dtype=ctx.dtype).element_size())
        avail = _available_bytes(ctx.device)
        if avail is not None and need > ctx.args.mem_fraction * avail:
            return (f"needs ~{need / 2**30:.1f} GiB (estimate) > {ctx.args.mem_fraction:.0%} of "
                    f"{avail / 2**30:.1f} GiB available")
    return None


def _timed_impls(case: Case) -> List[Impl]:
    return [i for i in case.impls if i.unavailable is None and not i.oracle_only]


def run_cases(cases: List[Case], ctx: _Ctx, sizes: List[int]) -> List[dict]:
    rows: List[dict] = []
    progress = Progress(sum(len(_timed_impls(c)) for c in cases) * len(sizes), f"{ctx.device.type} D={ctx.dim}",
                        quiet=ctx.args.quiet, lines=False)  # without a bar, the row lines say enough
    for case in cases:
        progress.write(f"\n== {case.name}: {case.description}")
        _check_small(case, ctx)
        for impl in case.impls:
            if impl.unavailable is not None:
                rows.append(_row(case, impl, None, ctx, "unavailable", impl.unavailable))
            else:
                ok, msg = ctx.gate.get((case.name, impl.name), (None, ""))
                progress.write(f"  [check] {impl.name:<10} {msg}")
                if ok is False:
                    rows.append(_row(case, impl, None, ctx, "wrong", msg + "; not timed"))
                elif (case.name, impl.name) in ctx.gate_errors:
                    rows.append(_row(case, impl, None, ctx, "error",
                                     f"correctness check raised {ctx.gate_errors[(case.name, impl.name)]}; not timed"))
        runnable = [i for i in _timed_impls(case)
                    if ctx.gate.get((case.name, i.name), (None,))[0] is not False
                    and (case.name, i.name) not in ctx.gate_errors]
        for _ in range((len(_timed_impls(case)) - len(runnable)) * len(sizes)):
            progress.step(f"{case.name}: not timed")
        stopped: Dict[str, str] = {}
        oracle_cache: dict = {}
        for n in sizes:
            for impl in runnable:
                reason = _skip_reason(impl, n, ctx, stopped)
                if reason is not None:
                    row = _row(case, impl, n, ctx, "skipped", reason)
                else:
                    row = _measure(case, impl, n, ctx, oracle_cache, stopped)
                    if row["status"] in ("oom", "timeout", "error"):
                        stopped[impl.name] = f"skipped after {row['status']} at n={n}"
                rows.append(row)
                progress.write(_row_line(row))
                progress.step(f"{case.name} {impl.name} n={n}", finished_block=impl is runnable[-1])
            oracle_cache.pop(n, None)
    progress.close()
    return rows


def _row_line(row: dict) -> str:
    if row["status"] == "ok":
        extra = f"fb {_ms(row['fb_median_s'])} ms  fwd {_ms(row['fwd_median_s'])} ms"
        if row.get("fb_x_floor"):
            extra += f"  x floor {row['fb_x_floor']:.1f}"
    else:
        extra = f"{row['status']}: {row['note']}"
    return f"  {row['impl']:<10} n={row['n']:<6} {extra}"


# ---------------------------------------------------------------------------
# CPU peak memory in fresh subprocesses
# ---------------------------------------------------------------------------


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _emit(record: dict) -> None:
    print(_MEM_TAG + json.dumps(record), flush=True)


def _memory_worker(cases: List[Case], args: argparse.Namespace, device: torch.device) -> None:
    """Subprocess side: the extra resident memory of one forward+backward per planned (case, impl, n)."""
    spec = json.loads(args.mem_worker)
    if spec.get("gaussreg_dir") != _gaussreg_dir():
        # Memory of another build would be reported as this one's.
        sys.exit(f"memory worker: imported gaussreg from {_gaussreg_dir()}, not the parent's {spec.get('gaussreg_dir')}")
    impls = {(c.name, i.name): (c, i) for c in cases for i in c.impls}
    dtype, dim = _DTYPES[args.dtype], spec["dim"]
    use_hwm = spec["method"] == "hwm" and _reset_peak_rss()
    # Without the reset, the peak is the process's own high-water mark: VmHWM, which starts
    # afresh at exec. (ru_maxrss does not: Linux carries the forking parent's RSS into the
    # child's ru_maxrss, so a big benchmark process would hide every call below its size.)
    peak_key = "VmHWM" if _proc_status_kb("VmHWM") is not None else None
    method = (f"fresh subprocess per {spec['method_scope']}: VmHWM (reset through clear_refs) - VmRSS before the call"
              if use_hwm else
              f"fresh subprocess per call: {peak_key or 'ru_maxrss'} after the call - after building the inputs")

    def peak_kb() -> int:
        if peak_key is not None:
            return _proc_status_kb(peak_key)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # One tiny call per impl first: library initialisation (OpenMP pool, BLAS buffers,
    # autograd engine threads) is a one-time cost, not the call's memory.
    for key in dict.fromkeys((c, i) for c, i, _ in spec["plan"]):
        case, impl = impls[key]
        try:
            _forward_backward(impl, case.make_inputs(min(64, args.check_n), dim, dtype, device, 99))
        except Exception:
            pass
    for case_name, impl_name, n in spec["plan"]:
        case, impl = impls[(case_name, impl_name)]
        _emit({"event": "start", "case": case_name, "impl": impl_name, "n": n})
        inputs = case.make_inputs(n, dim, dtype, device, 0)
        gc.collect()
        _malloc_trim()  # freed heap pages leave the RSS, so reusing them counts again
        if use_hwm:
            base_kb = _proc_status_kb("VmRSS")
            _reset_peak_rss()
        else:
            base_kb = peak_kb()
        record = {"event": "done", "case": case_name, "impl": impl_name, "n": n, "method": method}
        try:
            loss = _forward_backward(impl, inputs)
            del loss
            record["extra_bytes"] = (peak_kb() - base_kb) * 1024
        except Exception as exc:
            record["error"] = ("oom: " if is_oom(exc) else "") + _short(exc)
        _emit(record)
        del inputs
        gc.collect()
        _malloc_trim()


# The memory worker's entry: the parent's sys.path replaces the child's before anything is
# imported, so the child times the very gaussreg (and torch) the parent imported. `python -m`
# would put the current directory first, and a checkout there would shadow an installed
# build with its uncompiled sources.
_WORKER_BOOT = ("import importlib, json, sys\n"
                "sys.path[:] = json.loads(sys.argv[1])\n"
                "importlib.import_module(sys.argv[2]).main(sys.argv[3:])\n")


def _worker_command(family_module: str) -> List[str]:
    path = [os.path.abspath(p) for p in sys.path if isinstance(p, str)]  # "" is the current directory
    return [sys.executable, "-c", _WORKER_BOOT, json.dumps(path), family_module]


def _gaussreg_dir() -> Optional[str]:
    try:
        import gaussreg
    except Exception:  # the harness itself does not need gaussreg
        return None
    return str(Path(gaussreg.__file__).resolve().parent)


def _memory_cpu(family_module: str, cases: List[Case], rows: List[dict], args: argparse.Namespace, dim: int) -> None:
    """Parent side: fill peak_mem_bytes of the ok rows from fresh subprocesses (see --mem-isolation)."""
    scope = args.mem_isolation
    if scope != "call" and not _reset_peak_rss():
        print("note: /proc/self/clear_refs is not writable here; measuring memory with one subprocess per call")
        scope = "call"
    by_key = {(r["case"], r["impl"], r["n"]): r for r in rows if r["status"] == "ok"}
    order = {(c.name, i.name): (k, j) for k, c in enumerate(cases) for j, i in enumerate(c.impls)}
    plan = sorted(by_key, key=lambda key: (order[key[:2]], key[2]))  # per impl, ascending n
    if scope == "run":
        batches = [plan]
    elif scope == "case":
        batches = [[p for p in plan if p[0] == c.name] for c in cases]
    else:
        batches = [[p] for p in plan]
    batches = [b for b in batches if b]
    print(f"  [memory] {len(plan)} calls in {len(batches)} fresh subprocess(es) (--mem-isolation {scope})", flush=True)

    def annotate(key, text):
        row = by_key[key]
        row["note"] = (row["note"] + "; " if row["note"] else "") + text

    for batch in batches:
        while batch:
            spec = {"plan": batch, "method": "maxrss" if scope == "call" else "hwm", "method_scope": scope,
                    "dim": dim, "gaussreg_dir": _gaussreg_dir()}
            cmd = [*_worker_command(family_module), *args._argv, "--_mem-worker", json.dumps(spec)]
            started, done = None, set()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mem_timeout)
                out, err, rc = proc.stdout, proc.stderr, proc.returncode
                why = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc} (likely the OOM killer)"
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                err, rc, why = "", -1, f"timed out after {args.mem_timeout:g} s"
            for line in out.splitlines():
                if not line.startswith(_MEM_TAG):
                    continue
                rec = json.loads(line[len(_MEM_TAG):])
                key = (rec["case"], rec["impl"], rec["n"])
                if rec["event"] == "start":
                    started = key
                    continue
                done.add(key)
                by_key[key]["mem_method"] = rec["method"]
                if "extra_bytes" in rec:
                    by_key[key]["peak_mem_bytes"] = rec["extra_bytes"]
                else:
                    annotate(key, "memory run: " + rec["error"])
            remaining = [p for p in batch if p not in done]
            if rc != 0 and started is not None and started not in done:
                annotate(started, f"memory run: worker {why}")
                remaining = [p for p in remaining if p != started]  # go on without the call that died
            elif remaining:
                # Timings stay valid, but each row says why its memory is missing (a worker
                # that cannot even import the package must not pass unnoticed).
                print(f"  [memory] worker ended ({why}) before {len(remaining)} call(s):\n{err[-2000:]}")
                last = (err.strip().splitlines() or [""])[-1][:200]
                for key in remaining:
                    annotate(key, f"memory run: worker {why} before this call" + (f" ({last})" if last else ""))
                remaining = []
            batch = remaining


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _load(avg) -> str:
    return "-" if not avg else "/".join(f"{x:.1f}" for x in avg)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: List[dict]) -> str:
    head = ["case", "impl", "n", "D", "fb med ms", "IQR", "min", "fwd med ms", "GFLOP/s", "floor ms", "x floor",
            "peak MiB", "val err", "grad err", "status / note"]
    lines = []
    for r in rows:
        note = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        if r["status"] == "ok" and r["note"]:
            note += f" ({r['note']})"
        lines.append([
            r["case"], r["impl"], "-" if r["n"] is None else str(r["n"]), str(r["d"]),
            _ms(r["fb_median_s"]), _ms(r["fb_iqr_s"]), _ms(r["fb_min_s"]), _ms(r["fwd_median_s"]),
            _fmt(r["fb_gflops"], ".1f"), _ms(r["fb_floor_s"]), _fmt(r["fb_x_floor"], ".1f"),
            _fmt(None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20, ".1f"),
            _fmt(r["val_err"], ".0e"), _fmt(r["grad_err"], ".0e"), note,
        ])
    widths = [max(len(head[k]), *(len(l[k]) for l in lines)) if lines else len(head[k]) for k in range(len(head) - 1)]
    fmt_line = lambda cells: "  ".join(  # noqa: E731
        [c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells[:-1], widths))] + [cells[-1]])
    out = [fmt_line(head), fmt_line(["-" * w for w in widths] + ["-" * 13])]
    prev_case = None
    for cells in lines:
        if prev_case is not None and cells[0] != prev_case:
            out.append("")
        prev_case = cells[0]
        out.append(fmt_line(cells))
    return "\n".join(out)


def write_outputs(family: str, meta: dict, rows: List[dict], args: argparse.Namespace,
                  floor_fn: Optional[Dict[str, Callable[[int], float]]]) -> List[Path]:
    out_dir = (args.out or (args.results_dir / meta["device_slug"])).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = family + (f"-{args.tag}" if args.tag else "")
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv"]
    with open(paths[0], "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(paths[1], "w", newline="") as f:
        # Stamp lines first (CSV readers: skip lines starting with '#').
        for key in ("family", "date", "device", "torch", "gaussreg", "git_commit", "threads", "floor_note"):
            f.write(f"# {key}: {meta.get(key)}\n")
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    if not args.no_plot:
        png = out_dir / f"{stem}.png"
        if plot(png, meta, rows, floor_fn):
            paths.append(png)
    return paths


def plot(path: Path, meta: dict, rows: List[dict], floor_fn: Optional[Dict[str, Callable[[int, int], float]]]) -> bool:
    """Forward+backward time vs n (log-log), one panel per case and D, one line per impl, plus the floor."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipped the plot (pip install matplotlib to get it)")
        return False
    panels = list(dict.fromkeys((r["case"], r["d"]) for r in rows))
    several_d = len({d for _, d in panels}) > 1
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax, (case, d) in zip(axes.flat, panels):
        case_rows = [r for r in rows if r["case"] == case and r["d"] == d]
        for impl in dict.fromkeys(r["impl"] for r in case_rows):
            pts = sorted((r["n"], r["fb_median_s"]) for r in case_rows
                         if r["impl"] == impl and r["status"] == "ok" and r["fb_median_s"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ns = sorted({r["n"] for r in case_rows if r["n"] is not None})
        if floor_fn and case in floor_fn and ns:
            ax.plot(ns, [floor_fn[case](n, d) for n in ns], "k--", linewidth=1, label="floor (gaussreg/bench/floors.py)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{case}, D = {d}" if several_d else case)
        ax.set_xlabel("n")
        ax.set_ylabel("forward+backward time [s]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{meta['family']}: {meta['device']} ({meta['threads']} threads), D={meta.get('dim')}, "
                 f"{meta.get('dtype')}; torch {meta['torch']}, gaussreg {meta['gaussreg']}, "
                 f"{meta['git_commit'][:12]}, {meta['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# Entry point for family scripts
# ---------------------------------------------------------------------------


def main(family: str, module: str, build_cases: Callable[[argparse.Namespace, torch.device], List[Case]], *,
         description: str = "", default_n: Optional[Dict[str, List[int]]] = None,
         add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
         notes: Sequence[str] = (), argv: Optional[List[str]] = None) -> List[dict]:
    """Parse the common CLI, run the cases, print and save the results.

    Args:
        family: the script's stem ("kernel_sums"): output file names and the CLI prog.
        module: the script's module path ("gaussreg.bench.kernel_sums"), run again as the memory subprocess.
        build_cases: ``(args, device) -> [Case]``.
        default_n: ``{"cpu": [...], "cuda": [...]}`` sizes when ``--n`` is not given.
        add_arguments: adds the family's own options to the parser.
        notes: lines printed under the table and saved in the JSON metadata.
    """
    default_n = default_n or {"cpu": [256, 512, 1024, 2048, 4096], "cuda": [1024, 4096, 16384, 65536]}
    parser = make_parser(family, description, default_n)
    if add_arguments is not None:
        add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = [a for a in argv]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = build_cases(args, device)
    if args.cases:
        unknown = set(args.cases) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in args.cases]
    if args.impls:
        for c in cases:
            keep = set(args.impls) | {c.oracle}  # the oracle always runs the correctness check
            c.impls = [i for i in c.impls if i.name in keep]
            for i in c.impls:
                i.oracle_only = i.name not in args.impls
    if args.mem_worker:
        _memory_worker(cases, args, device)
        return []

    dtype = _DTYPES[args.dtype]
    sizes = sorted(args.n or default_n["cuda" if device.type == "cuda" else "cpu"])
    meta = metadata(family, args, device)
    meta.update(dim=args.dim[0] if len(args.dim) == 1 else args.dim, dtype=args.dtype, sizes=sizes)
    print(f"{family}: {meta['device']} ({device.type}, {meta['threads']} threads) | torch {meta['torch']} | "
          f"gaussreg {meta['gaussreg']} | commit {meta['git_commit'][:12]} | {meta['date']}")
    print(f"D={','.join(map(str, args.dim))} {args.dtype}, n={sizes}, repeats={args.repeats} (>= {args.min_repeats}, "
          f"row budget {args.row_budget:g} s), warm-up {args.warmup}, {args.rotate} rotated input sets")
    load = meta["loadavg_at_start"]
    meta["warnings"] = []
    if device.type == "cpu" and load and os.cpu_count() and load[0] > 0.75 * os.cpu_count():
        meta["warnings"].append(
            f"load average {load[0]:.1f} on {os.cpu_count()} CPUs at start: other work shares this machine, so "
            "CPU timings are noisy"
            + ("" if os.environ.get("OMP_WAIT_POLICY") else
               "; OpenMP's default spin-then-sleep waiting makes barrier-heavy code much slower when threads "
               "are descheduled (OMP_WAIT_POLICY=passive in the environment reduces that)"))
        print("warning: " + meta["warnings"][-1])
    if meta["source_git_commit"] and meta["source_git_commit"] != meta["git_commit"]:
        meta["warnings"].append(
            f"gaussreg is imported from a checkout at {meta['source_git_commit'][:12]} (its Python code runs as it "
            f"is now) but was built at {meta['git_commit'][:12]} (the compiled modules and the recorded commit): "
            "rebuild it (pip install -e .) so that the results name what ran")
        print("warning: " + meta["warnings"][-1])
    rate = bandwidth = None
    if not args.no_floor:
        size = args.peak_size or (8192 if device.type == "cuda" else 4096)
        copy_mib = 1024 if device.type == "cuda" else 256
        rate = measure_matmul_rate(device, dtype, size)
        bandwidth = measure_copy_bandwidth(device, copy_mib << 20)
        meta["matmul_rate_flops"] = rate
        meta["copy_bandwidth_bytes_per_s"] = bandwidth
        meta["floor_note"] = FLOOR_NOTE.format(size=size, dtype=args.dtype, repeats=3, copy_mib=copy_mib)
        print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s ({size}^3 {args.dtype}"
              + (", TF32 off" if device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32 else "")
              + f"); copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write) -- achievable-peak proxies for "
              "the floor, not datasheet peaks")
    t0 = time.perf_counter()
    rows = []
    for dim in args.dim:
        ctx = _Ctx(args=args, device=device, dtype=dtype, dim=dim, rate=rate, bandwidth=bandwidth)
        if len(args.dim) > 1:
            print(f"\n######## D = {dim}", flush=True)
        dim_rows = run_cases(cases, ctx, sizes)
        if device.type == "cpu" and not args.no_memory:
            print("\nmemory (fresh subprocesses, after all timings):", flush=True)
            _memory_cpu(module, cases, dim_rows, args, dim)
        rows += dim_rows
    meta["wall_s"] = time.perf_counter() - t0
    meta["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["notes"] = list(notes)
    meta["memory_note"] = ("peak MiB = extra resident memory of one forward+backward call beyond its inputs "
                           "(CPU: fresh subprocess; CUDA: allocator peak)")
    print()
    print(format_table(rows))
    print()
    if rate:
        print("note: " + meta["floor_note"])
    print("note: " + meta["memory_note"])
    print("note: val err / grad err = relative error at this n against a float64 run (size_oracle column of the CSV)")
    for line in notes:
        print("note: " + line)
    for line in meta["warnings"]:
        print("warning: " + line)
    print(f"wall time {meta['wall_s']:.0f} s; load average at start {_load(meta['loadavg_at_start'])}, "
          f"at end {_load(meta['loadavg_at_end'])} on {meta['cpu_count']} CPUs")
    if not args.no_save:
        floor_fn = None
        if rate and bandwidth:
            itemsize = torch.empty((), dtype=dtype).element_size()
            floor_fn = {c.name: (lambda n, d, c=c: floors.floor_seconds(c.cost(n, d, itemsize, True), rate, bandwidth))
                        for c in cases if c.cost}
        for p in write_outputs(family, meta, rows, args, floor_fn):
            print(f"wrote {p}")
    return rows
