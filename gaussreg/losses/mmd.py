"""WAE-MMD (formulas §4, Tolstikhin et al.): unbiased MMD^2 to the N(0, I) prior.

The three pair sums (z-z, y-y, z-y) run in the fused compiled kernels
(``csrc/*/mmd.*``); the analytic-prior terms are O(n) and computed here in float64.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _checks, reference
from ..engines import pair_sum
from ..distributed import broadcast_from_first, maybe_gather
from ._front import enough_rows, prepare_points, squared_norms

_STEM = "mmd"
DEFAULT_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def mmd(z: Tensor, prior_sample: Union[Tensor, str, None] = None, *, kernel: str = "imq",
        scales: Sequence[float] = DEFAULT_SCALES, generator: Optional[torch.Generator] = None,
        backend: str = "auto", process_group=None) -> Tensor:
    r"""Unbiased MMD^2 between z and a sample of the N(0, I) prior (formulas §4, WAE-MMD).

    .. math::
        \frac{1}{n(n-1)}\sum_{i\ne j} k(z_i, z_j) + \frac{1}{m(m-1)}\sum_{i\ne j} k(y_i, y_j)
        - \frac{2}{nm}\sum_{i,j} k(z_i, y_j)

    with the multi-scale kernels ``"imq"``: ``sum_s C_s / (C_s + ||x - y||^2)``,
    C_s = 2 D s, and ``"rbf"``: ``sum_s exp(-||x - y||^2 / (2 h_s^2))``, h_s^2 = D s.

    Args:
        z: latent points (n, D), n >= 2.
        prior_sample: a prior sample y (m, D), m >= 2; None to draw
            ``torch.randn(z.shape, generator=generator)`` on z's device; or
            ``"analytic"`` (rbf only) to replace each prior expectation by its closed form
            (a deterministic WAE, cf. formulas §3).
        kernel: "imq" or "rbf".  scales: 1 to 16 positive scales s.
        generator: torch.Generator on z's device for the prior draw (reproducibility);
            with ``process_group`` the group's first rank's draw is used on every rank.
        backend: "auto", "native" or "reference".

        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
            The ranks split the pairs between them.
    Returns:
        0-dim tensor (may be slightly negative: the estimator is unbiased), differentiable
        in z and in a given prior_sample.

    Example:
        >>> z = torch.randn(512, 8, requires_grad=True)
        >>> gaussreg.mmd(z, kernel="imq", generator=torch.Generator().manual_seed(0)).backward()
    """
    _checks.choice("kernel", kernel, ("imq", "rbf"))
    scales = _scales(scales)
    analytic = isinstance(prior_sample, str)
    if analytic:
        _checks.choice("prior_sample", prior_sample, ("analytic",))
        if kernel != "rbf":
            raise ValueError("prior_sample='analytic' has a closed form only for kernel='rbf'")
    y_in = prior_sample if isinstance(prior_sample, Tensor) else None
    if prior_sample is not None and not analytic and y_in is None:
        raise TypeError(f"prior_sample must be a tensor (m, D), None or 'analytic', got {type(prior_sample).__name__}")
    (z, y), device, dtype, native = prepare_points("mmd", _STEM, backend, optional=("prior_sample",),
                                                     draws_partner=prior_sample is None, process_group=process_group,
                                                     z=z, prior_sample=y_in)
    _checks.generator(generator, draws_on=device if prior_sample is None else None)
    # A drawn prior sample is drawn after the gather, at the global size, and is the group's
    # first rank's draw on every rank: the ranks sum shares of one statistic.
    z, y = maybe_gather(process_group, z, y)
    enough_rows(2, z=z, prior_sample=y)
    if prior_sample is None:
        y = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=device)
        if process_group is not None:
            y = broadcast_from_first(y, process_group)
    if not native:
        return reference.mmd(z, "analytic" if analytic else y, kernel=kernel, scales=scales, generator=generator)
    n, d = z.shape
    kind, params = _kernel_params(kernel, scales, d)
    # Each unordered pair sum counts both orders of its pairs: 2 sum_{i<j} = sum_{i != j}.
    zz = pair_sum.pair_sum(_STEM, kind, params, z, process_group=process_group).mul(2.0 / (n * (n - 1)))
    if analytic:
        yy, zy = _analytic_prior_terms(z, scales)
        return (zz + yy - 2.0 * zy).to(dtype)
    m = y.shape[0]
    yy = pair_sum.pair_sum(_STEM, kind, params, y, process_group=process_group)
    zy = pair_sum.pair_sum(_STEM, kind, params, z, y, process_group=process_group)
    # In place on float64 scalars: the three terms in three small ops instead of seven.
    return zz.add_(yy, alpha=2.0 / (m * (m - 1))).add_(zy, alpha=-2.0 / (n * m)).to(dtype)


def _scales(scales) -> tuple:
    if isinstance(scales, (str, bytes)):
        raise TypeError(f"scales must be a sequence of positive floats, got the string {scales!r}")
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise TypeError(f"scales must be a sequence of positive floats, got {scales!r}") from None
    if not 1 <= len(values) <= 16:
        raise ValueError(f"scales must hold 1 to 16 values, got {len(values)}")
    for s in values:
        _checks.positive_float("scales entry", s)
    return values


def _kernel_params(kernel: str, scales: tuple, d: int):
    if kernel == "imq":
        return pair_sum.MMD_IMQ, [2.0 * d * s for s in scales]
    # rbf: exp(-t / (2 h^2)) with h^2 = D s, as (coef, weight) pairs.
    params = []
    for s in scales:
        params += [1.0 / (2.0 * d * s), 1.0]
    return pair_sum.MMD_RBF, params


def _analytic_prior_terms(z: Tensor, scales: tuple):
    """Closed forms of E_{y,y'} k(y, y') and mean_i E_y k(z_i, y) for the rbf kernel, y ~ N(0, I)."""
    d = z.shape[1]
    r = squared_norms(z)
    yy = 0.0
    zy = torch.zeros((), dtype=torch.float64, device=z.device)
    for s in scales:
        h2 = d * s
        yy += math.exp(0.5 * d * math.log(h2 / (h2 + 2.0)))
        zy = zy + math.exp(0.5 * d * math.log(h2 / (h2 + 1.0))) * torch.exp(-r / (2.0 * (h2 + 1.0))).mean()
    return yy, zy
