"""Random 1-D projections against N(0, 1), and the Cramer-Wold normality index (formulas §8)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _checks
from ._common import _as_float64, _generator, _points, _positive
from ._ks import _ks_of_sorted
from ._results import CramerWoldResult, ProjectionKSResult


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
    from ..losses.cramer_wold import cw_distance

    z = _as_float64(z)
    n, dim = z.shape
    gamma = (4.0 / (3.0 * n)) ** 0.4 if gamma is None else _positive("gamma", gamma)
    kernel = "approx" if dim >= 20 else "exact"
    distance = float(cw_distance(z, gamma=gamma, kernel=kernel))
    return CramerWoldResult(2.0 * math.sqrt(math.pi * (1.0 + gamma)) * distance, distance, gamma, kernel)
