"""``torch.nn.Module`` wrappers of the losses: options fixed at construction, ``forward(z)``.

Every module takes ``process_group=`` (a ``torch.distributed`` group or "world") to compute
its loss on the global batch of all DDP ranks (``gaussreg.distributed``).

Each module holds a loss's keyword options and calls the functional loss (same values,
gradients, errors and backends); ``Regularizer`` sums weighted losses and returns the
parts for logging.

    >>> reg = Regularizer(cdf=(1.0, CDFAttraction()), cw=(0.5, CramerWold(log=True)))
    >>> z = torch.randn(256, 8, requires_grad=True)
    >>> total, parts = reg(z)
    >>> sorted(parts)
    ['cdf', 'cw']
    >>> total.backward()
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .losses.cdf_attraction import cdf_attraction
from .losses.coordinate_cdf_attraction import coordinate_cdf_attraction
from .losses.cramer_wold import cw_distance
from .losses.epps_pulley import epps_pulley
from .losses.gaussian_l2 import gaussian_l2, gaussian_l2_to_normal
from .losses.gmm import GaussianMixture, gmm_cov_loss, gmm_ks_loss
from .losses.mmd import DEFAULT_SCALES, mmd
from .losses.sliced_wasserstein import sliced_wasserstein

__all__ = ["CDFAttraction", "CoordinateCDFAttraction", "CramerWold", "EppsPulley", "GMMCov", "GMMKS", "GaussianL2",
           "GaussianL2ToNormal", "MMD", "Regularizer", "SlicedWasserstein"]


class _Loss(torch.nn.Module):
    """A loss with its options: ``forward(*points)`` is ``loss(*points, **options)``."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={_short_repr(v)}" for k, v in self.options.items())


def _short_repr(value) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)


