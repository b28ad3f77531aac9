"""Quantile tables of the target distributions of CDF attraction (formulas §1).

A *target* is any object with a method ``quantiles(m, device, dtype)`` that
returns a tensor of shape ``(m,)`` holding ``Q((k - 0.5) / m)`` for
``k = 1..m`` (Hazen positions), ascending, where ``Q`` is the target's
quantile function (formulas §1: the sorted radii ``r_(i)`` are attracted to
``c_i = Q((i - 0.5)/n)`` and the sorted half squared distances ``d_(k)`` to
``c'_k = Q'((k - 0.5)/n')``). This module ships two:

- ``Chi2(df)``: the chi-squared distribution, the default for both terms
  (``||z||^2`` and ``||z_i - z_j||^2 / 2`` are chi2_D for ``z ~ N(0, I)``);
  its quantiles come from ``chi2_ppf``, computed in torch on the requested
  device and cached;
- ``Empirical(values)``: a reference sample for targets without a closed
  form, interpolated linearly between Hazen positions.

>>> Chi2(2).quantiles(3, "cpu", torch.float64)
tensor([0.3646, 1.3863, 3.5835], dtype=torch.float64)
>>> Empirical([3.0, 1.0, 2.0]).quantiles(2, "cpu", torch.float64)
tensor([1.2500, 2.7500], dtype=torch.float64)
"""
import math
import numbers
import operator
import threading
from collections import OrderedDict
from typing import Optional

import torch

from . import _checks

__all__ = ["chi2_ppf", "chi2_quantiles", "chi2_anchors", "hermite_quantiles", "Chi2", "Empirical", "clear_cache",
           "checked_quantiles", "rank_targets"]

# Halley steps after the start below.  Measured against scipy for df in
# [0.001, 1e6] and probabilities down to 5.8e-11 in either tail, two steps
# already reach the accuracy of torch's own gammainc; the third is margin
# (Halley converges cubically) for starts the measurements did not meet.
_HALLEY_STEPS = 3
# A step in t = log(x/2) is at most a factor e^5 in x: far from the root the
# log-CDF's slope can be tiny, and an undamped step would land nowhere useful.
_MAX_LOG_STEP = 5.0
# Elements per chunk of a quantile table: bounds the temporaries of a huge
# table (n' = n(n-1)/2 values) to a few tens of MB.
_CHUNK = 1 << 20
# Total bytes of cached tables (all devices together).
_CACHE_MAX_BYTES = 512 * 2**20
# Tables longer than this interpolate between exactly solved anchor ranks (cubic Hermite
# with the exact slope dQ/dk = 1 / (m f(Q))): n' = n(n-1)/2 quantiles would otherwise cost
# a Newton solve each. Anchors are spaced by at most _ANCHOR_TAIL_RATIO of the smaller tail
# probability (relative error ~ ratio^4 / 384, 4e-10) and _ANCHOR_MAX_STEP in the middle:
# about 2700 anchors for m = 8.6e9.
_EXACT_MAX_M = 1 << 16
_ANCHOR_TAIL_RATIO = 0.02
_ANCHOR_MAX_STEP = 1e-3


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_count(m, name="m"):
    """A positive Python int from ``m`` (bool rejected: True is not a table size)."""
    if isinstance(m, bool):
        raise TypeError(f"{name} must be a positive int, got bool {m!r}")
    try:
        count = operator.index(m)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {type(m).__name__} {m!r}") from None
    if count < 1:
        raise ValueError(f"{name} must be a positive int, got {count}")
    return count


# The largest df accepted: at 1e15 the quantiles at Hazen positions (m = 2000) are within 5e-13
# of scipy's; at 1e16 some are off by a factor of 148 (and others 148 times too small).
MAX_DF = 1e15


def _check_df(df):
    """A positive finite Python float from ``df``."""
    if isinstance(df, bool) or not isinstance(df, (numbers.Real, torch.Tensor)):
        raise TypeError(f"df must be a positive finite real number, got {type(df).__name__} {df!r}")
    if isinstance(df, torch.Tensor):
        if df.numel() != 1 or df.dtype == torch.bool or df.is_complex():
            raise TypeError(f"df must be a positive finite real number, got a tensor of shape "
                            f"{tuple(df.shape)} and dtype {df.dtype}")
        df = df.item()
    df = float(df)
    if not (math.isfinite(df) and df > 0):
        raise ValueError(f"df must be a positive finite real number, got {df!r}")
    if df > MAX_DF:
        raise ValueError(f"df must be at most {MAX_DF:g}, got {df!r}: beyond it the quantile solve in float64 "
                         "loses its accuracy (at df = 1e16 some quantiles are off by a factor of 148)")
    return df


