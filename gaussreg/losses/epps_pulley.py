"""Sliced Epps-Pulley statistic (formulas §7b; the SIGReg regularizer of LeJEPA).

Linear in n: after the projections (one matrix product), the engine
(``csrc/*/epps_pulley.*``) makes one pass over them, accumulating the sums of
cos(t_k u) and sin(t_k u) for every knot from a single sincos per projection; the
statistic is assembled from those (S, K) sums. Under a process group the sums are
reduced over the ranks: the exact global statistic without gathering points.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks, reference
from ..distributed import check_group, sum_over_ranks, total_count
from ..engines.epps_pulley import MAX_POINTS, moments, plan as moments_plan
from ._front import prepare_points
from ._projections import direction_count, project, unit_directions



def epps_pulley(z: Tensor, *, num_slices: int = 256, t_max: float = 3.0, num_points: int = 17,
                generator: Optional[torch.Generator] = None, directions: Optional[Tensor] = None,
                backend: str = "auto", process_group=None) -> Tensor:
    r"""Sliced Epps-Pulley statistic: characteristic functions of 1-D projections vs N(0, 1) (formulas §7b).

    .. math::
        EP_l = n \sum_{k=0}^{K-1} w_k \Big[\big(\tfrac{1}{n}\textstyle\sum_i \cos(t_k u_{il})
               - e^{-t_k^2/2}\big)^2 + \big(\tfrac{1}{n}\textstyle\sum_i \sin(t_k u_{il})\big)^2\Big],
        \qquad L = \frac{1}{S}\sum_{l=1}^{S} EP_l

    with u_il = z_i . a_l for S unit directions a_l, knots t_k = k T/(K-1) and trapezoid
    weights w_k = 2 Delta e^{-t_k^2/2} (halved at both ends), Delta = T/(K-1): the
    weighted squared distance between the empirical and the N(0, 1) characteristic
    functions on [-T, T], scaled by n (the Epps-Pulley test statistic). Cost O(n S (D + K))
    with one sincos per projection; memory O(n S).

    Args:
        z: points (n, D), n >= 1, float16/bfloat16/float32/float64, CPU or CUDA.
        num_slices: S, the number of random directions (ignored when ``directions`` is given).
        t_max: T > 0, the integration range.
        num_points: K in [2, 64], the knots on [0, T].
        generator: torch.Generator on z's device for the directions.
        directions: (S, D) directions to use instead of random ones (normalized here).
        backend: "auto", "native" or "reference".
        process_group: the statistic of the global batch of all ranks: the cos/sin sums are
            reduced over the ranks (n is the global batch size); the directions are the
            group's first rank's.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.randn(4096, 64, requires_grad=True)
        >>> gaussreg.epps_pulley(z, num_slices=512, generator=torch.Generator().manual_seed(0)).backward()
    """
    z = _checks.points("z", z, min_rows=1)
    t_max = _checks.positive_float("t_max", t_max)
    if isinstance(num_points, bool) or not isinstance(num_points, numbers.Integral) \
            or not 2 <= num_points <= MAX_POINTS:
        raise ValueError(f"num_points must be an int in [2, {MAX_POINTS}], got {num_points!r}")
    if process_group is not None:
        check_group(process_group)
    count = direction_count(num_slices, directions)
    (zc,), device, out_dtype, native = prepare_points(
        "epps_pulley", None, backend, min_rows=1, entry="epps_pulley_forward",
        need_bytes=lambda dev, dtype, sizes: moments_plan(dtype, count, *sizes[0], int(num_points)).need_bytes,
        process_group=process_group, z=z)
    slices = unit_directions("num_slices", num_slices, zc, generator, directions, process_group)
    if not native and process_group is None:
        return reference.epps_pulley(zc, t_max=t_max, num_points=int(num_points), directions=slices).to(out_dtype)
    delta = t_max / (num_points - 1)
    projections = project(slices, zc)  # (S, n): each slice's projections contiguous
    if native:
        cos_sums, sin_sums = moments(projections, int(num_points), delta)
    else:
        cos_sums, sin_sums = _moments_by_torch(projections, int(num_points), delta)
    n = zc.shape[0]
    if process_group is not None:
        cos_sums, sin_sums = sum_over_ranks(torch.stack((cos_sums, sin_sums)), process_group).unbind(0)
        n = total_count(n, device, process_group)
    return statistic(cos_sums, sin_sums, n, delta).to(out_dtype)


def knot_weights(num_points: int, delta: float, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(t_k, w_k) in float64: knots k delta and trapezoid weights 2 delta exp(-t^2/2), halved at the ends."""
    knots = torch.arange(num_points, dtype=torch.float64, device=device) * delta
    weights = 2.0 * delta * torch.exp(-knots.pow(2) / 2)
    weights[0] *= 0.5
    weights[-1] *= 0.5
    return knots, weights


def statistic(cos_sums: Tensor, sin_sums: Tensor, n: int, delta: float) -> Tensor:
    """mean over slices of EP_l from the (S, K) float64 sums of cos(t_k u) and sin(t_k u)."""
    knots, weights = knot_weights(cos_sums.shape[1], delta, cos_sums.device)
    normal_cf = torch.exp(-knots.pow(2) / 2)
    squared_gap = (cos_sums / n - normal_cf).pow(2) + (sin_sums / n).pow(2)
    return (n * (squared_gap @ weights)).mean()


def _moments_by_torch(u: Tensor, num_points: int, delta: float) -> Tuple[Tensor, Tensor]:
    """The sums of the plain-PyTorch path, one knot at a time (O(n S) memory)."""
    knots, _ = knot_weights(num_points, delta, u.device)
    u64 = u.double()
    cos_sums = torch.stack([torch.cos(t * u64).sum(1) for t in knots], dim=1)
    sin_sums = torch.stack([torch.sin(t * u64).sum(1) for t in knots], dim=1)
    return cos_sums, sin_sums
