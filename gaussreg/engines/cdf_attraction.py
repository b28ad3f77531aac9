"""The sorted-distances custom op of CDF attraction (formulas §1).

``cdf_pairs(z, ...)`` ranks the n' = n(n-1)/2 half squared distances d_ij exactly and
returns, in float64, ``sum_k |d_(k) - c'_k|^p``, together with what the backward pass
needs: sgn(e) as two bit sets (p = 1) or e itself (p = 2) at each pair's index, where
e is the residual of the pair's rank. The compiled engines (``csrc/*/cdf_attraction.*``)
never hold an n x n matrix; sort memory is bounded by ``capacity`` entries (several
passes when n' entries do not fit).

It is a ``torch.library.custom_op`` with a fake implementation and registered autograd,
so torch.compile traces it. The gradient is the almost-everywhere gradient of formulas §1; its own
derivative is refused (the ranks are piecewise constant, but the p = 2 residual is not).
"""
from __future__ import annotations

import functools
import operator
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _native
from ..targets import Chi2, Empirical, checked_quantiles, chi2_anchors
from ._autograd import first_order_only

SOURCE_TABLE, SOURCE_ANCHORS, SOURCE_EMPIRICAL = 0, 1, 2  # csrc/common/cdf_attraction.h
MAX_BINS = 1 << 28  # in-range bins of the selection: its per-bin arrays stay far below any index limit


def pair_count(n: int) -> int:
    return n * (n - 1) // 2


def supported(device: torch.device) -> bool:
    """Whether the compiled module for ``device`` has this engine."""
    module = _native.module_for(device)
    return module is not None and hasattr(module, "cdf_pairs_forward")


@functools.lru_cache(maxsize=256)
def entry_bytes(device: torch.device, dtype: torch.dtype, n: int) -> int:
    """Bytes of one sort entry (the unit of ``capacity``) for n points: a key and its pair
    index, 8 bytes while float32 keys and indices pack, else 16."""
    return int(_native.module_for(device).cdf_pairs_entry_bytes(_native.dtype_code(dtype), n))


def workspace_bytes(device: torch.device, dtype: torch.dtype, n: int, d: int, capacity: int, bins: int = 0) -> int:
    """The engine's workspace for one forward, from the sizes alone: the transposed points,
    the sort of ``capacity`` entries and the histograms (the outputs are extra: see
    ``signs_bytes``)."""
    # The CPU's per-thread tables grow with the OpenMP thread count: part of the cache key.
    threads = _native.num_threads() if device.type == "cpu" else 0
    return _cached_workspace_bytes(device, dtype, n, d, capacity, bins, threads)


# Cached: asked twice per call (the memory check and the forward), it cost a tenth of the
# engine's own work on a small batch.
@functools.lru_cache(maxsize=256)
def _cached_workspace_bytes(device: torch.device, dtype: torch.dtype, n: int, d: int, capacity: int, bins: int,
                            threads: int) -> int:
    module = _native.module_for(device)
    # On CUDA the module asks CUB for sizes on the current device: launch makes it z's.
    return int(_native.launch(module.cdf_pairs_workspace_bytes, device, _native.dtype_code(dtype), n, d, capacity,
                              bins))