def _check_dtype(dtype):
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _resolve_device(device):
    """A torch.device with an explicit index, so that cache keys of one device agree."""
    device = torch.get_default_device() if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------------------
# Chi-squared quantile function
# ---------------------------------------------------------------------------


def _wilson_hilferty_log_half(z, df):
    """log(x/2) of the Wilson-Hilferty approximation x = df (1 - c + z sqrt(c))^3, c = 2/(9 df).

    -inf where the cube's base is not positive (the far lower tail of small
    df), which the lower-tail start then replaces.
    """
    c = 2.0 / (9.0 * df)
    base = 1.0 - c + z * torch.sqrt(c)
    log_base = torch.log(base.clamp_min(0.0))
    return torch.log(df / 2.0) + 3.0 * log_base


def _lower_tail_log_half(log_lower, a):
    """log y of y = (p Gamma(a+1))^(1/a), y = x/2, a = df/2.

    P(a, y) <= y^a / Gamma(a+1) for every y, so this y never exceeds the root:
    the start can only be too small, and it is exact as y -> 0.
    """
    return (log_lower + torch.lgamma(a + 1.0)) / a


def _upper_tail_log_half(log_upper, a):
    """log y of the root of y^(a-1) e^-y / Gamma(a) = q, y = x/2, by two fixed-point steps.

    Wilson-Hilferty is poor in the upper tail of df < 2 (the density's
    spike at 0 skews it).  For a <= 1, Q(a, y) <= y^(a-1) e^-y / Gamma(a), so
    this y is never below the root, and it is exact as y -> infinity.  +inf
    where the bound has no root above 1 (the root is small; Wilson-Hilferty
    and the lower-tail bound start there).
    """
    base = -log_upper - torch.lgamma(a)
    y = base.clamp_min(1.0)
    for _ in range(2):
        y = (base + (a - 1.0) * torch.log(y)).clamp_min(1.0)
    return torch.where(base > 1.0, torch.log(y), torch.full_like(y, math.inf))


def _halley_step(t, a, log_target, lower_tail):
    """One safeguarded Halley step on f(t) = log P(a, e^t) - log p (or log Q - log q).

    In t = log y both log P and log Q are concave (the log-gamma density
    exp(a t - e^t) / Gamma(a) is log-concave), so Newton-type steps cannot
    oscillate; the log of the tail probability keeps both tails at full
    relative accuracy.  With s = y^a e^-y / (Gamma(a) P) = d log P / dt:
    f' = s, f''/f' = a - y - s for P, and f' = -s, f''/f' = a - y + s for Q.
    """
    y = torch.exp(t)
    if lower_tail:
        log_tail = torch.log(torch.special.gammainc(a, y))
    else:
        log_tail = torch.log(torch.special.gammaincc(a, y))
    slope = torch.exp(a * t - y - torch.lgamma(a) - log_tail)
    first = slope if lower_tail else -slope
    curvature = a - y - first
    newton = (log_tail - log_target) / first
    # Halley's correction, kept within a factor 2 of the Newton step.
    step = -newton / (1.0 - 0.5 * newton * curvature).clamp(0.5, 2.0)
    # y underflowed to 0 (quantiles below ~1e-308): P = 0 gives a NaN step;
    # the start there is already the exact limit.
    step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    return t + step.clamp(-_MAX_LOG_STEP, _MAX_LOG_STEP)


def _solve_one_tail(lower, upper, df, lower_tail):
    """log(x/2) for elements that all take the same tail (1-D tensors, df 0-dim or matching)."""
    a = df / 2.0
    log_lower = torch.log(lower)
    if lower_tail:
        log_target, z = log_lower, torch.special.ndtri(lower)
    else:
        log_target, z = torch.log(upper), -torch.special.ndtri(upper)
    t = _wilson_hilferty_log_half(z, df)
    if not lower_tail:
        t_upper = _upper_tail_log_half(log_target, a)
        t = torch.where((a < 1) & torch.isfinite(t_upper), t_upper, t)
    t = torch.maximum(t, _lower_tail_log_half(log_lower, a))
    for _ in range(_HALLEY_STEPS):
        t = _halley_step(t, a, log_target, lower_tail)
    return t


