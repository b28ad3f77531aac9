"""Mardia's multivariate skewness and kurtosis (formulas §8)."""
from __future__ import annotations

import math

from ._common import _as_float64, _chi2_sf, _row_blocks, _standardize, _two_sided_normal_pvalue
from ._results import MardiaResult


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
