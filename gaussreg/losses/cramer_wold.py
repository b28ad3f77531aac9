"""Cramer-Wold distance to N(0, I) (formulas §5, CWAE of Tabor, Knop et al.).

The sample-sample sum runs in the fused pair kernels (``csrc/*/cramer_wold.*``); the
O(n) sample-to-prior sum is a closed form for the approximate kernel and, for the exact
1F1 kernel, the same compiled kernel on pairs with the single point 0, so 1F1 is
evaluated by the same code on CPU and GPU.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _checks, reference
from ..engines import pair_sum
from ..distributed import maybe_gather
from ._front import enough_rows, prepare_points, squared_norms

_STEM = "cramer_wold"


def cw_distance(z: Tensor, *, gamma: Optional[float] = None, kernel: str = "approx", log: bool = False,
                backend: str = "auto", process_group=None) -> Tensor:
    r"""Squared Cramer-Wold distance between the sample and N(0, I) (formulas §5).

    .. math::
        d_{cw}^2 = \frac{1}{2n^2\sqrt{\pi}}\Big[\frac{1}{\sqrt\gamma}\sum_{i,j}
        \phi_D\big(\tfrac{\|z_i - z_j\|^2}{4\gamma}\big) + \frac{n^2}{\sqrt{1+\gamma}}
        - \frac{2n}{\sqrt{\gamma + 1/2}}\sum_i \phi_D\big(\tfrac{\|z_i\|^2}{2 + 4\gamma}\big)\Big]

    the L2 distance between the smoothed one-dimensional projections of the sample and of
    N(0, I), integrated over all directions. ``kernel="exact"`` uses
    phi_D(s) = 1F1(1/2; D/2; -s); ``"approx"`` (D >= 2) the CWAE approximation
    (1 + 4 s / (2D - 3))^(-1/2), which gives the official ``cw_normality``.

    Args:
        z: points (n, D), n >= 2 (D >= 2 for "approx").
        gamma: smoothing, positive; default Silverman's (4 / (3 n))^(2/5).
        kernel: "approx" or "exact".  log: return log(d_cw^2), the CWAE training loss.
        backend: "auto", "native" or "reference".

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
            The ranks split the pairs between them.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.randn(256, 20, requires_grad=True)
        >>> gaussreg.cw_distance(z, log=True).backward()
    """
    _checks.choice("kernel", kernel, ("approx", "exact"))
    if not isinstance(log, bool):
        raise TypeError(f"log must be a bool, got {type(log).__name__}")
    min_dim = 2 if kernel == "approx" else 1
    (z,), device, dtype, native = prepare_points("cw_distance", _STEM, backend, min_dim=min_dim,
                                                 process_group=process_group, z=z)
    (z,) = maybe_gather(process_group, z)
    enough_rows(2, z=z)
    n, d = z.shape
    gamma = (4.0 / (3.0 * n)) ** 0.4 if gamma is None else _checks.positive_float("gamma", gamma)
    if not native:
        return reference.cw_distance(z, gamma=gamma, kernel=kernel, log=log)
    if kernel == "approx":
        kind, pair_params = pair_sum.CW_APPROX, [1.0 / (gamma * (2 * d - 3))]  # phi(t / (4 gamma))
    else:
        kind, pair_params = pair_sum.CW_EXACT, [1.0 / (4.0 * gamma), 0.5 * d]
    pairs = 2.0 * pair_sum.pair_sum(_STEM, kind, pair_params, z, process_group=process_group) + n  # phi(0) = 1
    points = _point_sum(z, kind, gamma, process_group)
    value = (pairs / math.sqrt(gamma) + n * n / math.sqrt(1.0 + gamma)
             - 2.0 * n / math.sqrt(gamma + 0.5) * points) / (2.0 * n * n * math.sqrt(math.pi))
    if log:
        value = torch.log(value)
    return value.to(dtype)


def _point_sum(z: Tensor, kind: int, gamma: float, process_group) -> Tensor:
    """sum_i phi_D(||z_i||^2 / (2 + 4 gamma)) in float64, differentiable in z.

    The approximate kernel is a closed form (plain torch on the float64 squared norms); the
    exact one needs 1F1, so it runs as pairs of z with the single point 0 through the
    same compiled kernel as the sample-sample sum.
    """
    d = z.shape[1]
    if kind == pair_sum.CW_APPROX:
        s = squared_norms(z) / (2.0 + 4.0 * gamma)
        return torch.rsqrt(1.0 + 4.0 * s / (2 * d - 3)).sum()
    origin = torch.zeros((1, d), dtype=z.dtype, device=z.device)
    return pair_sum.pair_sum(_STEM, kind, [1.0 / (2.0 + 4.0 * gamma), 0.5 * d], z, origin,
                             process_group=process_group)
