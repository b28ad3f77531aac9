"""L2 distance between Gaussian-smoothed samples (formulas §3, Duda Section II).

Public: :func:`gaussian_l2_to_normal`, :func:`gaussian_l2`, :func:`mean_field_sigma`.
The O(n^2) pair sums run in the fused compiled kernels (``csrc/*/gaussian_l2.*``);
the O(n) point terms and the final combination are computed here in float64.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from .. import _checks, reference
from ..engines import pair_sum
from ..distributed import maybe_gather
from ._front import enough_rows, prepare_points, squared_norms

_STEM = "gaussian_l2"


def gaussian_l2_to_normal(z: Tensor, sigma: Union[float, Tensor, str] = 1.0, *, backend: str = "auto",
                          process_group=None) -> Tensor:
    r"""Squared L2 distance between the Gaussian-smoothed sample and N(0, I) (formulas §3, eq. 9).

    Each point z_i is replaced by N(z_i, sigma_i^2 I); the loss is the squared L2 distance
    of that mixture's density to the standard normal density, times (4 pi)^{D/2}:

    .. math::
        S = \frac{1}{n^2}\sum_{i,i'} e^{-\|z_i - z_{i'}\|^2 / (2 a_{ii'})} (a_{ii'}/2)^{-D/2}
            + 1 - \frac{2}{n}\sum_i e^{-\|z_i\|^2 / (2 b_i)} (b_i/2)^{-D/2},

    with a_ii' = sigma_i^2 + sigma_i'^2 and b_i = 1 + sigma_i^2. S >= 0, and S is small
    when z looks like an N(0, I) sample at the resolution sigma.

    Args:
        z: points, shape (n, D), n >= 2; float16/bfloat16 are computed in float32.
        sigma: smoothing width: a positive float, a tensor (n,) with one width per point
            (held constant), or ``"mean_field"`` for ``mean_field_sigma(||z_i||, D)``
            computed from ``z.detach()``.
        backend: "auto" (compiled kernels when built), "native" or "reference".

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
            The ranks split the pairs between them.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Raises:
        TypeError / ValueError: wrong type, shape, dtype, device, sigma, or NaN/Inf in z.
        MemoryError: the working memory (O(n D)) cannot fit; the message gives the bytes.

    Example:
        >>> z = torch.randn(1000, 16, requires_grad=True)
        >>> loss = gaussreg.gaussian_l2_to_normal(z, sigma="mean_field")
        >>> loss.backward()
    """
    (z,), device, dtype, native = prepare_points("gaussian_l2_to_normal", _STEM, backend, process_group=process_group,
                                                 z=z)
    if isinstance(sigma, Tensor):
        z, sigma = maybe_gather(process_group, z, sigma)  # per-point widths travel with their points
    else:
        (z,) = maybe_gather(process_group, z)
    enough_rows(2, z=z)
    n, d = z.shape
    sigma = _sigma_per_point_or_float(sigma, z)
    if not native:
        return reference.gaussian_l2_to_normal(z, sigma)
    if isinstance(sigma, float):
        s2 = sigma * sigma
        # k(t) = exp(-t / (4 sigma^2)); the factor (sigma^2)^(-D/2) is applied in float64 here
        # so that it cannot overflow float32 inside the kernel.
        pairs = pair_sum.pair_sum(_STEM, pair_sum.GAUSS_EXP_SUM, [1.0 / (4.0 * s2), 1.0], z,
                                  process_group=process_group)
        # In log space: the factor alone may pass 1e308 (small sigma, large D), the term is inf then.
        pair_term = torch.exp(torch.log(2.0 * pairs + n) - 0.5 * d * math.log(s2) - 2.0 * math.log(n))
        b = torch.full((n,), 1.0 + s2, dtype=torch.float64, device=device)
    else:
        s2 = sigma.to(z.dtype).pow(2).contiguous()
        pairs = pair_sum.pair_sum(_STEM, pair_sum.GAUSS_PER_POINT, [0.5 * d], z, px=s2, process_group=process_group)
        diagonal = torch.exp(-0.5 * d * torch.log(s2.double())).sum()  # (a_ii / 2)^(-D/2), a_ii = 2 sigma_i^2
        pair_term = (2.0 * pairs + diagonal) / (n * n)
        b = 1.0 + s2.double()
    r = squared_norms(z)
    point_term = torch.exp(-r / (2.0 * b) - 0.5 * d * torch.log(0.5 * b)).sum() * (2.0 / n)
    return (pair_term + 1.0 - point_term).to(dtype)


def gaussian_l2(x: Tensor, y: Tensor, sigma: float = 1.0, *, backend: str = "auto", process_group=None) -> Tensor:
    r"""Squared L2 distance between two Gaussian-smoothed samples (formulas §3, eq. 7).

    .. math::
        \frac{1}{n^2}\sum_{i,i'} k(x_i, x_{i'}) + \frac{1}{m^2}\sum_{j,j'} k(y_j, y_{j'})
        - \frac{2}{nm}\sum_{i,j} k(x_i, y_j), \quad k(a, b) = e^{-\|a - b\|^2 / (4\sigma^2)},

    which is d_g^2(X, Y) (4 pi sigma^2)^{D/2}: zero iff the smoothed samples coincide.

    Args:
        x: shape (n, D), n >= 2.  y: shape (m, D), m >= 2, same device and D.
        sigma: positive float, the smoothing width of every point.
        backend: "auto", "native" or "reference".

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
            The ranks split the pairs between them.
    Returns:
        0-dim tensor, differentiable in x and y.

    Example:
        >>> x, y = torch.randn(500, 8), torch.randn(400, 8) + 0.5
        >>> gaussreg.gaussian_l2(x, y, sigma=0.5)
    """
    sigma = _checks.positive_float("sigma", sigma)
    (x, y), device, dtype, native = prepare_points("gaussian_l2", _STEM, backend, process_group=process_group, x=x, y=y)
    x, y = maybe_gather(process_group, x, y)
    enough_rows(2, x=x, y=y)
    if not native:
        return reference.gaussian_l2(x, y, sigma)
    n, m = x.shape[0], y.shape[0]
    params = [1.0 / (4.0 * sigma * sigma), 1.0]
    kind = pair_sum.GAUSS_EXP_SUM
    xx = (2.0 * pair_sum.pair_sum(_STEM, kind, params, x, process_group=process_group) + n) / (n * n)
    yy = (2.0 * pair_sum.pair_sum(_STEM, kind, params, y, process_group=process_group) + m) / (m * m)
    xy = pair_sum.pair_sum(_STEM, kind, params, x, y, process_group=process_group) / (n * m)
    return (xx + yy - 2.0 * xy).to(dtype)


def mean_field_sigma(r: Tensor, dim: int, approx: bool = False) -> Tensor:
    r"""Smoothing width that best matches one point at radius r to N(0, I) (formulas §3, eq. 11-12).

    For each radius r (not squared) returns the sigma > 0 minimizing

    .. math::
        f(\sigma) = (4\pi\sigma^2)^{-D/2} + (4\pi)^{-D/2}
                    - 2 e^{-r^2 / (2(1+\sigma^2))} (2\pi(1+\sigma^2))^{-D/2},

    so that sigma(0) = 1 and sigma grows with r. ``approx=True`` gives eq. (12):
    ``1 + r^2 / (2 D)``.

    The exact minimizer solves f'(u) = 0 in u = sigma^2 written in log space (it does not
    over/underflow at large D); the root is bracketed and bisected in log u in float64 to
    full precision.

    Args:
        r: radii, any shape, non-negative. dim: the dimension D >= 1.

    Returns:
        sigma with r's shape and floating dtype (no gradient: a bandwidth choice).

    Example:
        >>> gaussreg.mean_field_sigma(torch.tensor([0.0, 4.0]), dim=16)
        tensor([1.0000, 1.3...])
    """
    if not isinstance(r, Tensor):
        raise TypeError(f"r must be a torch.Tensor of radii, got {type(r).__name__}")
    if r.is_complex() or r.dtype == torch.bool:
        raise TypeError(f"r must be a real tensor of radii, got dtype {r.dtype}")
    dim = _checks.positive_int("dim", dim)
    out_dtype = r.dtype if r.is_floating_point() else torch.get_default_dtype()
    r64 = r.detach().double()
    _checks.finite("r", r64)
    _checks.require((r64 >= 0).all(), ValueError, "r must hold non-negative radii")
    if approx:
        return (1.0 + r64.pow(2) / (2.0 * dim)).to(out_dtype)
    return _exact_mean_field_sigma(r64, dim).to(out_dtype)


def _mean_field_stationarity(log_u: Tensor, r2: Tensor, dim: int) -> Tensor:
    """log(-df/du contribution of the first term) - log(the third term's); zero at the optimum.

    f'(u) = 0 reads  (D/2) (4 pi)^(-D/2) u^(-D/2-1)
                   = 2 e^(-r^2/(2(1+u))) (2 pi (1+u))^(-D/2) (D (1+u) - r^2) / (2 (1+u)^2);
    the right side is positive only for u > r^2/D - 1, where this difference of logs
    decreases from +inf to -(D/2 + 1) log 2.
    """
    u = torch.exp(log_u)
    v = 1.0 + u
    half = 0.5 * dim
    lhs = math.log(half) - half * math.log(4 * math.pi) - (half + 1.0) * log_u
    gap = dim * v - r2
    rhs = (math.log(2.0) - r2 / (2.0 * v) - half * torch.log(2 * math.pi * v)
           + torch.log(torch.clamp(gap, min=0.0)) - math.log(2.0) - 2.0 * torch.log(v))
    return lhs - rhs


def _exact_mean_field_sigma(r: Tensor, dim: int) -> Tensor:
    r2 = r.pow(2)
    # Lower end just above where the right side vanishes; upper end well past eq. (12)'s guess.
    lower = torch.clamp(r2 / dim - 1.0, min=0.0)
    lo = torch.log(torch.where(lower > 0, lower * (1 + 1e-12) + 1e-300, torch.full_like(lower, 1e-12)))
    hi = torch.logaddexp(math.log(4.0) + 2.0 * torch.log1p(r2 / dim), torch.full_like(r2, math.log(4.0)))
    # Fixed iteration counts, no data-dependent exit: the same work eagerly and under
    # torch.compile. Widening where the upper end is still left of the root (a safeguard:
    # the start above already lies right of it in every case tried).
    for _ in range(4):
        hi = torch.where(_mean_field_stationarity(hi, r2, dim) > 0, hi + 8.0, hi)
    # The bracket in log u is at most ~100 wide: 64 halvings leave < 1e-17 of it.
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        positive = _mean_field_stationarity(mid, r2, dim) > 0
        lo = torch.where(positive, mid, lo)
        hi = torch.where(positive, hi, mid)
    return torch.exp(0.25 * (lo + hi))  # sigma = sqrt(u)


def _sigma_per_point_or_float(sigma, z: Tensor):
    """Normalise sigma to a float or a constant per-point tensor (n,) on z's device."""
    n, d = z.shape
    if isinstance(sigma, str):
        _checks.choice("sigma", sigma, ("mean_field",))
        return mean_field_sigma(z.detach().norm(dim=1), d).to(z.dtype)
    if isinstance(sigma, Tensor):
        if not sigma.is_floating_point():
            raise TypeError(f"sigma must be a float, 'mean_field' or a floating-point tensor of shape ({n},), "
                            f"got dtype {sigma.dtype}")
        _checks.no_grad_option("sigma", sigma)
        if sigma.dim() == 0:
            return _checks.positive_float("sigma", float(sigma))
        if sigma.shape != (n,):
            raise ValueError(f"sigma must be a float, 'mean_field' or a tensor of shape ({n},), "
                             f"got shape {tuple(sigma.shape)}")
        if sigma.device != z.device:
            raise ValueError(f"sigma must be on z's device {z.device}, got {sigma.device}")
        _checks.require((torch.isfinite(sigma) & (sigma > 0)).all(), ValueError,
                        "sigma must hold positive, finite widths")
        # The kernels take log(sigma_i^2 + sigma_j^2): keep it a normal number of z's dtype.
        tiny = torch.finfo(z.dtype).tiny
        _checks.require((sigma.to(z.dtype).pow(2) >= tiny).all(), ValueError,
                        f"sigma must be at least {tiny ** 0.5:.3g} in {z.dtype} (its square must be a normal number)")
        return sigma.to(z.dtype)
    return _checks.positive_float("sigma", sigma)