def chi2_ppf(lower, upper, df):
    """Chi-squared quantile function: x with F_df(x) = lower, computed in torch.

    ``lower`` is the probability p and ``upper`` is 1 - p, given separately so
    that both tails keep full relative accuracy (1 - p rounded from p loses
    it).  The solve runs in float64 on the tensors' device with torch ops only
    (CPU or CUDA): a Wilson-Hilferty start (normal quantile of the smaller
    tail; for df < 2 in the upper tail, the asymptote y^(a-1) e^-y / Gamma(a)
    = q), raised to the lower-tail bound 2 (p Gamma(df/2 + 1))^(2/df) where
    that is larger, then a fixed number of vectorized Halley steps in log x on
    log P(df/2, x/2) = log p for p <= 1/2 and log Q(df/2, x/2) = log q above.

    Accuracy, measured against scipy (``chi2.ppf`` below 1/2, ``chi2.isf``
    of ``upper`` above): at most 2.4e-10 relative for df in [1, 1024] and p
    in [5.8e-11, 1 - 5.8e-11]; the floor is torch's ``gammainc``, ~1.7e-9
    relative for df > 40 (its asymptotic series), ~1e-14 below.  The same
    holds for df from 0.001 to 1e6.

    Args:
        lower: tensor of probabilities p in [0, 1].
        upper: tensor of 1 - p, broadcastable with ``lower``.
        df: degrees of freedom, a positive real number or a tensor
            broadcastable with ``lower``.

    Returns:
        float64 tensor of the broadcast shape on ``lower``'s device; 0 where
        p = 0, inf where 1 - p = 0, NaN where p is outside [0, 1].

    >>> p = torch.tensor([0.5, 0.95], dtype=torch.float64)
    >>> chi2_ppf(p, 1 - p, 2)
    tensor([1.3863, 5.9915], dtype=torch.float64)
    """
    lower = torch.as_tensor(lower, dtype=torch.float64)
    upper = torch.as_tensor(upper, dtype=torch.float64, device=lower.device)
    df = torch.as_tensor(df, dtype=torch.float64, device=lower.device)
    shape = torch.broadcast_shapes(lower.shape, upper.shape, df.shape)
    lower = lower.expand(shape).reshape(-1)
    upper = upper.expand(shape).reshape(-1)
    # A scalar df stays 0-dim: lgamma(df/2) is then computed once, not per element.
    df = df.expand(shape).reshape(-1) if df.dim() > 0 else df

    # Each element solves in its smaller tail; splitting the elements (rather
    # than computing both tails and selecting) halves the gammainc work.
    use_lower = lower <= upper
    log_half = torch.empty_like(lower)
    for lower_tail, chosen in ((True, use_lower), (False, ~use_lower)):
        part_df = df[chosen] if df.dim() > 0 else df
        log_half[chosen] = _solve_one_tail(lower[chosen], upper[chosen], part_df, lower_tail)

    x = 2.0 * torch.exp(log_half)
    x = torch.where(lower == 0, torch.zeros_like(x), x)
    x = torch.where(upper == 0, torch.full_like(x, math.inf), x)
    invalid = (lower < 0) | (lower > 1) | torch.isnan(lower) | torch.isnan(upper) | ~(df > 0)
    return torch.where(invalid, torch.full_like(x, math.nan), x).reshape(shape)


def _hazen_tails(start, stop, m, device):
    """(k - 0.5)/m and (m - k + 0.5)/m for k = start+1..stop, each rounded once."""
    k = torch.arange(start + 1, stop + 1, dtype=torch.float64, device=device)
    return (k - 0.5) / m, (m - k + 0.5) / m


def chi2_quantiles(m, df, *, device=None, dtype=torch.float64):
    """The m chi-squared quantiles at Hazen positions: Q_df((k - 0.5)/m), k = 1..m.

    Up to 65536 values each is solved by ``chi2_ppf``; longer tables interpolate between
    exactly solved anchors (``chi2_anchors``, cubic Hermite, within 1e-9 relative of the
    exact quantiles), in chunks so that temporaries stay small. Computed in float64 on
    ``device`` (default: torch's default device), then cast to ``dtype``. Not cached:
    ``Chi2(df).quantiles`` caches.

    Args:
        m: number of quantiles, a positive int.
        df: degrees of freedom, a positive finite real number.
        device: where the table is computed and returned.
        dtype: floating dtype of the result.

    Returns:
        tensor of shape (m,), strictly increasing (as far as ``dtype`` resolves).

    >>> chi2_quantiles(4, 3)
    tensor([0.6924, 1.7540, 3.1098, 5.7394], dtype=torch.float64)
    """
    m = _check_count(m)
    df = _check_df(df)
    dtype = _check_dtype(dtype)
    device = _resolve_device(device)
    out = torch.empty(m, dtype=torch.float64, device=device)
    anchors = chi2_anchors(m, df, device=device) if m > _EXACT_MAX_M else None
    for start in range(0, m, _CHUNK):
        stop = min(start + _CHUNK, m)
        if anchors is None:
            lower, upper = _hazen_tails(start, stop, m, device)
            out[start:stop] = chi2_ppf(lower, upper, df)
        else:
            ranks = torch.arange(start, stop, dtype=torch.int64, device=device)
            out[start:stop] = hermite_quantiles(anchors, ranks)
    return out.to(dtype)


