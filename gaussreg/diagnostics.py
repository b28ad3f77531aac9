"""Normality diagnostics for a batch of latents (formulas §8): is ``z`` a sample of N(0, I)?

Each statistic returns a small frozen result in the manner of ``scipy.stats``
(``statistic``, ``pvalue`` where a test exists), convertible with ``to_dict()`` /
``to_json()``:

- ``mardia(z)``: multivariate skewness and kurtosis, raw against N(0, I) or
  standardized with chi-squared / normal p-values;
- ``ks_radii(z)``, ``ks_distances(z)``: Kolmogorov-Smirnov statistic and l1 area of
  the radii ||z_i||^2 and of all n(n-1)/2 half squared distances against chi2_D (the
  quantities CDF attraction fits, formulas §1); the distances run in the compiled engine;
- ``henze_zirkler(z)``: the HZ test with its lognormal p-value; ``bhep(z, beta)``
  the raw BHEP statistic it is built from;
- ``projection_ks(z)``: KS statistics of random 1-D projections against N(0, 1);
- ``cramer_wold_index(z)``: the CWAE normality index from ``cw_distance``;
- ``report(z)``: all of the above, printed as a table.

Plots (matplotlib, drawn on ``matplotlib.figure.Figure`` objects, so no display or
pyplot state is needed): ``plot_cdfs`` (Duda's Fig. 1), ``plot_projections``,
``plot_scalar_products`` and ``plot_angles`` (his Fig. 2). Each takes ``ax=None`` and
returns ``(fig, ax)``.

Statistics are computed in float64 on z's device (the n' sorted distances in z's
precision, float32 or float64); z is never modified and needs no gradient.

>>> z = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
>>> print(report(z))                                  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _checks
from .engines import cdf_attraction as cdf_engine
from .targets import Chi2, chi2_quantiles

__all__ = [
    "MardiaResult", "KSResult", "HZResult", "BHEPResult", "ProjectionKSResult", "CramerWoldResult", "Report",
    "mardia", "ks_radii", "ks_distances", "henze_zirkler", "bhep", "projection_ks", "cramer_wold_index",
    "report", "plot_cdfs", "plot_projections", "plot_scalar_products", "plot_angles",
]

# Entries of an n x n block (Gram or distance matrix) held at once: 32 MiB of float64.
_BLOCK_ENTRIES = 1 << 22
# Sorted values up to this count get their CDF evaluated directly for the KS statistic;
# above it, blocks of _KS_BLOCK values are bracketed first (see _ks_of_sorted).
_KS_DIRECT_MAX = 1 << 18
_KS_BLOCK = 1024
# ks_distances refines its key bins while the ones that can hold the supremum hold more keys
# than this and 1/64 of the pairs (see _ks_of_bins).
_KS_REFINE_KEYS = 1 << 16
# Relative eigenvalue floor below which a sample covariance counts as singular (per dimension).
_SINGULAR_RTOL = 1e-12
# Points drawn per curve in the plots: an empirical CDF at this many ranks is exact at each.
_PLOT_POINTS = 2000


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def _plain(value):
    """A JSON-ready value: tensors and numpy scalars become Python numbers or lists."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class _Result:
    """Base of the named results: ``to_dict()`` and ``to_json()``."""

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict of plain Python values (JSON-ready)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``; NaN is never written (no field holds one)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class MardiaResult(_Result):
    """Mardia's multivariate skewness b1 and kurtosis b2 (formulas §8).

    ``standardized=False``: of the raw sample against N(0, I) (targets: b1 -> 0 with
    E b1 = D(D+2)(D+4)/n, b2 = D(D+2)); the p-values are then None (the raw statistics
    have no chi-squared law). ``standardized=True``: of S^{-1/2}(z - mean), with
    ``skewness_pvalue`` from n b1 / 6 ~ chi2_{D(D+1)(D+2)/6} (upper tail) and
    ``kurtosis_pvalue`` from (b2 - D(D+2)) / sqrt(8 D (D+2) / n) ~ N(0, 1) (two-sided).
    """

    skewness: float
    kurtosis: float
    skewness_pvalue: Optional[float]
    kurtosis_pvalue: Optional[float]
    standardized: bool
    n: int
    dim: int


@dataclasses.dataclass(frozen=True)
class KSResult(_Result):
    """``statistic``: sup |Fhat - F_D| over ``count`` values; ``l1``: mean |v_(k) - Q_D((k - 1/2)/count)|."""

    statistic: float
    l1: float
    count: int


