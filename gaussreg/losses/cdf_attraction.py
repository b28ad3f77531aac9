"""CDF attraction of radii and pairwise distances to target quantiles (SPEC 1, Duda eq. 13-14).

The radii term sorts n values and stays in torch. The distances term ranks all
n' = n(n-1)/2 half squared distances exactly in the compiled engines
(``csrc/*/cdf_attraction.*`` through ``gaussreg.engines.cdf_attraction``): distances generated on the fly; for
p = 1 on the CPU a selection (a histogram of every distance decides most signs, only the
pairs near a crossing of the empirical and target CDFs are sorted, ``csrc/common/cdf_select.h``),
otherwise bucketed sorts; signs kept as bits, one fused backward pass.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks, _native, reference
from ..distributed import maybe_gather
from ..targets import Chi2, Empirical, chi2_anchors
from ..engines import cdf_attraction as cdf_engine


def cdf_attraction(z: Tensor, *, radii_weight: float = 1.0, distances_weight: float = 1.0, p: int = 1,
                   radii_target=None, distances_target=None, backend: str = "auto",
                   max_sort_bytes: Optional[int] = None, process_group=None) -> Tensor:
    r"""Attraction of the sorted radii and pair distances to target quantiles (SPEC 1).

    .. math::
        L = w_r \frac{1}{n}\sum_{i=1}^{n} |r_{(i)} - c_i|^p
          + w_d \frac{1}{n'}\sum_{k=1}^{n'} |d_{(k)} - c'_k|^p

    with r_i = ||z_i||^2, d_ij = ||z_i - z_j||^2 / 2 over the n' = n(n-1)/2 pairs i < j,
    c_i = Q((i - 1/2)/n) and c'_k = Q'((k - 1/2)/n'). For z ~ N(0, I) both r and d are
    chi-squared with D degrees of freedom, the default targets. With p = 1 the loss is the
    area between the empirical and target CDFs and its gradient a sign,
    dL/dz_i = w_r (2/n) sgn(e_i) z_i + w_d (1/n') sum_{j != i} sgn(e_ij)(z_i - z_j);
    p = 2 replaces sgn(e) by 2e. Ranks are exact for every n' (no subsampled pairs); with
    p = 1 on the CPU most pairs get their sign from a histogram without being sorted (the
    same signs as a full sort), so memory is 2 bits a pair plus the few pairs sorted.

    Weight conventions: this function keeps value and gradient consistent. The paper's
    gradient step, eq. (14), writes 2/n' for the distance term, i.e. twice the gradient of
    eq. (13): use ``radii_weight=1, distances_weight=2`` to reproduce it, or
    ``radii_weight=0.5, distances_weight=2`` for its Mathematica appendix (1/n radii, 2/n'
    distances).

    Args:
        z: points (n, D), n >= 2, float16/bfloat16/float32/float64, CPU or CUDA.
        radii_weight, distances_weight: finite weights of the two terms (0 skips a term).
        p: 1 or 2.
        radii_target, distances_target: targets with ``quantiles(m, device, dtype)``;
            default ``gaussreg.targets.Chi2(D)``; ``gaussreg.targets.Empirical(values)``
            for a target known by a sample.
        backend: "auto", "native" or "reference" (plain PyTorch, O(n' D) memory).
        max_sort_bytes: memory the distance sort may hold at once (its entries: every
            pair's, or with p = 1 on the CPU the pairs of mixed histogram bins; and an
            Empirical target's table when that takes at most half of it); default a
            quarter of RAM on CPU, half the free memory on a GPU. Beyond it the engine
            collects in several passes, regenerating the distances each pass: slower,
            same exact result. Chi2 targets need no table beyond 65536 pairs. A long call
            on the CPU stops at Ctrl-C (KeyboardInterrupt) within about a second.

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.randn(1000, 20, requires_grad=True)
        >>> loss = gaussreg.cdf_attraction(z)
        >>> loss.backward()
    """
    z = _checks.points("z", z)
    (z,) = maybe_gather(process_group, z)
    device = z.device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"cdf_attraction: z on device {device}; gaussreg computes on CPU and CUDA tensors only")
    p = _checks.power(p)
    radii_weight = _finite_weight("radii_weight", radii_weight)
    distances_weight = _finite_weight("distances_weight", distances_weight)
    n, dim = z.shape
    radii_target = _target("radii_target", radii_target, dim)
    distances_target = _target("distances_target", distances_target, dim)
    if max_sort_bytes is not None:
        if isinstance(max_sort_bytes, bool) or not isinstance(max_sort_bytes, numbers.Integral) or max_sort_bytes < 1:
            raise ValueError(f"max_sort_bytes must be a positive int (bytes), got {max_sort_bytes!r}")
        max_sort_bytes = int(max_sort_bytes)
    dtype = _checks.compute_dtype(z)
    native = _native.use_native(device, backend, "cdf_attraction", entry="cdf_pairs_forward")
    if native and distances_weight != 0.0 and not _checks.compiling():
        # Before the copy and the NaN/Inf scan: an impossible request fails at once.
        _check_memory(z, dtype, p, distances_target, max_sort_bytes)
    _checks.finite("z", z)
    zc = z.to(dtype).contiguous()
    if not native:
        return reference.cdf_attraction(zc, radii_weight=radii_weight, distances_weight=distances_weight, p=p,
                                        radii_target=radii_target, distances_target=distances_target)
    terms = []
    if radii_weight != 0.0:
        terms.append(radii_weight * _radii_term(zc, radii_target, p))
    if distances_weight != 0.0:
        pairs = cdf_engine.pair_count(n)
        terms.append(distances_weight * (_distances_sum(zc, distances_target, p, max_sort_bytes) / pairs).to(dtype))
    if not terms:  # both weights 0: a zero that keeps the graph (zero gradient)
        return (zc * 0.0).sum()
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _finite_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _target(name: str, target, dim: int):
    if target is None:
        return Chi2(dim)
    if not callable(getattr(target, "quantiles", None)):
        raise TypeError(f"{name} must have a method quantiles(m, device, dtype) (e.g. gaussreg.targets.Chi2), "
                        f"got {type(target).__name__}")
    return target


def target_quantiles(name: str, target, m: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``target.quantiles(m, ...)`` checked: shape (m,), finite, on device, in dtype."""
    values = target.quantiles(m, device, dtype)
    if not isinstance(values, Tensor) or values.shape != (m,):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name}.quantiles({m}, ...) must return a tensor of shape ({m},), got {got}")
    values = values.to(device=device, dtype=dtype)
    _checks.require(torch.isfinite(values).all(), ValueError, f"{name}.quantiles returned NaN or Inf values")
    return values


def _radii_term(z: Tensor, target, p: int) -> Tensor:
    """(1/n) sum_i |r_(i) - c_i|^p: sorting n values is cheap, so autograd does it."""
    radii = (z * z).sum(1)
    sorted_radii = radii.gather(0, torch.argsort(radii.detach()))
    e = sorted_radii - target_quantiles("radii_target", target, z.shape[0], z.device, z.dtype)
    return (e.abs() if p == 1 else e * e).mean()


def _default_sort_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _table_policy(target, pairs: int) -> str:
    """How the engine gets the target quantiles (see ``_sort_plan``)."""
    if isinstance(target, Chi2):
        return "never" if pairs > _EXACT_TABLE_MAX else "always"
    return "if_small" if isinstance(target, Empirical) else "always"


def _check_memory(z: Tensor, dtype: torch.dtype, p: int, target, max_sort_bytes: Optional[int]) -> None:
    """MemoryError naming the bytes when the distances term cannot fit, from the sizes alone.

    Counted: the copy of z in the compute dtype (when z is not already a contiguous tensor
    of it), a quantile table, the engine's workspace (sort entries within the budget) and
    what the forward keeps for the backward (2 bits a pair for p = 1, a value a pair for
    p = 2). The message names max_sort_bytes when a smaller budget would fit, and says
    what cannot shrink otherwise.
    """
    n, d = z.shape
    device = z.device
    pairs = cdf_engine.pair_count(n)
    elem = torch.empty((), dtype=dtype).element_size()
    policy = _table_policy(target, pairs)
    from_table, capacity = _sort_plan(device, dtype, n, max_sort_bytes, policy)
    copy = n * d * elem if (z.dtype != dtype or not z.is_contiguous()) else 0
    table = pairs * elem if from_table else 0
    signs = cdf_engine.signs_bytes(n, p, dtype)
    need = copy + table + cdf_engine.workspace_bytes_for(device, dtype, n, d, capacity, p)
    # Whatever max_sort_bytes: the kept signs/residuals, the points' copies (z in the compute
    # dtype, its transposed copy in the engine) and a table the target requires.
    floor = signs + copy + n * d * elem + (table if policy == "always" else 0)
    kept = "2 bits per pair for p = 1" if p == 1 else f"{elem} bytes per pair for p = 2 (p = 1 keeps 2 bits)"
    why = (f"the backward keeps {signs} bytes for the n(n-1)/2 = {pairs} pairs ({kept})"
           + (f" and the target's table of {pairs} quantiles takes {pairs * elem} bytes" if policy == "always"
              and table else "") + "; use fewer points")
    # A budget that leaves room for the rest: half of what the floor leaves of the device.
    room = (_native._device_capacity(device) or need) - floor
    budget = max(cdf_engine.entry_bytes_for(device, dtype, n), room // 2)
    _native.check_fits(need, device, "cdf_attraction",
                       f"pass max_sort_bytes={budget} (or less) to sort the distances in several passes",
                       floor=(floor, why))


def cdf_pairs_with_stats(z: Tensor, target, p: int = 1, max_sort_bytes: Optional[int] = None):
    """(sum_k |d_(k) - c'_k|^p as a float, the engine's counters) for contiguous float32/64 z.

    The counters (``cdf_engine.STATS``) say how the distances were ranked: ``sorted_pairs``
    (p = 1: the pairs of mixed bins; p = 2: all), generation ``passes``, histogram ``bins``
    and ``mixed_bins``; -1 where an engine does not count (CUDA). For benchmarks and tests.
    """
    with torch.no_grad():
        value, stats = _distances_sum(z, target, p, max_sort_bytes, with_stats=True)
    return float(value), stats


def _distances_sum(z: Tensor, target, p: int, max_sort_bytes: Optional[int], with_stats: bool = False):
    """sum_k |d_(k) - c'_k|^p (float64) by the compiled engine, within the sort budget.

    Chi2 targets beyond 65536 pairs pass their anchors (a few thousand exact quantiles)
    and the engine interpolates each rank: no table of n' values. Empirical targets pass
    their sample when a table would take more than half the budget. Every other target
    provides its table. Memory was checked by ``_check_memory``.
    """
    n = z.shape[0]
    pairs = cdf_engine.pair_count(n)
    from_table, capacity = _sort_plan(z.device, z.dtype, n, max_sort_bytes, _table_policy(target, pairs))
    sources = {}
    if from_table:
        sources["table"] = target_quantiles("distances_target", target, pairs, z.device, z.dtype).contiguous()
    elif isinstance(target, Chi2):
        sources["anchors"] = _chi2_anchors(pairs, target.df, z.device)
    else:
        sources["values"] = target.sorted_values.to(z.device).contiguous()
    return cdf_engine.cdf_pairs(z, p, capacity, with_stats=with_stats, **sources)


_EXACT_TABLE_MAX = 1 << 16  # Chi2 tables this small are exact and cheap


@torch.compiler.assume_constant_result
def _chi2_anchors(pairs: int, df: float, device: torch.device) -> Tensor:
    return cdf_engine.pack_anchors(chi2_anchors(pairs, df, device=device))


@torch.compiler.assume_constant_result
def _sort_plan(device: torch.device, dtype: torch.dtype, n: int, max_sort_bytes: Optional[int],
               table_policy: str) -> Tuple[bool, int]:
    """(quantiles from a table?, sort entries per pass) for n points within the budget.

    ``table_policy``: "always", "never" (the engine evaluates each rank) or "if_small"
    (a table when it takes at most half the budget, which the sort then shares). At least
    one entry (the engine then reports a bucket that cannot fit). Sizes only:
    torch.compile evaluates this once while tracing.
    """
    pairs = cdf_engine.pair_count(n)
    budget = _default_sort_bytes(device) if max_sort_bytes is None else max_sort_bytes
    table_bytes = pairs * torch.empty((), dtype=dtype).element_size()
    from_table = table_policy == "always" or (table_policy == "if_small" and table_bytes <= budget // 2)
    entry = cdf_engine.entry_bytes_for(device, dtype, n)
    left = budget - (table_bytes if from_table and table_policy == "if_small" else 0)
    return from_table, min(pairs, max(1, left // entry))