def _anchor_ranks(m):
    """0-based ranks of the anchors: dense in both tails, at most _ANCHOR_MAX_STEP apart in the middle."""
    half = (m - 1) // 2
    widest = max(1, int(_ANCHOR_MAX_STEP * m))
    ranks, r = [], 0
    while r < half:
        ranks.append(r)
        r += max(1, min(widest, int(_ANCHOR_TAIL_RATIO * (r + 0.5))))
    ranks.append(half)
    lower = torch.tensor(ranks, dtype=torch.int64)
    return torch.unique(torch.cat([lower, (m - 1) - lower]))


def _chi2_pdf(x, df):
    a = df / 2.0
    return 0.5 * torch.exp((a - 1.0) * torch.log(0.5 * x) - 0.5 * x - math.lgamma(a))


_ANCHORS = OrderedDict()


def chi2_anchors(m, df, *, device=None):
    """Exact quantiles at the anchor ranks of an m-quantile chi-squared table.

    Returns ``(ranks, x, slope)``: int64 0-based ranks (ascending, first 0, last m - 1),
    x = Q_df((rank + 0.5)/m) by ``chi2_ppf`` and slope = dQ/dk = 1 / (m f_df(x)), all on
    ``device``. ``hermite_quantiles`` (and the compiled engines, from the same three
    arrays) evaluate every other rank. A few thousand anchors for any m; cached.

    >>> ranks, x, slope = chi2_anchors(10**6, 4)
    >>> int(ranks[0]), int(ranks[-1])
    (0, 999999)
    """
    m = _check_count(m)
    df = _check_df(df)
    device = _resolve_device(device)
    key = (m, df, device)
    if key in _ANCHORS:
        _ANCHORS.move_to_end(key)
        return _ANCHORS[key]
    with torch.inference_mode(False):
        ranks = _anchor_ranks(m).to(device)
        k = ranks.to(torch.float64)
        x = chi2_ppf((k + 0.5) / m, (m - k - 0.5) / m, df)
        slope = 1.0 / (m * _chi2_pdf(x, df))
    _ANCHORS[key] = (ranks, x, slope)
    while len(_ANCHORS) > 64:
        _ANCHORS.popitem(last=False)
    return _ANCHORS[key]


def hermite_quantiles(anchors, ranks):
    """Quantiles at 0-based ``ranks`` (int64 tensor) by cubic Hermite interpolation on ``anchors``.

    The same pieces as ``HermiteAnchors`` in csrc/common/cdf_attraction.h.

    >>> anchors = chi2_anchors(10**6, 4)
    >>> ranks = torch.tensor([0, 123457, 500000])
    >>> p = (ranks.double() + 0.5) / 10**6
    >>> torch.allclose(hermite_quantiles(anchors, ranks), chi2_ppf(p, 1 - p, 4), rtol=1e-9, atol=0)
    True
    """
    anchor_ranks, x, slope = anchors
    last = anchor_ranks.shape[0] - 1
    if last == 0:
        return x[0].expand(ranks.shape).clone()
    segment = (torch.searchsorted(anchor_ranks, ranks, right=True) - 1).clamp(0, last - 1)
    # The piece through anchors lo and lo + 1 in powers of u = rank - rank[lo]:
    # x0 + u (c1 + u (c2 + u c3)); from the last anchor on, x[last].
    inv_width = 1.0 / (anchor_ranks[segment + 1] - anchor_ranks[segment]).to(torch.float64)
    mean_slope = (x[segment + 1] - x[segment]) * inv_width
    s0, s1 = slope[segment], slope[segment + 1]
    c2 = (3 * mean_slope - 2 * s0 - s1) * inv_width
    c3 = (s0 + s1 - 2 * mean_slope) * inv_width * inv_width
    u = (ranks - anchor_ranks[segment]).to(torch.float64)
    inside = x[segment] + u * (s0 + u * (c2 + u * c3))
    return torch.where(ranks >= anchor_ranks[last], x[last], inside)