class CDFAttraction(_Loss):
    """``cdf_attraction`` (formulas §1): sorted radii and pair distances attracted to target quantiles.

    >>> CDFAttraction(distances_weight=2.0)(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, radii_weight: float = 1.0, distances_weight: float = 1.0, p: int = 1, radii_target=None,
                 distances_target=None, backend: str = "auto", max_sort_bytes: Optional[int] = None,
                 process_group=None):
        super().__init__(radii_weight=radii_weight, distances_weight=distances_weight, p=p, radii_target=radii_target,
                         distances_target=distances_target, backend=backend, max_sort_bytes=max_sort_bytes,
                         process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return cdf_attraction(z, **self.options)


class GaussianL2ToNormal(_Loss):
    """``gaussian_l2_to_normal`` (formulas §3): L2 distance of the smoothed sample to N(0, I).

    >>> GaussianL2ToNormal(sigma="mean_field")(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, sigma: Union[float, Tensor, str] = 1.0, *, backend: str = "auto", process_group=None):
        super().__init__(sigma=sigma, backend=backend, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return gaussian_l2_to_normal(z, **self.options)


class GaussianL2(_Loss):
    """``gaussian_l2`` (formulas §3): L2 distance between two smoothed samples, ``forward(x, y)``.

    >>> GaussianL2(sigma=0.5)(torch.randn(100, 4), torch.randn(80, 4)).shape
    torch.Size([])
    """

    def __init__(self, sigma: float = 1.0, *, backend: str = "auto", process_group=None):
        super().__init__(sigma=sigma, backend=backend, process_group=process_group)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return gaussian_l2(x, y, **self.options)


class MMD(_Loss):
    """``mmd`` (formulas §4, WAE-MMD): ``forward(z, prior_sample=None)``; without a prior sample
    one is drawn from N(0, I) with ``generator`` at each call (or ``"analytic"`` for rbf).

    >>> MMD(kernel="imq")(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, kernel: str = "imq", scales: Sequence[float] = DEFAULT_SCALES,
                 generator: Optional[torch.Generator] = None, backend: str = "auto", process_group=None):
        super().__init__(kernel=kernel, scales=tuple(scales), generator=generator, backend=backend,
                         process_group=process_group)

    def forward(self, z: Tensor, prior_sample: Union[Tensor, str, None] = None) -> Tensor:
        return mmd(z, prior_sample, **self.options)


class CramerWold(_Loss):
    """``cw_distance`` (formulas §5, CWAE): Cramer-Wold distance to N(0, I); ``log=True`` is the CWAE loss.

    >>> CramerWold(log=True)(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, gamma: Optional[float] = None, kernel: str = "approx", log: bool = False,
                 backend: str = "auto", process_group=None):
        super().__init__(gamma=gamma, kernel=kernel, log=log, backend=backend, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return cw_distance(z, **self.options)


class CoordinateCDFAttraction(_Loss):
    """``coordinate_cdf_attraction`` (formulas §2): each coordinate's ranks attracted to a marginal's quantiles.

    >>> CoordinateCDFAttraction(marginal="torus", bits=4)(torch.rand(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, marginal: str = "normal", bits: Optional[int] = None, p: int = 2, backend: str = "auto",
                 process_group=None):
        super().__init__(marginal=marginal, bits=bits, p=p, backend=backend, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return coordinate_cdf_attraction(z, **self.options)


class SlicedWasserstein(_Loss):
    """``sliced_wasserstein`` (formulas §6, SWAE): ``forward(z, prior_sample=None)``; fresh random
    directions from ``generator`` at each call unless ``directions`` is fixed.

    >>> SlicedWasserstein(num_projections=32)(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, num_projections: int = 50, p: int = 2, generator: Optional[torch.Generator] = None,
                 directions: Optional[Tensor] = None, backend: str = "auto", process_group=None):
        super().__init__(num_projections=num_projections, p=p, generator=generator, directions=directions,
                         backend=backend, process_group=process_group)

    def forward(self, z: Tensor, prior_sample: Optional[Tensor] = None) -> Tensor:
        return sliced_wasserstein(z, prior_sample=prior_sample, **self.options)


class EppsPulley(_Loss):
    """``epps_pulley`` (formulas §7b, SIGReg): sliced characteristic-function test statistic against N(0, 1).

    >>> EppsPulley(num_slices=64)(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, *, num_slices: int = 256, t_max: float = 3.0, num_points: int = 17,
                 generator: Optional[torch.Generator] = None, directions: Optional[Tensor] = None,
                 backend: str = "auto", process_group=None):
        super().__init__(num_slices=num_slices, t_max=t_max, num_points=num_points, generator=generator,
                         directions=directions, backend=backend, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return epps_pulley(z, **self.options)


class _MixtureLoss(_Loss):
    """A GMM-prior loss; the prior's tensors are buffers, so ``module.to(device)`` moves them."""

    def __init__(self, prior: GaussianMixture, **options):
        super().__init__(**options)
        if not isinstance(prior, GaussianMixture):
            raise TypeError(f"prior must be a gaussreg.GaussianMixture, got {type(prior).__name__}")
        self.register_buffer("means", prior.means.detach().clone())
        self.register_buffer("stds", prior.stds.detach().clone())
        self.register_buffer("weights", prior.weights.detach().clone())

    @property
    def prior(self) -> GaussianMixture:
        return GaussianMixture._trusted(self.means, self.stds, self.weights)  # validated at construction

    def extra_repr(self) -> str:
        prior = f"prior=GaussianMixture(K={self.means.shape[0]}, D={self.means.shape[1]})"
        return ", ".join([prior] + [f"{k}={_short_repr(v)}" for k, v in self.options.items()])


class GMMKS(_MixtureLoss):
    """``gmm_ks_loss`` (formulas §7): marginal CDFs of z against a Gaussian-mixture prior's.

    >>> GMMKS(GaussianMixture.separated(3, 4))(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, prior: GaussianMixture, *, backend: str = "auto", process_group=None):
        super().__init__(prior, backend=backend, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return gmm_ks_loss(z, self.prior, **self.options)


class GMMCov(_MixtureLoss):
    """``gmm_cov_loss`` (formulas §7): sample covariance of z against a Gaussian-mixture prior's.

    >>> GMMCov(GaussianMixture.separated(3, 4))(torch.randn(100, 4)).shape
    torch.Size([])
    """

    def __init__(self, prior: GaussianMixture, *, process_group=None):
        super().__init__(prior, process_group=process_group)

    def forward(self, z: Tensor) -> Tensor:
        return gmm_cov_loss(z, self.prior, **self.options)


class Regularizer(torch.nn.Module):
    """A weighted sum of losses on the same latents: ``forward(z) -> (total, parts)``.

    ``parts`` maps each name to its unweighted value, detached (for logging); ``total``
    is ``sum(weight * value)`` and carries the gradient.

    Args:
        **terms: ``name=(weight, module)`` with a finite real weight and a module whose
            ``forward(z)`` returns a 0-dim loss (e.g. ``CDFAttraction()``).

    >>> reg = Regularizer(cdf=(1.0, CDFAttraction()), mmd=(10.0, MMD()))
    >>> total, parts = reg(torch.randn(128, 6))
    >>> total.shape, sorted(parts)
    (torch.Size([]), ['cdf', 'mmd'])
    """

    def __init__(self, **terms: Tuple[float, torch.nn.Module]):
        super().__init__()
        if not terms:
            raise ValueError("Regularizer needs at least one term: name=(weight, module)")
        self.weights: Dict[str, float] = {}
        self.terms = torch.nn.ModuleDict()
        for name, term in terms.items():
            if not (isinstance(term, tuple) and len(term) == 2 and isinstance(term[1], torch.nn.Module)):
                raise TypeError(f"Regularizer term {name!r} must be (weight, module), got {term!r}")
            weight = term[0]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight \
                    or abs(weight) == float("inf"):
                raise ValueError(f"Regularizer term {name!r}: weight must be a finite real number, got {weight!r}")
            self.weights[name] = float(weight)
            self.terms[name] = term[1]

    def forward(self, z: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        values = {name: module(z) for name, module in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={w:g}" for name, w in self.weights.items())
