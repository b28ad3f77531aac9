"""CPU peak memory in fresh subprocesses: the extra resident memory of one forward+backward call
beyond its inputs, measured after all timings in a fresh subprocess (``--mem-isolation run``, the
default, or ``case``) that runs on the parent's ``sys.path`` and checks that it imported the same
gaussreg package (a row whose memory could not be measured says why): before each call the
inputs are built, freed heap pages are returned (``malloc_trim``) and the peak RSS is reset
through ``/proc/self/clear_refs``, so VmHWM - VmRSS is that call's own; a tiny call per
implementation first keeps one-time library initialisation out. ``--mem-isolation call`` (also
the fallback where clear_refs is not writable) starts one subprocess per call and reports the
peak after the call minus the peak after building the inputs (VmHWM, or ``ru_maxrss`` without
/proc; VmHWM because Linux carries a forking parent's RSS into the child's ``ru_maxrss``, which
would hide every call smaller than the benchmark process). The parent side is
:func:`_memory_cpu`; the subprocess runs the family module again (``_WORKER_BOOT``) with
``--_mem-worker``, whose ``main`` reaches :func:`_memory_worker` through ``_harness.main``, and
reports each call as a ``@@bench-mem`` JSON line on stdout. (CUDA memory is measured in place
by ``_harness``.)
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import torch

from ._cases import Case, _forward_backward
from ._util import _DTYPES, _short, is_oom

_MEM_TAG = "@@bench-mem "  # prefix of the memory worker's result lines on stdout


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
