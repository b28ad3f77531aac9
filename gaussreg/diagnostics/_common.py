"""What the diagnostics share: input checks, chi-squared and normal tails, standardization,
blockwise sums over pairs."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks

# Entries of an n x n block (Gram or distance matrix) held at once: 32 MiB of float64.
_BLOCK_ENTRIES = 1 << 22
# Relative eigenvalue floor below which a sample covariance counts as singular (per dimension).
_SINGULAR_RTOL = 1e-12


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
