"""Kolmogorov-Smirnov statistics and l1 gaps of the radii and of all pair distances against
chi2_D (formulas §8; the quantities of CDF attraction, formulas §1)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _checks
from ..engines import cdf_attraction as cdf_engine
from ..targets import Chi2, chi2_quantiles
from ._common import _chi2_cdf, _points, _row_blocks
from ._results import KSResult

# Sorted values up to this count get their CDF evaluated directly for the KS statistic;
# above it, blocks of _KS_BLOCK values are bracketed first (see _ks_of_sorted).
_KS_DIRECT_MAX = 1 << 18
_KS_BLOCK = 1024
# ks_distances refines its key bins while the ones that can hold the supremum hold more keys
# than this and 1/64 of the pairs (see _ks_of_bins).
_KS_REFINE_KEYS = 1 << 16


def _ks_of_sorted(values: Tensor, cdf) -> float:
    """sup_x |Fhat(x) - F(x)| of ascending ``values`` against the CDF ``cdf`` (a tensor function).

    At 1-based rank k the gaps are k/m - F(v_(k)) and F(v_(k)) - (k-1)/m. For long
    inputs (n' = n(n-1)/2 distances) F is first evaluated only at the ends of blocks of
    sorted values: F is monotone, so a block's gaps are bounded by its ends, and only
    blocks whose bound beats the best gap already seen are evaluated in full. The result
    is exact, at a few evaluations of F per block instead of one per value.
    """
    m = values.shape[0]
    if m <= _KS_DIRECT_MAX:
        return _ks_gaps(values, 0, m, cdf)
    first = torch.arange(0, m, _KS_BLOCK, device=values.device)
    last = (first + _KS_BLOCK).clamp(max=m) - 1
    f_first, f_last = cdf(values[first]), cdf(values[last])
    # Gaps attained at the block ends: a lower bound of the supremum.
    best = float(torch.stack([(first + 1) / m - f_first, (last + 1) / m - f_last,
                              f_first - first / m, f_last - last / m]).max())
    bound = torch.maximum((last + 1) / m - f_first, f_last - first / m)
    for block in torch.nonzero(bound > best).flatten().tolist():
        start = block * _KS_BLOCK
        best = max(best, _ks_gaps(values, start, min(start + _KS_BLOCK, m), cdf))
    return best


def _ks_gaps(values: Tensor, start: int, stop: int, cdf) -> float:
    """Largest KS gap over the 0-based ranks start..stop-1 of m = len(values) sorted values."""
    ranks = torch.arange(start, stop, device=values.device)
    return _ks_gaps_at(values[start:stop], ranks, values.shape[0], cdf)


def _ks_gaps_at(keys: Tensor, ranks: Tensor, m: int, cdf, chunk: int = 1 << 20) -> float:
    """Largest KS gap max(k/m - F(v), F(v) - (k-1)/m) of keys v at 0-based ranks k - 1 among m."""
    best = 0.0
    for lo in range(0, keys.shape[0], chunk):
        f = cdf(keys[lo:lo + chunk])
        rank = ranks[lo:lo + chunk].to(torch.float64)
        best = max(best, float(torch.maximum((rank + 1) / m - f, f - rank / m).max()))
    return best


def ks_radii(z) -> KSResult:
    """KS statistic and l1 gap of the squared radii r_i = ||z_i||^2 against chi2_D (formulas §8).

    ``statistic`` = sup_x |Fhat(x) - F_D(x)| (the one-sample KS statistic, so under
    N(0, I) it follows Kolmogorov's law: about 0.87 / sqrt(n) on average); ``l1`` =
    (1/n) sum_i |r_(i) - Q_D((i - 1/2)/n)|, the radii part of ``cdf_attraction`` with
    p = 1 (a midpoint-rule area between the CDFs).

    Args:
        z: points (n, D), n >= 1, float tensor or numpy array, finite.

    Returns:
        ``KSResult(statistic, l1, count=n)``.

    Example:
        >>> z = torch.randn(2000, 10, generator=torch.Generator().manual_seed(0))
        >>> ks_radii(z).statistic < 0.05
        True
    """
    z = _points(z, min_rows=1).to(torch.float64)
    n, dim = z.shape
    radii = torch.sort((z * z).sum(1)).values
    statistic = _ks_of_sorted(radii, lambda x: _chi2_cdf(x, dim))
    quantiles = chi2_quantiles(n, dim, device=z.device)
    return KSResult(statistic, float((radii - quantiles).abs().mean()), n)


def _chi2_plan(z: Tensor):
    """(the engine's plan, its quantile source) for the distances of z against chi2_D, within
    the sort budget ``cdf_attraction`` uses by default."""
    target = Chi2(z.shape[1])
    plan = cdf_engine.plan(z.device, z.dtype, z.shape[0], target, None)
    return plan, cdf_engine.quantile_source(z, target, plan)


def _distances_gap(z: Tensor) -> float:
    """sum_k |d_(k) - Q_D((k - 1/2)/n')| of contiguous z by the engine's selection (2 bits a
    pair and the pairs near a crossing of the two CDFs, not the n' sorted values)."""
    plan, source = _chi2_plan(z)
    return float(cdf_engine.cdf_pairs(z, 1, plan.capacity, **source))


def _ks_of_bins(z: Tensor, cdf, bins: int = 0) -> float:
    """sup_x |Fhat(x) - F(x)| over the half squared distances of contiguous z, sorting only
    the key bins that can hold the supremum (the result of ``_ks_of_sorted``, exactly).

    The engine counts every key in fine bins of key range (about 2^-13 relative wide), with
    each bin's smallest and largest key. F is monotone, so the gaps of a bin's ranks
    (A, A + c] are at most max((A + c)/m - F(low), F(high) - A/m), and the four gaps at its
    two end keys are attained. Only the bins whose bound beats the best attained gap can
    hold the supremum. Near the target the gap curve is flat around its peak, so these can
    be many: while they hold more than 1/64 of the pairs, the key range they span is
    counted again in finer bins (one more pass each). The rest are collected and sorted,
    largest bound first, within the sort budget. ``bins``: in-range bins per count (0: the
    engine's default; tests force coarse ones).
    """
    m = cdf_engine.pair_count(z.shape[0])
    found = cdf_engine.distance_bins(z, bins)
    best, candidates = _bounded_bins(found, m, cdf, 0.0, clamps=True)
    while int(found.counts[candidates].sum()) > max(_KS_REFINE_KEYS, m // 64):
        span = (found.low[candidates].min(), found.high[candidates].max())
        finer = cdf_engine.distance_bins(z, bins, span)
        if int(finer.layout[1]) >= int(found.layout[1]):
            break  # no finer bins to be had (single bit patterns, or a span as wide as before)
        # The keys outside the span lie in bins already bounded: the clamp bins add nothing.
        found = finer
        best, candidates = _bounded_bins(found, m, cdf, best, clamps=False)
    first = torch.cumsum(found.counts, 0) - found.counts
    budget = max(1, cdf_engine.default_sort_bytes(z.device) // (z.element_size() + 8))  # a key and its rank
    for chosen in _bin_batches(found, candidates, budget):
        keys = cdf_engine.collect_distance_bins(z, found, chosen, bins)
        sizes = found.counts[chosen]
        # 0-based rank of each collected key: its bin's first rank + its place in the bin.
        offsets = first[chosen] - (torch.cumsum(sizes, 0) - sizes)
        ranks = torch.repeat_interleave(offsets, sizes) + torch.arange(keys.shape[0], device=keys.device)
        best = max(best, _ks_gaps_at(keys, ranks, m, cdf))
    return best


def _bounded_bins(found, m: int, cdf, best: float, clamps: bool) -> Tuple[float, Tensor]:
    """(best gap attained at any bin's end keys, or ``best``; the bins whose bound beats it,
    largest bound first). A bin of at most two keys, or of one repeated key, has no gaps but
    those at its ends. Without ``clamps`` the first and last bin are left out."""
    counts = found.counts
    first = torch.cumsum(counts, 0) - counts
    used = torch.nonzero(counts).flatten()
    if not clamps:
        used = used[(used > 0) & (used < counts.shape[0] - 1)]
    c, a = counts[used].double(), first[used].double()
    f_low, f_high = cdf(found.low[used]), cdf(found.high[used])
    if used.numel():
        best = max(best, float(torch.stack([(a + 1) / m - f_low, f_low - a / m, (a + c) / m - f_high,
                                            f_high - (a + c - 1) / m]).max()))
    bound = torch.maximum((a + c) / m - f_low, f_high - a / m)
    open_bins = (bound > best) & (c > 2) & (found.low[used] < found.high[used])
    order = torch.argsort(bound[open_bins], descending=True)
    return best, used[open_bins][order]


def _bin_batches(found, candidates: Tensor, budget: int):
    """The candidate bins in batches of at most ``budget`` keys (ascending bin order within a
    batch, as the collection writes them)."""
    batch, held = [], 0
    for b, size in zip(candidates.tolist(), found.counts[candidates].tolist()):
        if size > budget:
            raise MemoryError(f"gaussreg.ks_distances: {size} distances share one key bin, more than the "
                              f"{budget} a pass may hold (heavily tied distances)")
        if held + size > budget:
            yield torch.tensor(sorted(batch), dtype=torch.int64, device=found.counts.device)
            batch, held = [], 0
        batch.append(b)
        held += size
    if batch:
        yield torch.tensor(sorted(batch), dtype=torch.int64, device=found.counts.device)


def _sorted_distances_and_gap(z: Tensor) -> Tuple[Tensor, float]:
    """(the n' half squared distances sorted, sum_k |d_(k) - Q_D((k - 1/2)/n')|) of z.

    Where no engine bins distances (CUDA): the compiled engine of ``cdf_attraction`` ranks
    the pairs and sums the gaps in one pass. Without a compiled engine: plain torch, O(n')
    memory and an exact quantile table.
    """
    n, dim = z.shape
    pairs = cdf_engine.pair_count(n)
    if cdf_engine.supported(z.device):
        z = z.contiguous()
        plan, source = _chi2_plan(z)  # the n' sorted values are extra to the budget
        gap, _, values, _ = cdf_engine.cdf_pairs_op(z, source.get("table"), None, source.get("anchors"), 1,
                                                    plan.capacity, 0, True)
        return values, float(gap)
    values = torch.cat([_half_sq_distances_after(z, rows) for rows in _row_blocks(n)])
    values = torch.sort(values).values
    quantiles = chi2_quantiles(pairs, dim, device=z.device, dtype=values.dtype)
    return values, float((values.double() - quantiles.double()).abs().sum())


def _half_sq_distances_after(z: Tensor, rows: slice) -> Tensor:
    """||z_i - z_j||^2 / 2 for i in ``rows`` and j > i (explicit differences)."""
    parts = [(z[i + 1:] - z[i]).pow(2).sum(1) / 2 for i in range(rows.start, rows.stop)]
    return torch.cat(parts) if parts else z.new_empty(0)


def ks_distances(z) -> KSResult:
    """KS statistic and l1 gap of all n' = n(n-1)/2 half squared distances against chi2_D (formulas §8).

    d_ij = ||z_i - z_j||^2 / 2 (i < j) is chi2_D for independent N(0, I) points.
    ``statistic`` = sup_x |Fhat(x) - F_D(x)| over the n' values; ``l1`` =
    (1/n') sum_k |d_(k) - Q_D((k - 1/2)/n')|, the distances part of ``cdf_attraction``
    with p = 1. The pairs share points, so no KS p-value applies; compare with an
    N(0, I) sample of the same n (the statistic is of order 1/sqrt(n), not 1/sqrt(n')).
    Every pair is ranked exactly, in z's precision (float32 stays float32), without holding
    the n' distances: on the CPU the compiled engine histograms the keys in fine bins and
    sorts only the bins near the supremum (for the statistic) and near the crossings of the
    two CDFs (for ``l1``); memory is 2 bits a pair plus those bins (n = 16384, D = 64,
    float32: under 100 MB and 3 to 6 s on 2 cores). On CUDA the engine still sorts every
    pair (12 bytes a pair in float32, in passes beyond half the free memory).

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.

    Returns:
        ``KSResult(statistic, l1, count=n')``.

    Example:
        >>> z = torch.randn(500, 10, generator=torch.Generator().manual_seed(0))
        >>> ks_distances(z).count
        124750
    """
    z = _points(z)
    z = z.to(_checks.compute_dtype(z))
    dim = z.shape[1]
    pairs = cdf_engine.pair_count(z.shape[0])
    cdf = lambda x: _chi2_cdf(x, dim)  # noqa: E731
    if cdf_engine.distance_bins_supported(z.device):
        z = z.contiguous()
        return KSResult(_ks_of_bins(z, cdf), _distances_gap(z) / pairs, pairs)
    values, gap = _sorted_distances_and_gap(z)
    return KSResult(_ks_of_sorted(values, cdf), gap / pairs, pairs)
