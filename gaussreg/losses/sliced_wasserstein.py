"""Sliced Wasserstein distance to N(0, I) or to a prior sample (formulas §6, SWAE of Kolouri et al.).

The L projections are one matrix product, theta @ z^T, laid out as L contiguous
segments; the segmented engine (``gaussreg.engines.segmented``) sorts each one and takes the residual to
its targets in the same pass.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _checks, reference
from ..distributed import maybe_gather
from ..engines import segmented
from ..targets import rank_targets
from ._front import prepare_points
from ._projections import direction_count, project, unit_directions


def sliced_wasserstein(z: Tensor, *, num_projections: int = 50, p: int = 2, prior_sample: Optional[Tensor] = None,
                       generator: Optional[torch.Generator] = None, directions: Optional[Tensor] = None,
                       backend: str = "auto", process_group=None) -> Tensor:
    r"""Sliced Wasserstein-p distance, to the p-th power, between z and N(0, I) (formulas §6).

    .. math::
        SW = \frac{1}{L}\sum_{l=1}^{L} \frac{1}{n}\sum_{i=1}^{n} |u_{(i)l} - v_{(i)l}|^p,
        \qquad u_{il} = z_i \cdot \theta_l

    with theta_l uniform on the unit sphere, u_(i)l the sorted projections and v_(i)l the
    exact N(0, 1) quantiles Phi^{-1}((i - 1/2)/n) -- the projections of N(0, I) are N(0, 1),
    so no prior sample is needed and the loss has no sampling noise -- or the sorted
    projections of ``prior_sample`` (same n) when given. The directions are held constant.

    Args:
        z: points (n, D), n >= 1, float16/bfloat16/float32/float64, CPU or CUDA.
        num_projections: L, the number of random directions (ignored when
            ``directions`` is given).
        p: 1 or 2.
        prior_sample: None, or a sample (n, D) of any prior (differentiable too).
        generator: torch.Generator on z's device for the directions (reproducibility).
        directions: (L, D) directions to use instead of random ones (normalized here).
        backend: "auto", "native" or "reference".
        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); the directions are then taken from the
            group's first rank so every rank computes the same statistic.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.randn(1024, 16, requires_grad=True)
        >>> g = torch.Generator().manual_seed(0)
        >>> gaussreg.sliced_wasserstein(z, num_projections=128, generator=g).backward()
    """
    z = _checks.points("z", z, min_rows=1)
    if prior_sample is not None:
        prior_sample = _checks.points("prior_sample", prior_sample, min_rows=1)
    p = _checks.power(p)
    z, prior_sample = maybe_gather(process_group, z, prior_sample)
    if prior_sample is not None and prior_sample.shape[0] != z.shape[0]:
        raise ValueError(f"prior_sample must have as many points as z (its sorted projections are the targets), "
                         f"got {prior_sample.shape[0]} and {z.shape[0]}")
    count = direction_count(num_projections, directions)

    def need_bytes(dev, dtype, sizes):
        n, elem = sizes[0][0], dtype.itemsize
        # The prior's projections: their sort (values and int64 indices) and sorted slope;
        # the backward's gradients of the point tensors (n x D each).
        prior_bytes = count * n * (2 * elem + 8) if len(sizes) > 1 else 0
        gradients = sum(rows * d for rows, d in sizes) * elem
        return segmented.plan(dev, dtype, count, n, sorted_slope=len(sizes) > 1).need_bytes + prior_bytes + gradients

    (zc, prior), device, out_dtype, native = prepare_points(
        "sliced_wasserstein", None, backend, min_rows=1, optional=("prior_sample",), entry="segmented_forward",
        need_bytes=need_bytes, process_group=process_group, z=z, prior_sample=prior_sample)
    theta = unit_directions("num_projections", num_projections, zc, generator, directions, process_group)
    if not native:
        return reference.sliced_wasserstein(zc, p=p, prior_sample=prior, directions=theta).to(out_dtype)
    n = zc.shape[0]
    if prior is None:
        targets = rank_targets(n, "normal", None, device, zc.dtype)
    else:
        targets = torch.sort(project(theta, prior), dim=1).values.contiguous()
    total = segmented.sorted_gaps(project(theta, zc), targets, p=p)
    return (total / (n * count)).to(out_dtype)
