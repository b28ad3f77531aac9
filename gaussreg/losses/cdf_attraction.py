"""CDF attraction of radii and pairwise distances to target quantiles (formulas §1, Duda eq. 13-14).

The radii term sorts n values in torch; one autograd node (``_CdfAttractionFn``) holds both
terms and gives their gradient. The distances term ranks all
n' = n(n-1)/2 half squared distances exactly in the compiled engines
(``csrc/*/cdf_attraction.*`` through ``gaussreg.engines.cdf_attraction``): distances generated on the fly; for
p = 1 on the CPU a selection (a histogram of every distance decides most signs, only the
pairs near a crossing of the empirical and target CDFs are sorted, ``csrc/common/cdf_select.h``),
otherwise bucketed sorts; signs kept as bits, one fused backward pass.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks, distributed, engines, reference
from ..distributed import maybe_gather
from ..targets import Chi2, checked_quantiles
from ..engines import cdf_attraction as cdf_engine
from ..engines._autograd import first_order_only


def cdf_attraction(z: Tensor, *, radii_weight: float = 1.0, distances_weight: float = 1.0, p: int = 1,
                   radii_target=None, distances_target=None, backend: str = "auto",
                   max_sort_bytes: Optional[int] = None, process_group=None) -> Tensor:
    r"""Attraction of the sorted radii and pair distances to target quantiles (formulas §1).

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
            pair's, or with p = 1 on the CPU the pairs of mixed histogram bins); default a
            quarter of RAM on CPU, half the free memory on a GPU. Beyond it the engine
            (p = 1, CPU) first cuts the mixed bins into finer leaves with one more pass,
            then collects in several passes, regenerating the distances each pass:
            slower, same exact result. Split across ranks, each rank holds all mixed
            pairs (32 bytes each) within it (the least budget of the ranks). Chi2
            targets need no table beyond 65536 pairs, Empirical targets none at all. A
            long call on the CPU stops at Ctrl-C (KeyboardInterrupt) within about a
            second.

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
            With p = 1 on the CPU (eager) the ranks split the pairs between them.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.randn(1000, 20, requires_grad=True)
        >>> loss = gaussreg.cdf_attraction(z)
        >>> loss.backward()
    """
    z = _checks.points("z", z, min_rows=2 if process_group is None else 1)
    (z,) = maybe_gather(process_group, z)
    z = _checks.points("z", z)  # the global batch
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
    native = engines.use_native(device, backend, "cdf_attraction", entry="cdf_pairs_forward")
    plan = None
    if native and distances_weight != 0.0:
        plan = cdf_engine.plan(device, dtype, n, distances_target, max_sort_bytes)
    if plan is not None and not _checks.compiling():
        # Before the copy and the NaN/Inf scan: an impossible request fails at once (on
        # every rank together: their free memory differs).
        distributed.checked_together(process_group, lambda: cdf_engine.check_memory(z, dtype, p, plan))
    _checks.finite("z", z)
    zc = z.to(dtype).contiguous()
    if not native:
        return reference.cdf_attraction(zc, radii_weight=radii_weight, distances_weight=distances_weight, p=p,
                                        radii_target=radii_target, distances_target=distances_target)
    if distances_weight == 0.0:  # the radii term alone: n values, plain torch autograd
        if radii_weight == 0.0:
            return (zc * 0.0).sum()
        quantiles = checked_quantiles("radii_target", radii_target, n, device, dtype)
        return _loss_value(None, _radii_term(zc, quantiles, p), radii_weight, distances_weight, n, dtype)
    source = cdf_engine.quantile_source(zc, distances_target, plan, "distances_target")
    radii_quantiles = checked_quantiles("radii_target", radii_target, n, device, dtype) if radii_weight != 0.0 else None
    if _splits_pairs(zc, p, process_group):
        total = cdf_engine.sharded_cdf_pairs(zc, source, process_group, max_sort_bytes=max_sort_bytes)
        radii_sum = None if radii_quantiles is None else _radii_term(zc, radii_quantiles, p)
        return _loss_value(total, radii_sum, radii_weight, distances_weight, n, dtype)
    return _CdfAttractionFn.apply(zc, radii_quantiles, source.get("table"), source.get("values"),
                                  source.get("anchors"), radii_weight, distances_weight, p, plan.capacity)


class _CdfAttractionFn(torch.autograd.Function):
    """Both terms of formulas §1 in one autograd node: w_r (1/n) sum_i |r_(i) - c_i|^p (torch:
    sorting n values is cheap) + w_d (1/n') sum_k |d_(k) - c'_k|^p (the engine).

    One node with its own backward instead of a dozen small autograd nodes and the custom
    ops' dispatch, which cost more than the engine's work on a small batch. The forward
    keeps, per point, the slope of its radius's rank; the backward is one engine pass, one
    addcmul for the radii and one product by the incoming gradient. The value is summed in
    float64 and rounded once. The engine is called directly, without the op's checks (the
    front made them), and its sizes are cached. Forward + backward at D = 64 on 2 CPU
    threads (medians, in turn with the previous build in one process): n = 64 0.62-0.67 to
    0.43-0.44 ms, n = 128 0.88-0.97 to 0.65-0.74 ms. The radii term's gradient is
    w_r (1/n) p |e_i|^(p-1) sgn(e_i) 2 z_i for the point of rank i; the distances term's
    comes from the engine's signs (p = 1) or residuals (p = 2). Its own derivative is
    refused, as the engine's is.
    """

    @staticmethod
    def forward(ctx, z: Tensor, radii_quantiles: Optional[Tensor], table: Optional[Tensor],
                values: Optional[Tensor], anchors: Optional[Tensor], radii_weight: float, distances_weight: float,
                p: int, capacity: int) -> Tensor:
        total, signs = cdf_engine.rank_distances(z, p, capacity, table=table, values=values, anchors=anchors)
        radii_sum = radii_slopes = None
        if radii_quantiles is not None:
            radii_sum, radii_slopes = _rank_radii(z, radii_quantiles, p)
        ctx.save_for_backward(z, signs, radii_slopes)
        ctx.p, ctx.weights = p, (radii_weight, distances_weight)
        return _loss_value(total, radii_sum, radii_weight, distances_weight, z.shape[0], z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, signs, radii_slopes = ctx.saved_tensors
        radii_weight, distances_weight = ctx.weights
        n = z.shape[0]
        grad = cdf_engine.distances_gradient(z, signs, ctx.p, None, distances_weight / cdf_engine.pair_count(n))
        if radii_slopes is not None:  # d r_i / d z_i = 2 z_i
            grad = grad.addcmul_(radii_slopes.unsqueeze(1), z, value=2.0 * radii_weight / n)
        grad = grad.mul_(g)
        return first_order_only(grad, "cdf_attraction", z), None, None, None, None, None, None, None, None


# The split has a fixed cost per call (the bin histogram's all-reduce, the bins' samples,
# every rank ranking every mixed pair): about 25 ms on 2 CPU cores, where one process's
# call at N = 2048, D = 64 takes 48 ms. Measured with 2 gloo ranks at D = 64 (gaussreg
# bench distributed): 0.88x at N = 2048, 1.14x at 3072, 1.32x at 4096, 1.70x at 8192. It
# runs from n(n-1)/2 * D = 2^28 pair coordinates on (N = 2897 at D = 64, 8193 at D = 8).
SPLIT_MIN_PAIR_WORK = 1 << 28


def _splits_pairs(z: Tensor, p: int, process_group) -> bool:
    """Whether the ranks of ``process_group`` split the pairs: p = 1 on the CPU, eager, more
    than one rank and at least ``SPLIT_MIN_PAIR_WORK``; otherwise every rank ranks all of
    them (p = 2, CUDA, torch.compile, small batches)."""
    if process_group is None or p != 1 or z.device.type != "cpu" or _checks.compiling():
        return False
    n, d = z.shape
    if cdf_engine.pair_count(n) * d < SPLIT_MIN_PAIR_WORK or not cdf_engine.shares_supported(z.device):
        return False
    return distributed.rank_and_size(process_group)[1] > 1


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


def _radii_term(z: Tensor, quantiles: Tensor, p: int) -> Tensor:
    """sum_i |r_(i) - c_i|^p in float64 by torch autograd (where the engines' gradient is not used)."""
    return _power_sum(_sorted_radii_residuals(z, quantiles)[1], p)


def _rank_radii(z: Tensor, quantiles: Tensor, p: int) -> Tuple[Tensor, Tensor]:
    """The radii term's pieces, outside autograd: (sum_k |r_(k) - c_k|^p in float64, per
    point i the slope d|e|^p/de of its rank: sgn(e) for p = 1, 2e for p = 2). The gradient
    of (1/n) sum_k |e_k|^p is then (2/n) slope_i z_i."""
    order, residuals = _sorted_radii_residuals(z, quantiles)
    slopes = residuals.sign() if p == 1 else residuals * 2.0
    return _power_sum(residuals, p), torch.empty_like(slopes).scatter_(0, order, slopes)


def _sorted_radii_residuals(z: Tensor, quantiles: Tensor) -> Tuple[Tensor, Tensor]:
    """(the order of the radii r_i = ||z_i||^2, r_(i) - c_i in that order), differentiable."""
    sorted_radii, order = torch.sort((z * z).sum(1))  # not vecdot: autocast runs it in bfloat16
    return order, sorted_radii - quantiles


def _power_sum(residuals: Tensor, p: int) -> Tensor:
    """sum |e|^p in float64."""
    return (residuals.abs() if p == 1 else residuals * residuals).sum(dtype=torch.float64)


def _loss_value(distances_sum: Optional[Tensor], radii_sum: Optional[Tensor], radii_weight: float,
                distances_weight: float, n: int, dtype: torch.dtype) -> Tensor:
    """w_r radii_sum / n + w_d distances_sum / n', summed in float64 and rounded once to
    ``dtype``; both sums are float64 (the engine's over the pairs, ``_power_sum``'s over the
    radii), None leaves a term out. The result is a new tensor, never one of the sums: torch
    2.11's torch.compile routes the gradient of an autograd.Function whose output is also
    one of its intermediates to the wrong output (pytorch/pytorch#180642), and so gave
    ``_CdfAttractionFn`` a zero gradient in float64, where ``.to`` returned the sum itself."""
    value = None if distances_sum is None else distances_sum * (distances_weight / cdf_engine.pair_count(n))
    if radii_sum is not None:
        value = radii_sum * (radii_weight / n) if value is None else value.add(radii_sum, alpha=radii_weight / n)
    return value.to(dtype, copy=True)


def cdf_pairs_with_stats(z: Tensor, target, p: int = 1, max_sort_bytes: Optional[int] = None):
    """(sum_k |d_(k) - c'_k|^p as a float, the engine's counters) for contiguous float32/64 z.

    The counters (``cdf_engine.STATS``) say how the distances were ranked: ``sorted_pairs``
    (p = 1: the pairs of mixed bins and leaves; p = 2: all), generation ``passes``, histogram
    ``bins``, ``mixed_bins`` (the bins and leaves sorted) and ``refined_bins`` (the mixed bins
    cut into leaves by a second pass; 0 when none); -1 where the engine does not report a
    counter. Up to 2^15 pairs (n <= 256) the CPU sorts every pair as one bucket in one
    pass (``sorted_pairs`` all of them, ``passes`` and ``bins`` 1) when the sort budget holds
    them all. When the CPU selection leaves more than half of the pairs mixed, or would cut
    mixed bins into more leaves than a quarter of the pairs (n below ~725), it sorts every
    pair instead: ``sorted_pairs`` is then all of them, ``bins`` and ``mixed_bins`` the full
    sort's buckets, and ``passes`` counts the selection's passes too. On CUDA the selection
    (with its second level) runs only when asked for with bins > 0; by default it sorts
    every pair. For benchmarks and tests.
    """
    with torch.no_grad():
        plan = cdf_engine.plan(z.device, z.dtype, z.shape[0], target, max_sort_bytes)
        value, stats = _distances_sum(z, target, p, plan, with_stats=True)
    return float(value), stats


def _distances_sum(z: Tensor, target, p: int, plan: cdf_engine.Plan, with_stats: bool = False):
    """sum_k |d_(k) - c'_k|^p (float64) by the compiled engine under ``plan`` (its memory
    was checked by ``cdf_engine.check_memory``)."""
    sources = cdf_engine.quantile_source(z, target, plan, "distances_target")
    return cdf_engine.cdf_pairs(z, p, plan.capacity, with_stats=with_stats, **sources)