# ---------------------------------------------------------------------------
# Cache of chi-squared tables
# ---------------------------------------------------------------------------


class _TableCache:
    """LRU map key -> tensor, bounded by the total bytes of the tensors.

    Hits hand out the stored tensor itself (no copy of a table that may hold
    n(n-1)/2 values); its autograd version counter, recorded on insertion,
    shows whether a caller modified it in place, and such an entry is
    recomputed instead of being served corrupted.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._entries = OrderedDict()  # key -> (tensor, version at insertion)
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self):
        return self._bytes

    def __len__(self):
        return len(self._entries)

    def get(self, key):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            table, version = entry
            if table._version != version or table.requires_grad:
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return table

    def put(self, key, table):
        size = table.numel() * table.element_size()
        with self._lock:
            if key in self._entries:
                self._remove(key)
            if size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                self._remove(next(iter(self._entries)))
            self._entries[key] = (table, table._version)
            self._bytes += size

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _remove(self, key):
        table, _ = self._entries.pop(key)
        self._bytes -= table.numel() * table.element_size()


_TABLES = _TableCache(_CACHE_MAX_BYTES)


def clear_cache():
    """Drop every cached quantile table (frees their host or device memory).

    >>> clear_cache()
    """
    _TABLES.clear()


# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------


def _cached_chi2_quantiles(m, df, device, dtype):
    key = (m, df, device, dtype)
    table = _TABLES.get(key)
    if table is None:
        # Built as a normal tensor even under inference_mode: inference
        # tensors have no version counter for the cache to check, and a
        # table cached there is still usable outside it.
        with torch.inference_mode(False):
            table = chi2_quantiles(m, df, device=device, dtype=dtype)
        # Checked once here, so that checked_quantiles need not scan a Chi2 table every call.
        _checks.require(torch.isfinite(table).all(), ValueError,
                        f"Chi2(df={df}) has quantiles beyond the range of {dtype}")
        _TABLES.put(key, table)
    return table


@torch.library.custom_op("gaussreg::chi2_table", mutates_args=())
def _cached_chi2_table(m: int, df: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The cached table as a custom op, so that torch.compile calls it instead of tracing the cache.
    Outputs of an op must be fresh tensors: the cached one is copied (O(m), no quantile work)."""
    return _cached_chi2_quantiles(m, df, device, dtype).clone()


@_cached_chi2_table.register_fake
def _(m, df, device, dtype):
    return torch.empty(m, dtype=dtype, device=device)


class Chi2:
    """Chi-squared target with ``df`` degrees of freedom (formulas §1's default, df = D).

    ``quantiles(m, device, dtype)`` returns ``chi2_quantiles(m, df)`` cast to
    ``dtype``, cached per (m, df, device, dtype) in a module-level LRU cache
    of at most 512 MiB (a larger table is computed and returned, not stored;
    ``clear_cache()`` empties it).  The tensor returned is the cached one:
    treat it as read-only.  Modifying it in place does not corrupt later
    calls (the cache notices and recomputes) but costs a recomputation.
    A table with a value beyond ``dtype``'s range (e.g. df = 1e5 in float16)
    raises ValueError when it is computed.

    Args:
        df: degrees of freedom, a positive finite real number (stored as float).

    >>> target = Chi2(20)
    >>> target
    Chi2(df=20)
    >>> target.quantiles(2, "cpu", torch.float32)
    tensor([15.4518, 23.8277])
    >>> target == Chi2(20.0)
    True
    """

    def __init__(self, df):
        self.df = _check_df(df)

    def quantiles(self, m, device, dtype):
        """Q_df((k - 0.5)/m) for k = 1..m: tensor of shape (m,) on ``device`` in ``dtype``."""
        m = _check_count(m)
        dtype = _check_dtype(dtype)
        device = _resolve_device(device)
        if torch.compiler.is_compiling():
            return _cached_chi2_table(m, self.df, device, dtype)  # an opaque op: the cache is not traceable
        return _cached_chi2_quantiles(m, self.df, device, dtype)

    def __repr__(self):
        df = int(self.df) if self.df.is_integer() and abs(self.df) < 2**53 else self.df
        return f"Chi2(df={df!r})"

    def __eq__(self, other):
        if not isinstance(other, Chi2):
            return NotImplemented
        return self.df == other.df

    def __hash__(self):
        return hash((Chi2, self.df))


