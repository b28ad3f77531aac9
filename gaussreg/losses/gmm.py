"""Gaussian-mixture prior losses (formulas §7, GMM-DAE of Saseendran et al.).

``gmm_ks_loss`` compares each coordinate's empirical CDF with the mixture's marginal CDF
at the sample itself: the empirical CDF comes from the segmented engine's tie-aware
counts (one radix sort per column), the mixture CDF and its gradient from a pass per
component (O(n D) memory, never an n x K x D tensor). ``gmm_cov_loss`` compares
covariances and is one matrix product.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks, engines, reference
from ..distributed import maybe_gather
from ..engines import segmented
from ._front import prepare_points


class GaussianMixture:
    """A K-component Gaussian mixture with diagonal covariances (the GMM-DAE prior, formulas §7).

    Args:
        means: (K, D) component means.
        stds: (K, D) positive standard deviations (diagonal covariances sigma_k^2).
        weights: (K,) mixing weights p_k >= 0 summing to 1; default uniform.

    Attributes ``means``, ``stds``, ``weights`` are float tensors on one device
    (``.to(device)`` moves them). ``covariance()`` is the mixture's covariance Sigma.

    Example:
        >>> prior = GaussianMixture.separated(4, 8, distance=6.0)
        >>> x = prior.sample(1000, generator=torch.Generator().manual_seed(0))
        >>> gaussreg.gmm_ks_loss(x, prior) < 0.01
        tensor(True)
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Optional[Tensor] = None):
        means = _mixture_tensor("means", means, 2)
        stds = _mixture_tensor("stds", stds, 2)
        k, dim = means.shape
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=means.dtype, device=means.device)
        weights = _mixture_tensor("weights", weights, 1)
        if stds.shape != means.shape:
            raise ValueError(f"stds must have the shape of means {tuple(means.shape)}, got {tuple(stds.shape)}")
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},) (one per component of means), "
                             f"got {tuple(weights.shape)}")
        _checks.same_device(means=means, stds=stds, weights=weights)
        if not bool((stds > 0).all()):
            raise ValueError("stds must be positive, got a minimum of "
                             f"{float(stds.detach().min())}")
        if not bool((weights >= 0).all()):
            raise ValueError(f"weights must be non-negative, got a minimum of {float(weights.detach().min())}")
        total = float(weights.detach().double().sum())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {total!r}")
        self.means, self.stds, self.weights = means, stds, weights

    @classmethod
    def _trusted(cls, means: Tensor, stds: Tensor, weights: Tensor) -> "GaussianMixture":
        """Without the checks (which read tensor values): for parameters already validated."""
        prior = cls.__new__(cls)
        prior.means, prior.stds, prior.weights = means, stds, weights
        return prior

    @classmethod
    def separated(cls, num_components: int, dim: int, *, distance: float = 4.0, std: float = 1.0,
                  dtype: torch.dtype = torch.float32, device=None) -> "GaussianMixture":
        """K equally weighted components with means at ``distance`` from each other.

        The means are ``distance / sqrt(2)`` times K of the D unit vectors, centred at the
        origin: every pair of means is exactly ``distance`` apart (a regular simplex), so
        ``distance / std`` sets how well the components separate (6 or more: barely
        overlapping). Needs K <= D; pass explicit means for more components.
        """
        num_components = _checks.positive_int("num_components", num_components)
        dim = _checks.positive_int("dim", dim)
        if num_components > dim:
            raise ValueError(f"separated() places K means on K of the D axes: needs K <= D, got K = "
                             f"{num_components}, D = {dim}")
        distance = _checks.positive_float("distance", distance)
        std = _checks.positive_float("std", std)
        corners = torch.eye(num_components, dim, dtype=torch.float64) * (distance / 2 ** 0.5)
        means = corners - corners.mean(0)
        stds = torch.full((num_components, dim), std, dtype=torch.float64)
        weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
        return cls(means.to(dtype=dtype, device=device), stds.to(dtype=dtype, device=device),
                   weights.to(dtype=dtype, device=device))

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, *args, **kwargs) -> "GaussianMixture":
        """A copy with the parameters moved/cast as ``Tensor.to``."""
        return GaussianMixture(self.means.to(*args, **kwargs), self.stds.to(*args, **kwargs),
                               self.weights.to(*args, **kwargs))

    def sample(self, n: int, generator: Optional[torch.Generator] = None, *,
               return_components: bool = False):
        """n points (n, D) drawn from the mixture (and their component indices when asked).

        Components are drawn with ``torch.multinomial`` then ``mean + std * N(0, 1)``, all
        with ``generator`` (on the parameters' device): reproducible.
        """
        n = _checks.positive_int("n", n)
        _checks.generator(generator, draws_on=self.means.device)
        weights = self.weights.detach()
        component = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        points = self.means[component] + self.stds[component] * noise
        return (points, component) if return_components else points

    def covariance(self) -> Tensor:
        """Sigma = sum_k p_k diag(sigma_k^2) + sum_k p_k (mu_k - mubar)(mu_k - mubar)^T (formulas §7)."""
        offsets = self.means - self.weights @ self.means
        return torch.diag(self.weights @ self.stds.pow(2)) + (offsets.t() * self.weights) @ offsets

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, dtype={self.means.dtype})"