@dataclasses.dataclass(frozen=True)
class HZResult(_Result):
    """Henze-Zirkler statistic, its lognormal p-value, the smoothing ``beta`` and whether S was singular."""

    statistic: float
    pvalue: float
    beta: float
    singular: bool


@dataclasses.dataclass(frozen=True)
class BHEPResult(_Result):
    """BHEP statistic of the raw sample against N(0, I) with smoothing ``beta``."""

    statistic: float
    beta: float


@dataclasses.dataclass(frozen=True)
class ProjectionKSResult(_Result):
    """KS statistics of 1-D projections against N(0, 1): ``statistic`` is their mean, ``max``
    the largest, ``statistics`` one per direction. Under N(0, I) each direction's statistic
    follows the one-sample Kolmogorov law (mean about 0.87 / sqrt(n))."""

    statistic: float
    max: float
    statistics: Tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class CramerWoldResult(_Result):
    """CWAE normality index ``statistic`` = d_cw^2 / ||N(0, I)||_cw^2 = 2 sqrt(pi (1 + gamma)) d_cw^2,
    with the squared distance ``distance`` and the smoothing ``gamma`` (formulas §5)."""

    statistic: float
    distance: float
    gamma: float
    kernel: str


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _points(z, *, min_rows: int = 2) -> Tensor:
    """z as a detached 2-D float tensor (numpy arrays accepted), finite, at least ``min_rows`` rows."""
    if not isinstance(z, Tensor) and type(z).__module__ == "numpy" and hasattr(z, "dtype"):
        z = torch.from_numpy(z)
    z = _checks.points("z", z, min_rows=min_rows)
    z = z.detach()
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z contains NaN or Inf values; its normality statistics would be NaN")
    return z


def _as_float64(z) -> Tensor:
    return _points(z).to(torch.float64)


def _positive(name: str, value) -> float:
    return _checks.positive_float(name, value)


def _generator(generator) -> Optional[torch.Generator]:
    """The diagnostics draw on the CPU (then move the draws): a CPU generator or None."""
    return _checks.generator(generator, draws_on=torch.device("cpu"))


# ---------------------------------------------------------------------------
# Shared numerics
# ---------------------------------------------------------------------------