class Empirical:
    """Target given by a reference sample (formulas §1), for distributions without a closed form.

    The N sorted values ``v_(i)`` sit at probabilities ``(i - 0.5)/N`` (Hazen);
    a quantile between two positions is the linear interpolation of its
    neighbours, and beyond the first and last positions it is the first and
    last value.  Quantiles are not cached (O(m) to compute).

    Args:
        values: array-like or tensor of finite real numbers, any shape, at
            least one value; detached, copied to float64, flattened and sorted
            into the attribute ``sorted_values`` (shape (N,), on the input's
            device).

    >>> target = Empirical(torch.tensor([[4.0, 0.0], [2.0, 2.0]]))
    >>> target
    Empirical(N=4)
    >>> target.quantiles(3, "cpu", torch.float64)
    tensor([0.3333, 2.0000, 3.6667], dtype=torch.float64)
    """

    def __init__(self, values):
        values = torch.as_tensor(values)
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"values must be real numbers, got dtype {values.dtype}")
        values = values.detach().to(torch.float64).flatten()
        if values.numel() == 0:
            raise ValueError("values must hold at least one value, got an empty array")
        if not bool(torch.isfinite(values).all()):
            raise ValueError("values must be finite, got NaN or infinity")
        self.sorted_values = torch.sort(values).values

    def quantiles(self, m, device, dtype):
        """Interpolated Hazen quantiles: tensor of shape (m,) on ``device`` in ``dtype``."""
        m = _check_count(m)
        dtype = _check_dtype(dtype)
        device = _resolve_device(device)
        values = self.sorted_values.to(device)
        count = values.shape[0]
        k = torch.arange(1, m + 1, dtype=torch.float64, device=device)
        # Value i (0-based) sits at probability (i + 0.5)/N, so probability q
        # sits at the fractional index q N - 0.5; clamping it holds the ends.
        index = ((k - 0.5) / m * count - 0.5).clamp(0.0, count - 1)
        below = index.floor().long()
        above = (below + 1).clamp(max=count - 1)
        weight = index - below
        # Not torch.lerp: for weight >= 1/2 it evaluates from the upper end,
        # which rounds differently.
        table = values[below] + weight * (values[above] - values[below])
        return table.to(dtype)

    def __repr__(self):
        return f"Empirical(N={self.sorted_values.shape[0]})"


def checked_quantiles(name, target, m, device, dtype):
    """``target.quantiles(m, device, dtype)`` of any target object, checked: a tensor of shape
    (m,), finite, moved to ``device`` and ``dtype``. ``name`` is the argument the target was
    passed as (it names the culprit in the ValueError).

    >>> checked_quantiles("radii_target", Chi2(2), 3, "cpu", torch.float64)
    tensor([0.3646, 1.3863, 3.5835], dtype=torch.float64)
    """
    values = target.quantiles(m, device, dtype)
    if not isinstance(values, torch.Tensor) or values.shape != (m,):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name}.quantiles({m}, ...) must return a tensor of shape ({m},), got {got}")
    values = values.to(device=device, dtype=dtype)
    if type(target) is not Chi2:  # Chi2 checks its tables when it computes them (a scan per call cost 16 us)
        _checks.require(torch.isfinite(values).all(), ValueError, f"{name}.quantiles returned NaN or Inf values")
    return values


def rank_targets(n: int, marginal: str, bits: Optional[int], device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """The targets t_r of ranks r = 0..n-1 of the coordinate and sliced losses (formulas §2),
    computed in float64, returned in dtype: Hazen quantiles (r + 1/2)/n of the ``marginal``
    ("normal": through ndtri; "uniform" or "torus": the probabilities), or with ``bits`` the
    centres of the 2^bits cells the ranks fall in.

    >>> rank_targets(4, "uniform", None, "cpu", torch.float64)
    tensor([0.1250, 0.3750, 0.6250, 0.8750], dtype=torch.float64)
    """
    ranks = torch.arange(n, device=device, dtype=torch.int64)
    if bits is not None:
        # Integer floor division keeps the cell exact at cell boundaries (2^k s / n integral).
        cell = torch.div(ranks * (2 ** bits), n, rounding_mode="floor")
        return ((cell.to(torch.float64) + 0.5) / 2 ** bits).to(dtype)
    probabilities = (ranks.to(torch.float64) + 0.5) / n
    if marginal == "normal":
        return torch.special.ndtri(probabilities).to(dtype)
    return probabilities.to(dtype)
