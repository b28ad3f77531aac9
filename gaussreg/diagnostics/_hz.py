"""The BHEP statistic and the Henze-Zirkler test (formulas §8)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import _as_float64, _positive, _standardize, _sum_over_pairs
from ._results import BHEPResult, HZResult


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