def _row_blocks(n: int):
    """Slices of rows such that a block of an n x n matrix holds about _BLOCK_ENTRIES entries."""
    rows = max(1, min(n, _BLOCK_ENTRIES // n))
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _chi2_cdf(x: Tensor, df: float) -> Tensor:
    return torch.special.gammainc(torch.tensor(df / 2.0, dtype=torch.float64, device=x.device),
                                  x.to(torch.float64) / 2.0)


def _chi2_sf(x: float, df: float) -> float:
    """Upper tail of chi2_df at x, accurate far into the tail (regularized upper gamma)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(x / 2.0, dtype=torch.float64)))


def _two_sided_normal_pvalue(z: float) -> float:
    """2 (1 - Phi(|z|)) as erfc(|z| / sqrt 2): no cancellation in the tail."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _standardize(z: Tensor) -> Tuple[Optional[Tensor], bool]:
    """(S^{-1/2} (z - mean), singular?) with S the biased covariance; (None, True) if S is singular.

    The symmetric inverse square root (formulas §8) by an eigendecomposition; an eigenvalue
    below D * 1e-12 of the largest counts as zero (n <= D always lands there).
    """
    n, dim = z.shape
    centered = z - z.mean(0)
    cov = centered.T @ centered / n
    eigenvalues, vectors = torch.linalg.eigh(cov)
    largest = float(eigenvalues[-1])
    if not largest > 0 or float(eigenvalues[0]) <= largest * dim * _SINGULAR_RTOL:
        return None, True
    inverse_root = (vectors * eigenvalues.rsqrt()) @ vectors.T
    return centered @ inverse_root, False


def _sum_over_pairs(y: Tensor, term) -> float:
    """sum over ordered pairs i != j of term(squared distance, y_i . y_j), blockwise (no n x n matrix).

    The diagonal is left out exactly (set to 0 before summing), so tiny off-diagonal sums
    are not lost against n ones.
    """
    n = y.shape[0]
    norms = (y * y).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=y.device)
    for rows in _row_blocks(n):
        gram = y[rows] @ y.T
        sq = (norms[rows, None] + norms[None, :] - 2.0 * gram).clamp_min_(0.0)
        values = term(sq, gram)
        diagonal = torch.arange(rows.start, rows.stop, device=y.device)
        values[diagonal - rows.start, diagonal] = 0.0
        total += values.sum()
    return float(total)


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


# ---------------------------------------------------------------------------
# Mardia
# ---------------------------------------------------------------------------


def mardia(z, standardize: bool = False) -> MardiaResult:
    """Mardia's multivariate skewness and kurtosis (formulas §8).

    .. math::
        b_1 = \\frac{1}{n^2}\\sum_{i,j} (y_i \\cdot y_j)^3, \\qquad b_2 = \\frac{1}{n}\\sum_i \\|y_i\\|^4

    with y = z (``standardize=False``: the sample against N(0, I) itself, so a wrong
    scale or mean shows; targets 0 (E b1 = D(D+2)(D+4)/n at finite n) and D(D+2)) or
    y = S^{-1/2}(z - mean), S the biased covariance (``standardize=True``: the classic
    test of any normal law, with p-values from n b1/6 ~ chi2_{D(D+1)(D+2)/6}, upper tail,
    and (b2 - D(D+2)) / sqrt(8 D(D+2)/n) ~ N(0, 1), two-sided). O(n^2 D) time in blocks,
    O(n D) memory.

    Args:
        z: points (n, D), n >= 2, a float tensor (or numpy array), finite.
        standardize: bool, see above.

    Returns:
        ``MardiaResult(skewness, kurtosis, skewness_pvalue, kurtosis_pvalue, standardized, n, dim)``;
        the p-values are None when ``standardize=False``.

    Raises:
        ValueError: a singular sample covariance with ``standardize=True`` (e.g. n <= D).

    Example:
        >>> z = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
        >>> result = mardia(z, standardize=True)
        >>> result.kurtosis_pvalue > 0.001
        True
    """
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be a bool, got {type(standardize).__name__}")
    z = _as_float64(z)
    n, dim = z.shape
    y = z
    if standardize:
        y, singular = _standardize(z)
        if singular:
            raise ValueError(f"mardia(standardize=True): the sample covariance of z (n = {n}, D = {dim}) is "
                             "singular, so z cannot be standardized; it needs n > D points in general position")
    cubes = 0.0
    for rows in _row_blocks(n):
        cubes += float((y[rows] @ y.T).pow(3).sum())
    skewness = cubes / n**2
    kurtosis = float((y * y).sum(1).pow(2).mean())
    skew_p = kurt_p = None
    if standardize:
        df = dim * (dim + 1) * (dim + 2) / 6.0
        skew_p = _chi2_sf(n * skewness / 6.0, df)
        kurt_p = _two_sided_normal_pvalue((kurtosis - dim * (dim + 2)) / math.sqrt(8.0 * dim * (dim + 2) / n))
    return MardiaResult(skewness, kurtosis, skew_p, kurt_p, standardize, n, dim)


# ---------------------------------------------------------------------------
# Kolmogorov-Smirnov of radii and distances
# ---------------------------------------------------------------------------


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
    while _held_keys(found, candidates) > max(_KS_REFINE_KEYS, m // 64):
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


def _held_keys(found, chosen: Tensor) -> int:
    return int(found.counts[chosen].sum())


def _bin_batches(found, candidates: Tensor, budget: int):
    """The candidate bins in batches of at most ``budget`` keys (ascending bin order within a
    batch, as the collection writes them)."""
    batch, held = [], 0
    for b in candidates.tolist():
        size = int(found.counts[b])
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
    float32: about 90 MB and 6 s on 2 cores). On CUDA the engine still sorts every pair (12 bytes a pair in
    float32, in passes beyond half the free memory).

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


# ---------------------------------------------------------------------------
# BHEP and Henze-Zirkler
# ---------------------------------------------------------------------------


def _bhep_parts(y: Tensor, beta: float) -> Tuple[float, float, float]:
    """(sum_{i != j} exp(-b^2/2 ||y_i - y_j||^2), 2 (1+b^2)^{-D/2} sum_i exp(-b^2 ||y_i||^2 / (2(1+b^2))),
    n (1+2b^2)^{-D/2}): the pair, point and constant sums of n * BHEP minus its diagonal 1.

    Powers in log space: at large D they underflow only when they are negligible.
    """
    n, dim = y.shape
    b2 = beta * beta
    pairs = _sum_over_pairs(y, lambda sq, _gram: torch.exp(-0.5 * b2 * sq))
    point_scale = math.exp(-0.5 * dim * math.log1p(b2))
    points = 2.0 * point_scale * float(torch.exp(-b2 * (y * y).sum(1) / (2.0 * (1.0 + b2))).sum())
    constant = n * math.exp(-0.5 * dim * math.log1p(2.0 * b2))
    return pairs, points, constant


def bhep(z, beta) -> BHEPResult:
    """BHEP statistic of the raw sample against N(0, I) (formulas §8), no standardization.

    .. math::
        \\mathrm{mean}_{i,j} e^{-\\frac{\\beta^2}{2}\\|z_i - z_j\\|^2}
        - 2(1+\\beta^2)^{-D/2}\\,\\mathrm{mean}_i e^{-\\frac{\\beta^2\\|z_i\\|^2}{2(1+\\beta^2)}}
        + (1+2\\beta^2)^{-D/2}

    the L2 distance between the sample and N(0, I) both smoothed with N(0, I/(2 beta^2))
    (up to a constant factor), >= 0. ``henze_zirkler`` is n * bhep of the standardized
    sample. O(n^2 D) time in blocks.

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.
        beta: smoothing, a positive finite real number.

    Returns:
        ``BHEPResult(statistic, beta)``.

    Example:
        >>> z = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
        >>> bhep(z, 1.0).statistic < bhep(z + 1.0, 1.0).statistic
        True
    """
    beta = _positive("beta", beta)
    y = _as_float64(z)
    n = y.shape[0]
    pairs, points, constant = _bhep_parts(y, beta)
    # mean_ij includes the n diagonal ones.
    return BHEPResult((n + pairs) / n**2 - points / n + constant / n, beta)


def henze_zirkler_beta(n: int, dim: int) -> float:
    """The usual HZ smoothing ((2D + 1) n / 4)^{1/(D+4)} / sqrt(2) (formulas §8)."""
    return ((2 * dim + 1) * n / 4.0) ** (1.0 / (dim + 4)) / math.sqrt(2.0)


def _hz_lognormal_pvalue(hz_minus_one: float, n: int, dim: int, beta: float) -> float:
    """P(HZ' >= HZ) under the lognormal approximation of the common implementations.

    With a = 1 + 2b^2, the null mean is mu = 1 - a^{-D/2}(1 + D b^2/a + D(D+2) b^4/(2a^2))
    and the variance si2 a sum of D/2-th powers. At large D both a^{-D/2} and si2 are
    tiny, HZ and mu are 1 + (something tiny), so every log is taken as log1p of that
    something: the p-value stays finite (formulas §8) instead of becoming log(1)/0.
    """
    p, b2 = dim, beta * beta
    b4, b8 = b2 * b2, b2**4
    a = 1.0 + 2.0 * b2
    wb = (1.0 + b2) * (1.0 + 3.0 * b2)

    def power(base: float, exponent: float) -> float:
        return math.exp(exponent * math.log(base))

    mean_deficit = power(a, -p / 2) * (1.0 + p * b2 / a + p * (p + 2) * b4 / (2.0 * a * a))
    variance = (2.0 * power(1.0 + 4.0 * b2, -p / 2)
                + 2.0 * power(a, -p) * (1.0 + 2.0 * p * b4 / a**2 + 3.0 * p * (p + 2) * b8 / (4.0 * a**4))
                - 4.0 * power(wb, -p / 2) * (1.0 + 3.0 * p * b4 / (2.0 * wb) + p * (p + 2) * b8 / (2.0 * wb**2)))
    mean = 1.0 - mean_deficit
    spread = math.log1p(variance / (mean * mean))          # psi^2
    location = math.log1p(-mean_deficit) - 0.5 * spread   # log mu - psi^2 / 2
    score = (math.log1p(hz_minus_one) - location) / math.sqrt(spread)
    return 0.5 * math.erfc(score / math.sqrt(2.0))


def henze_zirkler(z, beta: Optional[float] = None) -> HZResult:
    """Henze-Zirkler test of multivariate normality (formulas §8).

    With y = S^{-1/2}(z - mean) (S the biased covariance), D_ij = ||y_i - y_j||^2 and
    D_i = ||y_i||^2:

    .. math::
        HZ = \\frac{1}{n}\\sum_{i,j} e^{-\\frac{\\beta^2}{2}D_{ij}}
             - 2(1+\\beta^2)^{-D/2}\\sum_i e^{-\\frac{\\beta^2}{2(1+\\beta^2)}D_i} + n(1+2\\beta^2)^{-D/2}

    (= n * ``bhep(y, beta)``), beta = ((2D + 1) n / 4)^{1/(D+4)} / sqrt(2) by default. The
    p-value is the upper tail of the lognormal law with HZ's null mean and variance, as
    in the common implementations (R's MVN, pingouin), with log1p so that it stays
    defined at large D. A singular S (e.g. n <= D) gives HZ = 4n and p-value 0, as they
    do. Being affine invariant, the test checks normality, not N(0, I): pair it with
    ``mardia(z)`` or ``ks_radii`` for the scale.

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.
        beta: smoothing, positive; default as above.

    Returns:
        ``HZResult(statistic, pvalue, beta, singular)``.

    Example:
        >>> z = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
        >>> henze_zirkler(z).pvalue > 0.001
        True
    """
    z = _as_float64(z)
    n, dim = z.shape
    beta = henze_zirkler_beta(n, dim) if beta is None else _positive("beta", beta)
    y, singular = _standardize(z)
    if singular:
        return HZResult(4.0 * n, 0.0, beta, True)
    pairs, points, constant = _bhep_parts(y, beta)
    hz_minus_one = pairs / n - points + constant
    return HZResult(1.0 + hz_minus_one, _hz_lognormal_pvalue(hz_minus_one, n, dim, beta), beta, False)


# ---------------------------------------------------------------------------
# Projections and the Cramer-Wold index
# ---------------------------------------------------------------------------


def _random_directions(count: int, dim: int, generator: Optional[torch.Generator], device) -> Tensor:
    """Unit vectors uniform on the sphere: normalized standard normal draws (on CPU, so any
    generator works, then moved)."""
    directions = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return (directions / directions.norm(dim=1, keepdim=True)).to(device)


def _normal_cdf(x: Tensor) -> Tensor:
    return torch.special.ndtr(x.to(torch.float64))


def projection_ks(z, num_projections: int = 32, generator: Optional[torch.Generator] = None) -> ProjectionKSResult:
    """KS statistics of random 1-D projections of z against N(0, 1) (formulas §8; Duda's Fig. 2, top).

    For unit directions theta_l uniform on the sphere (drawn on the CPU with
    ``generator``), the statistic of direction l is sup_x |Fhat_l(x) - Phi(x)| of the
    values z_i . theta_l. Under N(0, I) every projection is an N(0, 1) sample, so each
    statistic follows the one-sample Kolmogorov law.

    Args:
        z: points (n, D), n >= 1, float tensor or numpy array, finite.
        num_projections: number of directions L, a positive int.
        generator: torch.Generator (CPU) for the directions, for reproducibility.

    Returns:
        ``ProjectionKSResult(statistic=mean, max, statistics)`` (L values).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(1000, 6, generator=g)
        >>> projection_ks(z, 8, generator=g).max < 0.1
        True
    """
    z = _points(z, min_rows=1).to(torch.float64)
    num_projections = _checks.positive_int("num_projections", num_projections)
    directions = _random_directions(num_projections, z.shape[1], _generator(generator), z.device)
    projections = torch.sort(z @ directions.T, dim=0).values
    statistics = tuple(_ks_of_sorted(projections[:, l].contiguous(), _normal_cdf) for l in range(num_projections))
    return ProjectionKSResult(sum(statistics) / num_projections, max(statistics), statistics)


def cramer_wold_index(z, gamma: Optional[float] = None) -> CramerWoldResult:
    """CWAE normality index: d_cw^2(sample, N(0, I)) / ||N(0, I)||^2_cw (Tabor, Knop et al.; formulas §5).

    d_cw^2 is ``gaussreg.cw_distance`` (the exact 1F1 kernel below D = 20, the CWAE
    approximation from D = 20 on, as the official code does); ||N(0, I)||^2_cw =
    1 / (2 sqrt(pi (1 + gamma))) is its sample-free term, so the index is
    2 sqrt(pi (1 + gamma)) d_cw^2: near 0 for a large N(0, I) sample, 1 for a sample
    concentrated at a point far away.

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.
        gamma: smoothing, positive; default Silverman's (4 / (3n))^{2/5}.

    Returns:
        ``CramerWoldResult(statistic=index, distance=d_cw^2, gamma, kernel)``.

    Example:
        >>> z = torch.randn(500, 20, generator=torch.Generator().manual_seed(0))
        >>> cramer_wold_index(z).statistic < cramer_wold_index(2 * z).statistic
        True
    """
    from .losses.cramer_wold import cw_distance

    z = _as_float64(z)
    n, dim = z.shape
    gamma = (4.0 / (3.0 * n)) ** 0.4 if gamma is None else _positive("gamma", gamma)
    kernel = "approx" if dim >= 20 else "exact"
    distance = float(cw_distance(z, gamma=gamma, kernel=kernel))
    return CramerWoldResult(2.0 * math.sqrt(math.pi * (1.0 + gamma)) * distance, distance, gamma, kernel)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


class Report(dict):
    """All diagnostics of one sample: a dict name -> result; ``str()`` is a table.

    Keys: "mardia", "mardia_standardized" (None when the covariance is singular),
    "ks_radii", "ks_distances", "henze_zirkler", "projection_ks", "cramer_wold".
    ``to_dict()`` / ``to_json()`` give plain values; ``n`` and ``dim`` are attributes.
    """

    def __init__(self, results: Dict[str, Optional[_Result]], n: int, dim: int):
        super().__init__(results)
        self.n, self.dim = n, dim

    def to_dict(self) -> Dict[str, Any]:
        out = {"n": self.n, "dim": self.dim}
        out.update({name: None if result is None else result.to_dict() for name, result in self.items()})
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def rows(self):
        """(statistic, value, p-value or "", what an N(0, I) sample gives) as strings."""
        n, dim = self.n, self.dim
        raw, std = self["mardia"], self.get("mardia_standardized")
        rows = [
            ("Mardia skewness b1 (raw)", f"{raw.skewness:.4g}", "", f"mean D(D+2)(D+4)/n = {dim * (dim + 2) * (dim + 4) / n:.4g}"),
            ("Mardia kurtosis b2 (raw)", f"{raw.kurtosis:.4g}", "", f"D(D+2) = {dim * (dim + 2)}"),
        ]
        if std is None:
            rows.append(("Mardia (standardized)", "singular covariance", "", "needs n > D"))
        else:
            rows += [("Mardia skewness (standardized)", f"{std.skewness:.4g}", f"{std.skewness_pvalue:.3g}", "p ~ U(0, 1)"),
                     ("Mardia kurtosis (standardized)", f"{std.kurtosis:.4g}", f"{std.kurtosis_pvalue:.3g}", "p ~ U(0, 1)")]
        hz, pks, cw = self["henze_zirkler"], self["projection_ks"], self["cramer_wold"]
        rows += [
            ("KS radii vs chi2_D", f"{self['ks_radii'].statistic:.4f}", "", f"mean about 0.87/sqrt(n) = {0.8687 / math.sqrt(n):.4f}"),
            ("l1 radii vs chi2_D", f"{self['ks_radii'].l1:.4g}", "", "-> 0"),
            ("KS distances vs chi2_D", f"{self['ks_distances'].statistic:.4f}", "", "O(1/sqrt(n))"),
            ("l1 distances vs chi2_D", f"{self['ks_distances'].l1:.4g}", "", "-> 0"),
            ("Henze-Zirkler", _near_one(hz.statistic), f"{hz.pvalue:.3g}", "p ~ U(0, 1)"),
            (f"KS of {len(pks.statistics)} projections (mean)", f"{pks.statistic:.4f}", "", f"about 0.87/sqrt(n) = {0.8687 / math.sqrt(n):.4f}"),
            (f"KS of {len(pks.statistics)} projections (max)", f"{pks.max:.4f}", "", ""),
            ("Cramer-Wold normality index", f"{cw.statistic:.4g}", "", "-> 0"),
        ]
        return rows

    def __str__(self) -> str:
        header = ("statistic", "value", "p-value", "N(0, I) sample")
        return f"n = {self.n}, D = {self.dim}\n" + format_table(header, self.rows())


def _near_one(value: float) -> str:
    """A statistic that sits at 1 for large D (Henze-Zirkler): its distance from 1 in three
    digits ("1 - 8.7e-06", "1 + 0.00116"), which "{:.4g}" would print as "1" for a Gaussian
    and a clearly non-Gaussian sample alike."""
    gap = value - 1.0
    if abs(gap) >= 0.01:
        return f"{value:.4g}"
    return "1" if gap == 0 else f"1 {'+' if gap > 0 else '-'} {abs(gap):.3g}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (columns padded to their widest cell), as the CLI prints it."""
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def report(z, *, num_projections: int = 32, generator: Optional[torch.Generator] = None) -> Report:
    """Every diagnostic of formulas §8 on one sample, as a ``Report`` (a dict that prints as a table).

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.
        num_projections: directions for ``projection_ks``.
        generator: torch.Generator (CPU) for those directions.

    Returns:
        ``Report`` with "mardia", "mardia_standardized" (None if the covariance is singular),
        "ks_radii", "ks_distances", "henze_zirkler", "projection_ks", "cramer_wold".

    Example:
        >>> z = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
        >>> sorted(report(z))[:2]
        ['cramer_wold', 'henze_zirkler']
    """
    z = _points(z)
    z64 = z.to(torch.float64)
    n, dim = z.shape
    try:
        standardized = mardia(z64, standardize=True)
    except ValueError:
        standardized = None
    results = {
        "mardia": mardia(z64),
        "mardia_standardized": standardized,
        "ks_radii": ks_radii(z64),
        "ks_distances": ks_distances(z),
        "henze_zirkler": henze_zirkler(z64),
        "projection_ks": projection_ks(z64, num_projections, generator=generator),
        "cramer_wold": cramer_wold_index(z64),
    }
    return Report(results, n, dim)


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _samples(z) -> list:
    """One sample or a list of samples (several runs overlaid), each checked."""
    if isinstance(z, (list, tuple)):
        if not z:
            raise ValueError("z must be a sample (n, D) or a non-empty list of samples")
        samples = [_points(s) for s in z]
    else:
        samples = [_points(z)]
    dims = {s.shape[1] for s in samples}
    if len(dims) != 1:
        raise ValueError(f"the samples in z must share the dimension D, got {sorted(dims)}")
    return samples


def _new_axes(ax, count: int, figsize):
    """(fig, axes): a fresh Figure with ``count`` axes in a row, or the figure of the given ones."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(1, count, squeeze=False)[0]
        return fig, (axes[0] if count == 1 else list(axes))
    if count == 1:
        return ax.figure, ax
    axes = list(ax)
    if len(axes) != count:
        raise ValueError(f"ax must hold {count} matplotlib Axes, got {len(axes)}")
    return axes[0].figure, axes


def _ecdf_points(sorted_values: Tensor) -> Tuple[list, list]:
    """(x, Fhat(x)) at up to _PLOT_POINTS evenly spaced ranks of sorted values (exact there)."""
    m = sorted_values.shape[0]
    ranks = torch.unique(torch.linspace(0, m - 1, min(m, _PLOT_POINTS)).round().long())
    return sorted_values[ranks].double().cpu().tolist(), ((ranks + 1).double() / m).tolist()


def _draw_runs(ax, curves, reference_x, reference_y, title: str, xlabel: str, reference_label: str):
    for i, (x, y) in enumerate(curves):
        ax.plot(x, y, color="tab:blue", alpha=0.5, linewidth=1.0, label="sample" if i == 0 else None)
    ax.plot(reference_x, reference_y, color="black", linestyle="--", linewidth=1.2, label=reference_label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("cumulative fraction", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")


def plot_cdfs(z, ax=None, *, title: Optional[str] = None):
    """Empirical CDFs of the radii ||z_i||^2 and the half squared distances ||z_i - z_j||^2 / 2
    against the chi2_D CDF (dashed): Duda's Fig. 1. A list of samples draws one curve per run.

    Args:
        z: points (n, D) (tensor or numpy array), or a list of such samples of one D.
        ax: None (a new Figure with two axes) or a pair of matplotlib Axes.
        title: prefix of the two panel titles.

    Returns:
        ``(fig, [ax_radii, ax_distances])``.

    Example:
        >>> fig, axes = plot_cdfs(torch.randn(200, 20))
        >>> fig.savefig("cdfs.png")                   # doctest: +SKIP
    """
    samples = _samples(z)
    dim = samples[0].shape[1]
    fig, axes = _new_axes(ax, 2, (8, 3))
    prefix = f"{title}: " if title else ""
    radii = [_ecdf_points(torch.sort((s.double() ** 2).sum(1)).values) for s in samples]
    distances = [_ecdf_points(_sorted_distances_and_gap(s.to(_checks.compute_dtype(s)))[0]) for s in samples]
    for panel, curves, label in ((axes[0], radii, "radii ||z||^2"), (axes[1], distances, "distances ||z_i - z_j||^2 / 2")):
        top = max(max(x[-1] for x, _ in curves), float(chi2_quantiles(1000, dim)[-1]))
        grid = torch.linspace(0, top, 400, dtype=torch.float64)
        _draw_runs(panel, curves, grid.tolist(), _chi2_cdf(grid, dim).tolist(), f"{prefix}CDF of {label}", label,
                   f"chi2_{dim} CDF")
    axes[0].legend(fontsize=7, loc="lower right")
    return fig, axes


def _reference_like(sample: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(sample.shape, generator=generator, dtype=torch.float64)


def _pair_values(sample: Tensor, values_of_pairs, generator: Optional[torch.Generator]) -> Tensor:
    """values_of_pairs(a, b) over the pairs i < j, at most about 20000 of them (sampled beyond)."""
    sample = sample.double().cpu()
    n = sample.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    if i.shape[0] > 20000:
        keep = torch.randperm(i.shape[0], generator=generator)[:20000]
        i, j = i[keep], j[keep]
    return torch.sort(values_of_pairs(sample[i], sample[j])).values


def _plot_pair_statistic(z, ax, generator, values_of_pairs, title: str, xlabel: str):
    samples = _samples(z)
    generator = _generator(generator)
    fig, ax = _new_axes(ax, 1, (4, 3))
    curves = [_ecdf_points(_pair_values(s, values_of_pairs, generator)) for s in samples]
    reference = _ecdf_points(_pair_values(_reference_like(samples[0], generator), values_of_pairs, generator))
    _draw_runs(ax, curves, reference[0], reference[1], title, xlabel, "i.i.d. N(0, I)")
    return fig, ax


def plot_projections(z, ax=None, *, num_projections: int = 10, generator: Optional[torch.Generator] = None):
    """Empirical CDFs of projections z . theta on random unit directions against Phi (dashed):
    Duda's Fig. 2, top row. One curve per direction (and per sample of a list).

    Args:
        z: points (n, D) or a list of samples; ax: None or one matplotlib Axes.
        num_projections: directions per sample; generator: torch.Generator for them.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_projections(torch.randn(200, 20))
    """
    samples = _samples(z)
    num_projections = _checks.positive_int("num_projections", num_projections)
    generator = _generator(generator)
    fig, ax = _new_axes(ax, 1, (4, 3))
    curves = []
    for sample in samples:
        directions = _random_directions(num_projections, sample.shape[1], generator, "cpu")
        projections = torch.sort(sample.double().cpu() @ directions.T, dim=0).values
        curves += [_ecdf_points(projections[:, l].contiguous()) for l in range(num_projections)]
    grid = torch.linspace(-4, 4, 400, dtype=torch.float64)
    _draw_runs(ax, curves, grid.tolist(), _normal_cdf(grid).tolist(), "projections on random directions",
               "z . theta", "N(0, 1) CDF")
    return fig, ax


def plot_scalar_products(z, ax=None, *, generator: Optional[torch.Generator] = None):
    """Empirical CDF of the scalar products z_i . z_j (i < j) against those of an i.i.d.
    N(0, I) sample of the same shape (dashed): Duda's Fig. 2, middle row. Beyond 20000
    pairs a random subset (drawn with ``generator``) is used.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_scalar_products(torch.randn(200, 20))
    """
    return _plot_pair_statistic(z, ax, generator, lambda a, b: (a * b).sum(1), "scalar products z_i . z_j",
                                "z_i . z_j")


def plot_angles(z, ax=None, *, generator: Optional[torch.Generator] = None):
    """Empirical CDF of the distances ||u_i - u_j|| between the normalized points u = z/||z||
    (a function of the angle) against an i.i.d. N(0, I) sample's (dashed): Duda's Fig. 2,
    bottom row. Beyond 20000 pairs a random subset is used.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_angles(torch.randn(200, 20))
    """
    def chord(a, b):
        return (a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).norm(dim=1)

    return _plot_pair_statistic(z, ax, generator, chord, "angles: chords between normalized points",
                                "||u_i - u_j|| = 2 sin(angle / 2)")