def _signs_shape(n: int, p: int) -> Tuple[int, ...]:
    pairs = pair_count(n)
    return (2, (pairs + 63) // 64) if p == 1 else (pairs,)


def signs_bytes(n: int, p: int, dtype: torch.dtype) -> int:
    """What the forward keeps for the backward: sgn(e) as 2 bits a pair (p = 1), e itself (p = 2)."""
    shape = _signs_shape(n, p)
    return (shape[0] * shape[1] * 8) if p == 1 else shape[0] * dtype.itemsize


# The engine's counters, in the order it writes them (csrc/cpu/cdf_attraction.cpp SelectStat).
STATS = ("sorted_pairs", "passes", "bins", "mixed_bins", "refined_bins")


@torch.library.custom_op("gaussreg::cdf_pairs", mutates_args=())
def cdf_pairs_op(z: Tensor, table: Optional[Tensor], values: Optional[Tensor], anchors: Optional[Tensor], p: int,
                 capacity: int, bins: int, want_sorted: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sum_k |d_(k) - c'_k|^p in float64, signs or residuals, sorted d or an empty tensor, stats).

    The target quantiles c' come from exactly one of: ``table`` (n' values in z's dtype),
    ``values`` (a sorted float64 sample, interpolated per rank) or ``anchors`` (``pack_anchors``
    of ``gaussreg.targets.chi2_anchors``, interpolated per rank). p = 1 without the sorted
    values ranks by selection: a histogram of ``bins`` key bins (0: the engine's default)
    decides most pairs' signs without sorting them. ``stats`` holds the counters named in
    ``STATS`` (int64; -1 where an engine does not report them).
    """
    return _forward(z, table, values, anchors, p, capacity, bins, want_sorted)


def _forward(z: Tensor, table: Optional[Tensor], values: Optional[Tensor], anchors: Optional[Tensor], p: int,
             capacity: int, bins: int, want_sorted: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's body: checks its arguments, then ``_run_forward`` with every output."""
    _check_op_args(z, table, values, anchors, p, capacity, bins)
    value, signs, sorted_values, stats = _run_forward(z, table, values, anchors, p, capacity, bins, want_sorted, True)
    return value, signs, z.new_empty((0,)) if sorted_values is None else sorted_values, stats


def _run_forward(z: Tensor, table: Optional[Tensor], values: Optional[Tensor], anchors: Optional[Tensor], p: int,
                 capacity: int, bins: int, want_sorted: bool,
                 want_stats: bool) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Allocates the outputs and the workspace and calls the engine (arguments already checked):
    (value, signs or residuals, the sorted values or None, the counters or None)."""
    device, dtype = z.device, z.dtype
    n, d = z.shape
    what = "cdf_attraction"
    module = _native.module_for(device)
    ws_bytes = workspace_bytes(device, dtype, n, d, capacity, bins)
    stats = torch.full((len(STATS),), -1, dtype=torch.int64, device=device) if want_stats else None
    value = torch.zeros((), dtype=torch.float64, device=device)
    signs = _native.empty(_signs_shape(n, p), torch.int64 if p == 1 else dtype, device, what)
    sorted_values = _native.empty((pair_count(n),), dtype, device, what) if want_sorted else None
    if table is not None:
        source, table_ptr, array, count = SOURCE_TABLE, table.data_ptr(), 0, 0
    elif anchors is not None:
        source, table_ptr, array, count = SOURCE_ANCHORS, 0, anchors.data_ptr(), anchors.shape[0] // 3
    else:
        source, table_ptr, array, count = SOURCE_EMPIRICAL, 0, values.data_ptr(), values.shape[0]
    args = [_native.dtype_code(dtype), n, d, z.data_ptr(), source, table_ptr, array, count, p, value.data_ptr(),
            *_sign_pointers(signs, p), 0 if sorted_values is None else sorted_values.data_ptr(), capacity, bins,
            0 if stats is None else stats.data_ptr()]
    try:
        with _native.workspace(ws_bytes, device, what) as workspace:
            _native.launch(module.cdf_pairs_forward, device, *args, workspace.data_ptr(), ws_bytes)
    except OverflowError as exc:  # std::overflow_error: a bucket of tied distances overflows a pass
        raise MemoryError(f"gaussreg.{exc}") from exc
    return value, signs, sorted_values, stats


def _sign_pointers(signs: Tensor, p: int) -> Tuple[int, int, int]:
    """(pos, neg, residual) of the engines' calls: the two bit sets, rows of ``signs`` (p = 1),
    or the residuals (p = 2); 0 for those absent."""
    if p != 1:
        return 0, 0, signs.data_ptr()
    pos = signs.data_ptr()
    return pos, pos + signs.stride(0) * signs.element_size(), 0


def _check_op_args(z: Tensor, table: Optional[Tensor], values: Optional[Tensor], anchors: Optional[Tensor], p: int,
                   capacity: int, bins: int) -> None:
    """The op's own contract (the front end guarantees it; direct callers get an error)."""
    if not supported(z.device):
        raise RuntimeError(f"gaussreg::cdf_pairs: no compiled engine for {z.device}")
    if z.dtype not in (torch.float32, torch.float64) or z.dim() != 2 or not z.is_contiguous() or z.shape[0] < 2:
        raise ValueError(f"gaussreg::cdf_pairs: z must be a contiguous (n >= 2, D) float32/float64 tensor, "
                         f"got {z.dtype} {tuple(z.shape)}")
    if p not in (1, 2) or capacity < 1 or not 0 <= bins <= MAX_BINS:
        raise ValueError(f"gaussreg::cdf_pairs: p must be 1 or 2, capacity positive and bins in [0, {MAX_BINS}], "
                         f"got {p}, {capacity}, {bins}")
    if table is not None and (table.dtype != z.dtype or table.device != z.device or not table.is_contiguous()
                              or table.shape != (pair_count(z.shape[0]),)):
        raise ValueError("gaussreg::cdf_pairs: table must hold n(n-1)/2 contiguous values of z's dtype and device")
    if values is not None and (values.dtype != torch.float64 or values.device != z.device or values.dim() != 1
                               or not values.is_contiguous() or values.shape[0] < 1):
        raise ValueError("gaussreg::cdf_pairs: values must be a sorted contiguous 1-D float64 tensor on z's device")
    if anchors is not None and (anchors.dtype != torch.int64 or anchors.device != z.device or anchors.dim() != 1
                                or not anchors.is_contiguous() or anchors.shape[0] < 3 or anchors.shape[0] % 3):
        raise ValueError("gaussreg::cdf_pairs: anchors must be pack_anchors(...) on z's device")
    if sum(t is not None for t in (table, values, anchors)) != 1:
        raise ValueError("gaussreg::cdf_pairs: give exactly one of table, values and anchors")


@cdf_pairs_op.register_fake
def _(z, table, values, anchors, p, capacity, bins, want_sorted):
    n = z.shape[0]
    value = z.new_empty((), dtype=torch.float64)
    signs = z.new_empty(_signs_shape(n, p), dtype=torch.int64 if p == 1 else z.dtype)
    stats = z.new_empty((len(STATS),), dtype=torch.int64)
    return value, signs, z.new_empty((pair_count(n) if want_sorted else 0,)), stats


@torch.library.custom_op("gaussreg::cdf_pairs_backward", mutates_args=())
def cdf_pairs_backward_op(z: Tensor, signs: Tensor, p: int, grad_value: Optional[Tensor], scale: float) -> Tensor:
    """grad_value * scale * d(sum_k |e_k|^p)/dz: scale * sum_j s_ij (z_i - z_j) with s = sgn(e)
    or 2e (formulas §1), times ``grad_value`` (a 0-dim tensor; None: not multiplied)."""
    return _backward_pass(z, signs, p, grad_value, scale)


def _backward_pass(z: Tensor, signs: Tensor, p: int, grad_value: Optional[Tensor], scale: float) -> Tensor:
    """The backward op's body: one fused pass of the engine over the signs or residuals."""
    n, d = z.shape
    grad = _native.empty((n, d), z.dtype, z.device, "cdf_attraction")
    module = _native.module_for(z.device)
    # The kernel scales by a host number (weights and counts); the incoming gradient multiplies
    # on the device (no host read, so no stream sync).
    args = [_native.dtype_code(z.dtype), n, d, z.data_ptr(), p, *_sign_pointers(signs, p),
            scale * (1.0 if p == 1 else 2.0), grad.data_ptr()]
    _native.launch(module.cdf_pairs_backward, z.device, *args)
    return grad if grad_value is None else grad.mul_(grad_value.to(grad.dtype))


@cdf_pairs_backward_op.register_fake
def _(z, signs, p, grad_value, scale):
    return torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    z, _table, _values, _anchors, p, _capacity, _bins, _want_sorted = inputs
    _, signs, _, _ = output
    ctx.p = p
    ctx.save_for_backward(z, signs)
    ctx.mark_non_differentiable(signs, output[2], output[3])
    # No zero gradients for the signs: materialised, they were one more copy of the signs
    # (537 MB at n = 65536) in every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, g_value, _g_signs, _g_sorted, _g_stats):
    z, signs = ctx.saved_tensors
    if g_value is None:
        return None, None, None, None, None, None, None, None
    grad = cdf_pairs_backward_op(z, signs, ctx.p, g_value, 1.0)
    grad = first_order_only(grad, "cdf_attraction", z)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("gaussreg::cdf_pairs", _backward, setup_context=_setup_context)


def pack_anchors(anchors: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """(ranks, x, slope) of ``chi2_anchors`` as one int64 tensor, the layout the engines read."""
    ranks, x, slope = anchors
    return torch.cat([ranks, x.view(torch.int64), slope.view(torch.int64)])


def cdf_pairs(z: Tensor, p: int, capacity: int, *, table: Optional[Tensor] = None, values: Optional[Tensor] = None,
              anchors: Optional[Tensor] = None, bins: int = 0, with_stats: bool = False):
    """sum_k |d_(k) - c'_k|^p over the ranks of the half squared distances of z, float64, differentiable.

    With ``with_stats``, also the engine's counters as a dict (keys ``STATS``; one host read).
    """
    value, _, _, stats = cdf_pairs_op(z, table, values, anchors, p, capacity, bins, False)
    if not with_stats:
        return value
    return value, dict(zip(STATS, (int(v) for v in stats.tolist())))


def rank_distances(z: Tensor, p: int, capacity: int, *, table: Optional[Tensor] = None,
                   values: Optional[Tensor] = None, anchors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(sum_k |d_(k) - c'_k|^p in float64, the signs or residuals), outside autograd.

    For an ``autograd.Function`` that owns the gradient (``distances_gradient`` gives it):
    eagerly the engine is called directly, since the custom op's dispatch costs about as
    much as the engine's work on a small batch; while torch.compile traces, through the op.
    ``z`` and the quantile source must meet the op's contract (``_check_op_args``): the
    eager call does not check it again.
    """
    if torch.compiler.is_compiling():
        value, signs, _, _ = cdf_pairs_op(z, table, values, anchors, p, capacity, 0, False)
    else:
        value, signs, _, _ = _run_forward(z, table, values, anchors, p, capacity, 0, False, False)
    return value, signs


def distances_gradient(z: Tensor, signs: Tensor, p: int, grad_value: Optional[Tensor], scale: float = 1.0) -> Tensor:
    """grad_value * scale * d(sum_k |d_(k) - c'_k|^p)/dz from ``rank_distances``' signs or
    residuals; ``grad_value`` None leaves the product by it to the caller (directly eagerly,
    through the backward op while torch.compile traces)."""
    run = cdf_pairs_backward_op if torch.compiler.is_compiling() else _backward_pass
    return run(z, signs, p, grad_value, scale)


def sorted_half_sq_distances(z: Tensor, capacity: Optional[int] = None) -> Tensor:
    """All n' values ||z_i - z_j||^2 / 2 (i < j) in ascending order, by the compiled engine."""
    z = z.detach().contiguous()
    capacity = pair_count(z.shape[0]) if capacity is None else capacity
    dummy_target = torch.zeros(1, dtype=torch.float64, device=z.device)  # a constant target: no quantile work
    _, _, values, _ = cdf_pairs_op(z, None, dummy_target, None, 2, capacity, 0, True)
    return values


# ---------------------------------------------------------------- plan (sizes only)


EXACT_TABLE_MAX = 1 << 16  # Chi2 tables this small are exact and cheap


def default_sort_bytes(device: torch.device) -> int:
    """The sort memory a call may hold by default: a quarter of RAM, half a GPU's free memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    ram = _native.ram_bytes()
    return 4 << 30 if ram is None else ram // 4


class Plan(NamedTuple):
    """How the engine ranks the n' pairs of one call: the target's quantiles as a table of n'
    values (else anchors or the Empirical sample, interpolated per rank), the sort entries
    a pass may hold (several passes beyond) and the ``table_policy`` that chose the table."""
    from_table: bool
    capacity: int
    policy: str


def table_policy(target, pairs: int) -> str:
    """How the engine gets the target quantiles: "always" a table of n' values, or "never":
    Chi2 beyond EXACT_TABLE_MAX pairs (interpolation anchors) and Empirical (its sample,
    interpolated per rank). Building an Empirical table in torch took longer than the
    engine: at n = 4096 (8.4M quantiles) 436-499 ms, where per-rank interpolation added
    12 ms (p = 1) or nothing (p = 2) to the engine's 76 and 215 ms (2 CPU threads)."""
    if isinstance(target, Chi2):
        return "never" if pairs > EXACT_TABLE_MAX else "always"
    return "never" if isinstance(target, Empirical) else "always"


def plan(device: torch.device, dtype: torch.dtype, n: int, target, max_sort_bytes: Optional[int]) -> Plan:
    """The plan of n points' distances term toward ``target`` within ``max_sort_bytes``
    (None: ``default_sort_bytes``). Sizes only: torch.compile evaluates it once. A symbolic n
    (a recompile with dynamic shapes) is specialized here: the plan is a constant of the
    graph, as the engine's workspace must be."""
    n = operator.index(n)  # dynamo specializes a SymInt here (int() would keep it symbolic)
    policy = table_policy(target, pair_count(n))
    return Plan(*_plan_numbers(device, dtype, n, max_sort_bytes, policy), policy)


@torch.compiler.assume_constant_result
def _plan_numbers(device: torch.device, dtype: torch.dtype, n: int, max_sort_bytes: Optional[int],
                  policy: str) -> Tuple[bool, int]:
    """(quantiles from a table?, sort entries per pass), at least one entry (the engine then
    reports a bucket that cannot fit)."""
    pairs = pair_count(n)
    budget = default_sort_bytes(device) if max_sort_bytes is None else max_sort_bytes
    return policy == "always", min(pairs, max(1, budget // entry_bytes(device, dtype, n)))


def quantile_source(z: Tensor, target, plan: Plan, name: str = "target") -> dict:
    """The ``table``, ``anchors`` or ``values`` argument of ``cdf_pairs`` for ``target``
    under ``plan``: Chi2 beyond 65536 pairs passes its anchors (a few thousand exact
    quantiles; the engine interpolates each rank), Empirical its sample (interpolated per
    rank the same way), every other target its checked table (``name`` names the argument
    in its errors)."""
    pairs = pair_count(z.shape[0])
    if plan.from_table:
        return {"table": checked_quantiles(name, target, pairs, z.device, z.dtype).contiguous()}
    if isinstance(target, Chi2):
        return {"anchors": _chi2_anchors(pairs, target.df, z.device)}
    return {"values": target.sorted_values.to(z.device).contiguous()}


@torch.compiler.assume_constant_result
def _chi2_anchors(pairs: int, df: float, device: torch.device) -> Tensor:
    return pack_anchors(chi2_anchors(pairs, df, device=device))


def check_memory(z: Tensor, dtype: torch.dtype, p: int, plan: Plan) -> None:
    """MemoryError naming the bytes when the distances term cannot fit, from the sizes alone.

    Counted: the copy of z in the compute dtype (when z is not already a contiguous tensor
    of it), a quantile table, the engine's workspace (sort entries within the budget) and
    what the forward keeps for the backward (2 bits a pair for p = 1, a value a pair for
    p = 2). The message names max_sort_bytes when a smaller budget would fit, and says
    what cannot shrink otherwise.
    """
    n, d = z.shape
    device = z.device
    pairs = pair_count(n)
    elem = dtype.itemsize
    from_table, capacity, policy = plan
    copy = n * d * elem if (z.dtype != dtype or not z.is_contiguous()) else 0
    table = pairs * elem if from_table else 0
    signs = signs_bytes(n, p, dtype)
    need = copy + table + signs + workspace_bytes(device, dtype, n, d, capacity)
    # Whatever max_sort_bytes: the kept signs/residuals, the points' copies (z in the compute
    # dtype, its transposed copy in the engine) and a table the target requires.
    floor = signs + copy + n * d * elem + (table if policy == "always" else 0)
    kept = "2 bits per pair for p = 1" if p == 1 else f"{elem} bytes per pair for p = 2 (p = 1 keeps 2 bits)"
    why = (f"the backward keeps {signs} bytes for the n(n-1)/2 = {pairs} pairs ({kept})"
           + (f" and the target's table of {pairs} quantiles takes {pairs * elem} bytes" if policy == "always"
              and table else "") + "; use fewer points")
    # A budget that leaves room for the rest: half of what the floor leaves of the device.
    room = (_native._device_capacity(device) or need) - floor
    budget = max(entry_bytes(device, dtype, n), room // 2)
    _native.check_fits(need, device, "cdf_attraction",
                       f"pass max_sort_bytes={budget} (or less) to sort the distances in several passes",
                       floor=(floor, why))


# ---------------------------------------------------------------- key bins (ks_distances)


class DistanceBins(NamedTuple):
    """The n' half squared distances counted in the selection engine's bins (ascending key ranges).

    ``counts[b]`` keys fall in bin b, the smallest ``low[b]`` and the largest ``high[b]``
    (z's dtype, 0 where empty); bin b's ranks are (A_b, A_b + counts[b]] with A_b the keys
    of the bins before it. ``layout`` names the bins for ``collect_distance_bins``.
    """
    layout: Tensor
    counts: Tensor
    low: Tensor
    high: Tensor


def distance_bins_supported(device: torch.device) -> bool:
    """Whether the compiled module for ``device`` histograms distances by key range (CPU today)."""
    return supported(device) and hasattr(_native.module_for(device), "ks_distances_count")


def _ks_workspace_bytes(module, z: Tensor, bins: int) -> int:
    n, d = z.shape
    return int(_native.launch(module.ks_distances_workspace_bytes, z.device, _native.dtype_code(z.dtype), n, d, bins))


def distance_bins(z: Tensor, bins: int = 0, key_range: Optional[Tuple[float, float]] = None) -> DistanceBins:
    """One pass over the pairs of contiguous (n, D) points z: keys per bin and each bin's extremes.

    ``bins`` in-range bins (0: the engine's default, as for ``cdf_attraction``'s selection)
    between the extremes of a sample of pairs, or between the keys ``key_range`` = (low,
    high) to refine a part of an earlier histogram; the keys outside fall in the first and
    last (clamp) bins either way.
    """
    if not 0 <= bins <= MAX_BINS:
        raise ValueError(f"distance_bins: bins must be in [0, {MAX_BINS}], got {bins}")
    low_key, high_key = (0.0, 0.0) if key_range is None else (float(key_range[0]), float(key_range[1]))
    if key_range is not None and not 0.0 <= low_key <= high_key:
        raise ValueError(f"distance_bins: key_range must be 0 <= low <= high, got {key_range}")
    module = _native.module_for(z.device)
    n, d = z.shape
    count = int(module.ks_distances_bin_count(n, bins))
    ws_bytes = _ks_workspace_bytes(module, z, bins)
    layout = torch.zeros(3, dtype=torch.int64, device=z.device)
    counts = torch.zeros(count, dtype=torch.int64, device=z.device)
    low = torch.zeros(count, dtype=z.dtype, device=z.device)
    high = torch.zeros(count, dtype=z.dtype, device=z.device)
    with _native.workspace(ws_bytes, z.device, "ks_distances") as workspace:
        _native.launch(module.ks_distances_count, z.device, _native.dtype_code(z.dtype), n, d, z.data_ptr(), bins,
                       low_key, high_key, layout.data_ptr(), counts.data_ptr(), low.data_ptr(), high.data_ptr(),
                       workspace.data_ptr(), ws_bytes)
    used = int(layout[2]) + 2
    return DistanceBins(layout, counts[:used], low[:used], high[:used])


def collect_distance_bins(z: Tensor, found: DistanceBins, chosen: Tensor, bins: int = 0) -> Tensor:
    """The keys of the bins ``chosen`` (ascending bin indices into ``found``), each bin's sorted, concatenated.

    ``found`` is ``distance_bins(z, bins)`` of the same z and ``bins``; a second pass over
    the pairs collects only those bins' keys (their total is the memory this takes).
    """
    module = _native.module_for(z.device)
    n, d = z.shape
    sizes = found.counts[chosen]
    ends_of_chosen = torch.cumsum(sizes, 0)
    starts = torch.full_like(found.counts, -1)
    ends = torch.full_like(found.counts, -1)
    starts[chosen] = ends_of_chosen - sizes
    ends[chosen] = ends_of_chosen
    total = int(ends_of_chosen[-1]) if chosen.numel() else 0
    keys = _native.empty((total,), z.dtype, z.device, "ks_distances")
    ws_bytes = _ks_workspace_bytes(module, z, bins)
    with _native.workspace(ws_bytes, z.device, "ks_distances") as workspace:
        _native.launch(module.ks_distances_collect, z.device, _native.dtype_code(z.dtype), n, d, z.data_ptr(), bins,
                       found.layout.data_ptr(), starts.data_ptr(), ends.data_ptr(), keys.data_ptr() if total else 0,
                       total, workspace.data_ptr(), ws_bytes)
    return keys


# ---------------------------------------------------------------- shares across ranks (p = 1)


def shares_supported(device: torch.device) -> bool:
    """Whether the compiled module for ``device`` splits the p = 1 selection across ranks (CPU)."""
    module = _native.module_for(device)
    return module is not None and hasattr(module, "cdf_share_count")


def share_workspace_bytes(dtype: torch.dtype, n: int, d: int) -> int:
    module = _native.module_for(torch.device("cpu"))
    return int(module.cdf_share_workspace_bytes(_native.dtype_code(dtype), n, d, 0, _native.num_threads()))


SHARE_ENTRY_BYTES = 2 * 16  # every rank holds all ranks' mixed entries twice (gathered, then placed)


def share_bytes(dtype: torch.dtype, n: int, d: int, mixed: int) -> int:
    """Working bytes of one rank's split call: the workspace, the signs kept for the backward
    and the mixed entries of all ranks, twice (gathered, then placed by bin), 16 bytes each."""
    return share_workspace_bytes(dtype, n, d) + signs_bytes(n, 1, dtype) + SHARE_ENTRY_BYTES * mixed


def _share_capacity(max_sort_bytes: Optional[int], group) -> int:
    """The mixed pairs every rank can hold within its sort budget (``max_sort_bytes``, else
    ``default_sort_bytes``): the least over the ranks, so that all decide the second level
    alike. More mixed pairs than this make the engine cut their bins into leaves."""
    import torch.distributed as dist

    budget = default_sort_bytes(torch.device("cpu")) if max_sort_bytes is None else max_sort_bytes
    capacity = torch.tensor([max(1, budget // SHARE_ENTRY_BYTES)], dtype=torch.int64)
    dist.all_reduce(capacity, op=dist.ReduceOp.MIN, group=group)
    return int(capacity)


class _ShardedCdfPairs(torch.autograd.Function):
    """sum_k |d_(k) - c'_k| with each rank of ``group`` handling its share of the pairs.

    Every rank holds all n gathered points. The engine steps (``cdf_share_*`` in
    csrc/cpu/cdf_attraction.cpp) run with collectives between them: an all-reduce of the
    bin histogram (bins x 5 int64, whatever n), when the mixed pairs are many one more pass
    and an all-reduce of the leaves they are cut into (the second level), an all-gather of
    the mixed bins' or leaves' entries (16 bytes each), and the value comes out the same on
    every rank. Backward:
    each rank adds its own pairs' terms to every point's gradient, times the world size,
    so that the gather's backward (a sum over ranks) gives world size times the gradient,
    the convention of ``gaussreg.distributed``.
    """

    @staticmethod
    def forward(ctx, z: Tensor, source: dict, process_group, rank: int, world: int, stats: Optional[dict],
                max_sort_bytes: Optional[int]) -> Tensor:
        import torch.distributed as dist

        from .. import distributed

        group = None if process_group == "world" else process_group
        module = _native.module_for(z.device)
        code = _native.dtype_code(z.dtype)
        n, d = z.shape
        what = "cdf_attraction"
        ws_bytes = share_workspace_bytes(z.dtype, n, d)
        workspace = _native.empty((max(ws_bytes, 1),), torch.uint8, z.device, what)
        layout = torch.zeros(6, dtype=torch.int64)  # the bins and leaves, from steps 1 and 2 to the others
        call = _share_call(z, source, rank, world, workspace, ws_bytes, layout)
        call["capacity"] = _share_capacity(max_sort_bytes, group)
        most = int(module.ks_distances_bin_count(n, 0))
        counts = torch.zeros(most, dtype=torch.int64)
        limbs = torch.zeros(most, 4, dtype=torch.int64)
        bins = int(module.cdf_share_count(code, call, counts.data_ptr(), limbs.data_ptr()))
        my_pairs = int(counts[:bins].sum())
        counts, limbs = _all_reduce_histogram(counts[:bins], limbs[:bins], group)
        totals = torch.zeros(3, dtype=torch.int64)
        module.cdf_share_classify(code, call, counts.data_ptr(), limbs.data_ptr(), totals.data_ptr())
        leaves = int(totals[2])
        if leaves:  # the second level: the mixed bins cut into leaves, counted by one more split pass
            counts = torch.zeros(leaves, dtype=torch.int64)
            limbs = torch.zeros(leaves, 4, dtype=torch.int64)
            module.cdf_share_count_leaves(code, call, counts.data_ptr(), limbs.data_ptr())
            counts, limbs = _all_reduce_histogram(counts, limbs, group)
            module.cdf_share_classify_leaves(code, call, counts.data_ptr(), limbs.data_ptr(), totals.data_ptr())
        mine_count, all_count, _ = (int(t) for t in totals)
        # Free memory differs between ranks: they agree on the verdict (all raise or none).
        need = share_bytes(z.dtype, n, d, all_count)
        distributed.checked_together(process_group, lambda: _native.check_fits(need, z.device, what))
        signs = torch.zeros(_signs_shape(n, 1), dtype=torch.int64)
        mine = _native.empty((mine_count, 2), torch.int64, z.device, what)
        pos, neg, _ = _sign_pointers(signs, 1)
        module.cdf_share_collect(code, call, pos, neg, mine.data_ptr())
        every = _gather_entries(mine, all_count, group)
        placed = _native.empty((all_count, 2), torch.int64, z.device, what)
        value = torch.zeros((), dtype=torch.float64)
        module.cdf_share_rank(code, call, pos, neg, every.data_ptr(), all_count,
                              placed.data_ptr(), value.data_ptr())
        ctx.save_for_backward(z, signs)
        ctx.rank, ctx.world = rank, world
        if stats is not None:
            stats.update(pairs=my_pairs, mixed_pairs=mine_count, all_mixed_pairs=all_count, bins=bins,
                         refined_bins=int(layout[5]))
        return value

    @staticmethod
    def backward(ctx, g_value: Tensor):
        z, signs = ctx.saved_tensors
        n, d = z.shape
        grad = _native.empty((n, d), z.dtype, z.device, "cdf_attraction")
        module = _native.module_for(z.device)
        module.cdf_pairs_backward(_native.dtype_code(z.dtype), n, d, z.data_ptr(), 1, *_sign_pointers(signs, 1),
                                  float(g_value) * ctx.world, grad.data_ptr(),
                                  _native.num_threads(), ctx.rank, ctx.world)
        return first_order_only(grad, "cdf_attraction", z), None, None, None, None, None, None


def _share_call(z: Tensor, source: dict, rank: int, world: int, workspace: Tensor, ws_bytes: int,
                layout: Tensor) -> dict:
    n, d = z.shape
    call = dict(n=n, d=d, z=z.data_ptr(), bins=0, rank=rank, world=world, workspace=workspace.data_ptr(),
                ws_bytes=ws_bytes, threads=_native.num_threads(), table=0, values=0, count=0,
                layout=layout.data_ptr())
    if "table" in source:
        call.update(source=SOURCE_TABLE, table=source["table"].data_ptr())
    elif "anchors" in source:
        call.update(source=SOURCE_ANCHORS, values=source["anchors"].data_ptr(), count=source["anchors"].shape[0] // 3)
    else:
        call.update(source=SOURCE_EMPIRICAL, values=source["values"].data_ptr(), count=source["values"].shape[0])
    return call


def _all_reduce_histogram(counts: Tensor, limbs: Tensor, group) -> Tuple[Tensor, Tensor]:
    """Every rank's counts and significand limbs summed (int64: exact in any order)."""
    import torch.distributed as dist

    histogram = torch.cat([counts[:, None], limbs], 1).contiguous()
    dist.all_reduce(histogram, group=group)
    return histogram[:, 0].contiguous(), histogram[:, 1:].contiguous()


def _gather_entries(mine: Tensor, all_count: int, group) -> Tensor:
    """Every rank's (key bits, pair index) entries, concatenated in rank order."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([mine.shape[0]], dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    widest = max(sizes)
    padded = torch.zeros((widest, 2), dtype=torch.int64)
    padded[: mine.shape[0]] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    every = torch.cat([part[:count] for part, count in zip(parts, sizes)]).contiguous()
    if every.shape[0] != all_count:
        raise RuntimeError(f"cdf_attraction: the ranks hold {every.shape[0]} mixed pairs, the histogram {all_count}")
    return every


def sharded_cdf_pairs(z: Tensor, source: dict, process_group, stats: Optional[dict] = None,
                      max_sort_bytes: Optional[int] = None) -> Tensor:
    """sum_k |d_(k) - c'_k| (p = 1) of the gathered points z, each rank of ``process_group``
    ranking its share of the pairs; float64, the same on every rank, differentiable in z
    (gradient convention of ``gaussreg.distributed``). CPU, eager mode. ``max_sort_bytes``
    bounds the mixed pairs' entries a rank holds before the second level is forced (None:
    ``default_sort_bytes``; the least over the ranks counts). ``stats``, a dict,
    receives this rank's ``pairs`` and ``mixed_pairs``, all ranks' ``all_mixed_pairs``, the
    ``bins`` and the ``refined_bins`` of the second level (0: none)."""
    from .. import distributed

    if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64) or z.dim() != 2 \
            or not z.is_contiguous() or z.shape[0] < 2 or not shares_supported(z.device):
        raise ValueError(f"sharded_cdf_pairs: z must be a contiguous (n >= 2, D) float32/float64 CPU tensor "
                         f"and the CPU module built, got {z.dtype} {tuple(z.shape)} on {z.device}")
    rank, world = distributed.rank_and_size(process_group)
    return _ShardedCdfPairs.apply(z, source, process_group, rank, world, stats, max_sort_bytes)