def _mixture_tensor(name: str, value, dims: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() != dims or value.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty {dims}-D tensor, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return value


def _check_prior(prior, z: Tensor) -> GaussianMixture:
    if not isinstance(prior, GaussianMixture):
        raise TypeError(f"prior must be a gaussreg.GaussianMixture, got {type(prior).__name__}")
    if prior.dim != z.shape[1]:
        raise ValueError(f"prior has dimension {prior.dim} but z has D = {z.shape[1]}")
    if prior.means.device != z.device:
        raise ValueError(f"prior is on {prior.means.device} but z is on {z.device}: use prior.to(z.device)")
    return prior


def gmm_ks_loss(z: Tensor, prior: GaussianMixture, *, backend: str = "auto", process_group=None) -> Tensor:
    r"""Squared gap between the empirical and the mixture marginal CDFs at the sample (formulas §7).

    .. math::
        L = \frac{1}{D}\sum_j \frac{1}{n}\sum_i \big(\hat F_j(z_{ij}) - F_j(z_{ij})\big)^2,
        \qquad F_j(v) = \sum_k p_k \Phi\Big(\frac{v - \mu_{kj}}{\sigma_{kj}}\Big)

    with the empirical CDF Fhat_j(v) = #{i : z_ij <= v}/n (ties counted together) held
    constant. Differentiable in z and in the prior's means, stds and weights.

    Args:
        z: points (n, D), n >= 1, float16/bfloat16/float32/float64, CPU or CUDA.
        prior: a ``GaussianMixture`` with dimension D on z's device.
        backend: "auto", "native" or "reference".
        process_group: compute the loss on the global batch of all ranks.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> prior = GaussianMixture.separated(4, 8, distance=5.0)
        >>> z = torch.randn(512, 8, requires_grad=True)
        >>> gaussreg.gmm_ks_loss(z, prior).backward()
    """
    z = _checks.points("z", z, min_rows=1)
    prior = _check_prior(prior, z)
    (z,) = maybe_gather(process_group, z)
    (zc,), device, out_dtype, native = prepare_points(
        "gmm_ks_loss", None, backend, min_rows=1, entry="segmented_counts", need_bytes=_ks_bytes,
        process_group=process_group, z=z)
    means, stds, weights = (t.to(zc.dtype) for t in (prior.means, prior.stds, prior.weights))
    if not native:
        return reference.gmm_ks_loss(zc, means, stds, weights)
    n = zc.shape[0]
    counts = segmented.segment_counts_op(zc.detach().t().contiguous())
    empirical_cdf = counts.t().to(zc.dtype) / n  # (n, D), held constant
    mixture_cdf = _MixtureCdf.apply(zc, means, stds, weights)
    return (empirical_cdf - mixture_cdf).pow(2).mean()


def _ks_bytes(device: torch.device, dtype: torch.dtype, sizes) -> int:
    """The column sort, its int64 counts and the empirical and mixture CDFs (n x D each)."""
    n, d = sizes[0]
    return segmented.plan(device, dtype, d, n).need_bytes + n * d * (8 + 2 * dtype.itemsize)


class _MixtureCdf(torch.autograd.Function):
    """F(z) = sum_k p_k Phi((z - mu_k)/sigma_k) elementwise, one component at a time (O(n D) memory)."""

    @staticmethod
    def forward(ctx, z, means, stds, weights):
        cdf = torch.zeros_like(z)
        for k in range(means.shape[0]):
            cdf += weights[k] * torch.special.ndtr((z - means[k]) / stds[k])
        ctx.save_for_backward(z, means, stds, weights)
        return cdf

    @staticmethod
    def backward(ctx, grad):
        z, means, stds, weights = ctx.saved_tensors
        grad_z = torch.zeros_like(z)
        grad_means, grad_stds = torch.zeros_like(means), torch.zeros_like(stds)
        grad_weights = torch.zeros_like(weights)
        inv_sqrt_2pi = (2 * torch.pi) ** -0.5
        for k in range(means.shape[0]):
            s = (z - means[k]) / stds[k]
            # dF/dz = p_k phi(s) / sigma_k; dF/dmu = -that; dF/dsigma = -that * s
            along_z = grad * (weights[k] * inv_sqrt_2pi / stds[k]) * torch.exp(-0.5 * s * s)
            grad_z += along_z
            grad_means[k] = -along_z.sum(0)
            grad_stds[k] = -(along_z * s).sum(0)
            grad_weights[k] = (grad * torch.special.ndtr(s)).sum()
        return grad_z, grad_means, grad_stds, grad_weights


def gmm_cov_loss(z: Tensor, prior: GaussianMixture, *, process_group=None) -> Tensor:
    r"""Squared gap between the sample covariance and the mixture covariance (formulas §7).

    .. math::
        L = \frac{1}{D^2}\sum_{l,j} (C_{lj} - \Sigma_{lj})^2

    with C the unbiased sample covariance of z and
    Sigma = sum_k p_k diag(sigma_k^2) + sum_k p_k (mu_k - mubar)(mu_k - mubar)^T,
    mubar = sum_k p_k mu_k (the paper's eq. 6 corrected to the weighted mean).

    Args:
        z: points (n, D), n >= 2.
        prior: a ``GaussianMixture`` with dimension D on z's device.
        process_group: compute the loss on the global batch of all ranks.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> prior = GaussianMixture.separated(4, 8, distance=5.0)
        >>> gaussreg.gmm_cov_loss(prior.sample(4096), prior) < 0.05
        tensor(True)
    """
    z = _checks.points("z", z, min_rows=2)
    prior = _check_prior(prior, z)
    (z,) = maybe_gather(process_group, z)
    dtype = _checks.compute_dtype(z)
    if not _checks.compiling():  # from the sizes, before the scan or any copy of z
        engines.check_fits(_cov_bytes(dtype, *z.shape, converts=z.dtype != dtype), z.device, "gmm_cov_loss",
                           "a smaller batch (the loss is O(n D + D^2))")
    _checks.finite("z", z)
    zc = z.to(dtype)
    means, stds, weights = (t.to(dtype) for t in (prior.means, prior.stds, prior.weights))
    return reference.gmm_cov_loss(zc, means, stds, weights)


def _cov_bytes(dtype: torch.dtype, n: int, d: int, converts: bool) -> int:
    """The centered copy of z and its gradient (n D each), z converted when it is, the (D, D) matrices."""
    elem = dtype.itemsize
    return ((3 if converts else 2) * n * d + 4 * d * d) * elem


def gmm_loss_weights(prior: GaussianMixture, n: int, num_batches: int = 16,
                     generator: Optional[torch.Generator] = None) -> Tuple[float, float]:
    """(lambda_ks, lambda_cv): the reciprocals of each loss's mean over prior batches (formulas §7).

    Each loss is averaged over ``num_batches`` batches of n points drawn from the prior;
    its weight 1/mean makes both terms about 1 on samples of the prior itself, so
    ``lambda_ks * gmm_ks_loss + lambda_cv * gmm_cov_loss`` balances them. Reproducible with
    a seeded ``generator``.

    Example:
        >>> prior = GaussianMixture.separated(4, 8, distance=5.0)
        >>> lam_ks, lam_cv = gmm_loss_weights(prior, 256, generator=torch.Generator().manual_seed(0))
    """
    if not isinstance(prior, GaussianMixture):
        raise TypeError(f"prior must be a gaussreg.GaussianMixture, got {type(prior).__name__}")
    n = _checks.positive_int("n", n, minimum=2)  # the covariance needs two points
    num_batches = _checks.positive_int("num_batches", num_batches)
    ks_total = cov_total = 0.0
    with torch.no_grad():
        for _ in range(int(num_batches)):
            batch = prior.sample(n, generator=generator)
            ks_total += float(gmm_ks_loss(batch, prior))
            cov_total += float(gmm_cov_loss(batch, prior))
    ks_mean, cov_mean = ks_total / num_batches, cov_total / num_batches
    if ks_mean <= 0 or cov_mean <= 0:
        warnings.warn("gmm_loss_weights: a loss averaged to 0 on the prior's own samples; its weight is set to 1",
                      RuntimeWarning, stacklevel=2)
    return (1.0 / ks_mean if ks_mean > 0 else 1.0, 1.0 / cov_mean if cov_mean > 0 else 1.0)
