"""The one benchmark harness behind every family script in ``gaussreg/bench/`` (DESIGN.md, "Benchmarks").

A family script declares only what it measures -- :class:`Case` objects, each with an
input builder, the :class:`Impl` s to compare and a FLOP count -- and calls :func:`main`.
Everything else is the same for every family, in these modules:

* ``_cases``: :class:`Case` and :class:`Impl`, and running an implementation on a case's inputs.
* ``_harness`` (this module): the command line, the measurement (:func:`run_cases`) and
  :func:`main`, the entry point of every family script.
* ``_environment``: device name, versions, build commit, the matmul rate and copy bandwidth
  behind the floor, and the metadata every output is stamped with.
* ``_memory``: CPU peak memory, measured in fresh subprocesses after all timings.
* ``_output``: the printed table and the JSON, CSV and PNG files.
* ``_util``: small helpers the others share (out-of-memory errors, timing one call).
* ``floors``: the FLOP and byte counts, and the floor they give.

What this module does:

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
* **Memory.** CPU: after all timings, in fresh subprocesses (``_memory``). CUDA:
  ``torch.cuda.max_memory_allocated`` above the allocation before the call.
* **Failures are results.** Out-of-memory, a call slower than ``--timeout``, an exception,
  a size an implementation is not run at (``Impl.max_n``) or one whose estimated memory
  (``Impl.bytes_needed``) exceeds what is available: each becomes a row with a status and
  a note, and larger sizes of that implementation are skipped after a failure.
* **Efficiency.** GFLOP/s from the case's FLOP count, and measured/floor with
  floor = max(FLOPs / the rate of a large matmul, bytes / the bandwidth of a large copy),
  both timed on the same device in the same run (``_environment``, ``floors``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import statistics
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import floors
from .._progress import Progress
from ._cases import Case, Impl, _clear_grads, _forward_backward, _forward_only, _leaves, _value_and_grads
from ._environment import measure_copy_bandwidth, measure_matmul_rate, metadata
from ._memory import _memory_cpu, _memory_worker
from ._output import CSV_FIELDS, DEFAULT_RESULTS_DIR, _load, _ms, format_table, write_outputs
from ._util import _DTYPES, _available_bytes, _release, _short, _time_once, is_oom

FLOOR_NOTE = ("floor = max(FLOPs / the rate of a {size}^3 {dtype} matmul, bytes / the bandwidth of a {copy_mib} MiB "
              "copy), both timed on this device in this run (best of {repeats}; gaussreg/bench/floors.py counts FLOPs and "
              "bytes): achievable-peak proxies, not datasheet peaks; 'x floor' = measured / floor")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


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
    timing.add_argument("--run-budget", type=float, default=None, metavar="SECONDS",
                        help="wall-clock seconds for the whole run, shared equally by the cases (and D values) "
                             "still to run: a row whose predicted time (the same implementation's previous row, "
                             "scaled by the case's FLOP count) does not fit its case's share is not started but "
                             "recorded as 'skipped', and the results are saved as usual (default: no limit)")
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


def _stats(times: List[float]) -> Dict[str, float]:
    if len(times) >= 2:
        q = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(times), "iqr": iqr, "min": min(times)}


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
    deadline: Optional[float] = None  # time.perf_counter() at which --run-budget ends
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


def _share_of_budget(deadline: Optional[float], parts: int) -> Optional[float]:
    """The deadline of the next of `parts` equal shares of the time left before `deadline`."""
    if deadline is None:
        return None
    now = time.perf_counter()
    return now + max(deadline - now, 0.0) / parts


def _over_budget(case: Case, n: int, ctx: _Ctx, previous: Optional[Tuple[int, float]],
                 deadline: Optional[float]) -> Optional[str]:
    """Why a row is not started under --run-budget: its predicted time exceeds what is left
    before `deadline` (the case's share of the budget).

    The prediction is the same implementation's previous row (n0, seconds), scaled by the
    case's FLOP count from n0 to n (by (n / n0)^2 without one); a first row is predicted free.
    """
    if deadline is None:
        return None
    left = deadline - time.perf_counter()
    predicted = 0.0
    if previous is not None:
        n0, seconds = previous
        growth = (n / n0) ** 2
        if case.cost is not None:
            itemsize = ctx.dtype.itemsize
            before, after = case.cost(n0, ctx.dim, itemsize, True).flops, case.cost(n, ctx.dim, itemsize, True).flops
            if before and after:
                growth = after / before
        predicted = seconds * growth
    if left > 0 and predicted <= left:
        return None
    return (f"past --run-budget {ctx.args.run_budget:g} s" if left <= 0 else
            f"predicted {predicted:.3g} s > the {left:.3g} s left of this case's share of --run-budget "
            f"{ctx.args.run_budget:g} s")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the block runs (in the main thread), so that a
    run stopped by a time limit (``timeout``) saves its rows as one stopped by Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _timed_impls(case: Case) -> List[Impl]:
    return [i for i in case.impls if i.unavailable is None and not i.oracle_only]


def run_cases(cases: List[Case], ctx: _Ctx, sizes: List[int], rows: Optional[List[dict]] = None) -> List[dict]:
    """Every case at every size: the rows, appended to ``rows`` as they are measured (so that
    a caller interrupted in the middle keeps those already measured)."""
    rows = [] if rows is None else rows
    progress = Progress(sum(len(_timed_impls(c)) for c in cases) * len(sizes), f"{ctx.device.type} D={ctx.dim}",
                        quiet=ctx.args.quiet, lines=False)  # without a bar, the row lines say enough
    try:
        for index, case in enumerate(cases):
            progress.write(f"\n== {case.name}: {case.description}")
            case_deadline = _share_of_budget(ctx.deadline, len(cases) - index)  # time a case leaves unused goes on
            if ctx.deadline is not None and time.perf_counter() >= ctx.deadline:
                reason = f"past --run-budget {ctx.args.run_budget:g} s"
                for n in sizes:
                    for impl in _timed_impls(case):
                        rows.append(_row(case, impl, n, ctx, "skipped", reason))
                        progress.step(f"{case.name}: {reason}")
                progress.write(f"  skipped: {reason}")
                continue
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
                        raised = ctx.gate_errors[(case.name, impl.name)]
                        note = f"correctness check raised {raised}; not timed"
                        rows.append(_row(case, impl, None, ctx, "error", note))
            runnable = [i for i in _timed_impls(case)
                        if ctx.gate.get((case.name, i.name), (None,))[0] is not False
                        and (case.name, i.name) not in ctx.gate_errors]
            for _ in range((len(_timed_impls(case)) - len(runnable)) * len(sizes)):
                progress.step(f"{case.name}: not timed")
            stopped: Dict[str, str] = {}
            oracle_cache: dict = {}
            previous: Dict[str, Tuple[int, float]] = {}  # impl -> (n, seconds) of its last measured row
            for n in sizes:
                for impl in runnable:
                    reason = (_skip_reason(impl, n, ctx, stopped)
                              or _over_budget(case, n, ctx, previous.get(impl.name), case_deadline))
                    if reason is not None:
                        row = _row(case, impl, n, ctx, "skipped", reason)
                    else:
                        started = time.perf_counter()
                        row = _measure(case, impl, n, ctx, oracle_cache, stopped)
                        previous[impl.name] = (n, time.perf_counter() - started)
                        if row["status"] in ("oom", "timeout", "error"):
                            stopped[impl.name] = f"skipped after {row['status']} at n={n}"
                    rows.append(row)
                    progress.write(_row_line(row))
                    progress.step(f"{case.name} {impl.name} n={n}", finished_block=impl is runnable[-1])
                oracle_cache.pop(n, None)
    finally:
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
    if args.run_budget is not None and not args.run_budget > 0:
        parser.error(f"--run-budget {args.run_budget:g}: expected a positive number of seconds")
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

    deadline = None if args.run_budget is None else time.perf_counter() + args.run_budget
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
    rows: List[dict] = []
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            for index, dim in enumerate(args.dim):
                ctx = _Ctx(args=args, device=device, dtype=dtype, dim=dim, rate=rate, bandwidth=bandwidth,
                           deadline=_share_of_budget(deadline, len(args.dim) - index))
                if len(args.dim) > 1:
                    print(f"\n######## D = {dim}", flush=True)
                dim_rows: List[dict] = []
                try:
                    run_cases(cases, ctx, sizes, dim_rows)
                finally:
                    rows += dim_rows
                if device.type == "cpu" and not args.no_memory:
                    if deadline is not None and time.perf_counter() >= deadline:
                        print(f"\nmemory: not measured (past --run-budget {args.run_budget:g} s)", flush=True)
                    else:
                        print("\nmemory (fresh subprocesses, after all timings):", flush=True)
                        _memory_cpu(module, cases, dim_rows, args, dim)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (a time limit): what was measured is printed and saved, marked.
        interrupted = True
        meta["warnings"].append(f"interrupted after {time.perf_counter() - t0:.0f} s: the rows measured by then "
                                "only")
        print("\nwarning: " + meta["warnings"][-1], flush=True)
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
    if interrupted:
        raise SystemExit(130)  # as a shell reports a run stopped by Ctrl-C, after the rows were saved
    return rows
