"""Reference implementations of every formula in docs/formulas.md, sections 1-7b.

These are the oracle for the test-suite and the baseline for benchmarks.
They favour being obviously correct over being fast: plain vectorized
PyTorch, full n x n (or n' = n(n-1)/2) intermediates, distances always taken
as explicit differences (never the |a|^2 + |b|^2 - 2ab expansion, which loses
precision for nearby points), and autograd for every gradient.

Every loss returns a 0-dim tensor with the dtype of ``z`` and is
differentiable with respect to every point tensor it takes.  Nothing here
validates inputs beyond what is needed to avoid silently wrong numbers.
"""

import math

import torch

__all__ = [
    "chi2_quantiles",
    "normal_quantiles",
    "Chi2Target",
    "EmpiricalTarget",
    "cdf_attraction",
    "coordinate_cdf_attraction",
    "gaussian_l2_to_normal",
    "gaussian_l2",
    "mean_field_sigma",
    "gaussian_mixture_l2",
    "mmd",
    "Hyp1F1Neg",
    "hyp1f1_neg",
    "cw_distance",
    "sliced_wasserstein",
    "gmm_ks_loss",
    "gmm_cov_loss",
    "epps_pulley",
]


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _pairwise_sq_dists(a, b):
    """||a_i - b_j||^2 for all i, j, from explicit coordinate differences."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


def _hazen_probabilities(m, device=None):
    """(k - 0.5) / m for k = 1..m, in float64."""
    k = torch.arange(1, m + 1, dtype=torch.float64, device=device)
    return (k - 0.5) / m


def _off_diagonal_mean(kernel_matrix):
    """Mean over i != j; the diagonal is zeroed before summing, not subtracted after."""
    n = kernel_matrix.shape[0]
    diagonal = torch.eye(n, dtype=torch.bool, device=kernel_matrix.device)
    return kernel_matrix.masked_fill(diagonal, 0.0).sum() / (n * (n - 1))


def _abs_power(e, p):
    # For p = 1 the abs gradient at 0 is 0, which is the formulas' sgn(0) = 0.
    return e.abs() if p == 1 else e.abs().pow(p)


# ---------------------------------------------------------------------------
# Section 1: quantile targets and CDF attraction
# ---------------------------------------------------------------------------


def chi2_quantiles(m, df, *, device=None, dtype=torch.float64):
    """Q_df((k - 0.5)/m), k = 1..m: chi-squared quantiles at Hazen positions (formulas §1)."""
    import scipy.stats  # lazily: importing this module must stay cheap

    probabilities = _hazen_probabilities(m).numpy()
    values = scipy.stats.chi2.ppf(probabilities, df)
    return torch.as_tensor(values, dtype=torch.float64).to(device=device, dtype=dtype)


def normal_quantiles(m, *, device=None, dtype=torch.float64):
    """Phi^{-1}((k - 0.5)/m), k = 1..m (formulas §2 and 6)."""
    values = torch.special.ndtri(_hazen_probabilities(m, device=device))
    return values.to(dtype=dtype)


class Chi2Target:
    """Chi-squared target distribution with ``df`` degrees of freedom (formulas §1)."""

    def __init__(self, df):
        self.df = df

    def quantiles(self, m, device, dtype):
        return chi2_quantiles(m, self.df, device=device, dtype=dtype)


class EmpiricalTarget:
    """Target given by a reference sample (formulas §1).

    The N sorted values v_(i) sit at probabilities (i - 0.5)/N (Hazen); a
    quantile in between is linearly interpolated, and beyond the first and
    last positions it is the first and last value.
    """

    def __init__(self, values):
        values = torch.as_tensor(values).detach().to(torch.float64).flatten()
        self.sorted_values = torch.sort(values).values

    def quantiles(self, m, device, dtype):
        v = self.sorted_values.to(device)
        count = v.shape[0]
        # Solving (i + 0.5)/N = q for the 0-based index i gives the fractional
        # position of each requested probability among the sorted values.
        position = _hazen_probabilities(m, device=device) * count - 0.5
        position = position.clamp(0.0, count - 1)
        lower = position.floor().long()
        upper = (lower + 1).clamp(max=count - 1)
        fraction = position - lower
        values = v[lower] + fraction * (v[upper] - v[lower])
        return values.to(dtype=dtype)


def _sorted_gap_loss(values, target, p):
    """(1/m) sum_k |values_(k) - target_k|^p with ascending order of the values.

    Sorting by index and gathering makes autograd route each residual's
    gradient back to the point that holds that rank, which is the gradient of formulas §1.
    """
    order = torch.argsort(values.detach())
    sorted_values = values.gather(0, order)
    quantiles = target.quantiles(values.shape[0], values.device, values.dtype)
    return _abs_power(sorted_values - quantiles, p).mean()


def _half_sq_distances_of_pairs(z):
    """d_ij = ||z_i - z_j||^2 / 2 for all i < j (n' = n(n-1)/2 values)."""
    n = z.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=z.device)
    return (z[i] - z[j]).pow(2).sum(-1) / 2


def cdf_attraction(
    z,
    *,
    radii_weight=1.0,
    distances_weight=1.0,
    p=1,
    radii_target=None,
    distances_target=None,
):
    """Attraction of sorted radii and pair distances to target quantiles (formulas §1, Duda eq. 13)."""
    dim = z.shape[1]
    radii_target = Chi2Target(dim) if radii_target is None else radii_target
    distances_target = Chi2Target(dim) if distances_target is None else distances_target

    radii = z.pow(2).sum(-1)
    distances = _half_sq_distances_of_pairs(z)
    radii_term = _sorted_gap_loss(radii, radii_target, p)
    distances_term = _sorted_gap_loss(distances, distances_target, p)
    return radii_weight * radii_term + distances_weight * distances_term


# ---------------------------------------------------------------------------
# Section 2: coordinate-wise CDF attraction
# ---------------------------------------------------------------------------


def _column_ranks(values):
    """0-based rank of each entry within its column (ties in arbitrary order)."""
    return torch.argsort(torch.argsort(values, dim=0), dim=0)


def _coordinate_targets(ranks, n, marginal, bits):
    """Targets t_ij of formulas §2 from integer ranks, in float64."""
    if marginal == "normal":
        return torch.special.ndtri((ranks.to(torch.float64) + 0.5) / n)
    if bits is None:
        return (ranks.to(torch.float64) + 0.5) / n
    # Integer floor division keeps the cell index exact at cell boundaries.
    cell = torch.div(ranks * (2**bits), n, rounding_mode="floor")
    return (cell.to(torch.float64) + 0.5) / 2**bits


def coordinate_cdf_attraction(z, *, marginal="normal", bits=None, p=2):
    """Per-coordinate attraction to rank-based target quantiles (formulas §2, Duda eq. 15)."""
    if marginal not in ("normal", "uniform", "torus"):
        raise ValueError(f"marginal must be 'normal', 'uniform' or 'torus', got {marginal!r}")
    if bits is not None and marginal == "normal":
        raise ValueError("bits is only defined for marginal='uniform' or 'torus'")

    n = z.shape[0]
    on_torus = marginal == "torus"
    wrapped = torch.remainder(z, 1.0) if on_torus else z
    ranks = _column_ranks(wrapped.detach())
    # Targets depend on z only through ranks, so they are held constant.
    targets = _coordinate_targets(ranks, n, marginal, bits).to(z.dtype).detach()

    if on_torus:
        residual = torch.remainder(wrapped - targets + 0.5, 1.0) - 0.5
    else:
        residual = z - targets
    return _abs_power(residual, p).mean()


# ---------------------------------------------------------------------------
# Section 3: L2 distance between Gaussian-smoothed samples
# ---------------------------------------------------------------------------


def _log_mean_field_derivative_sign(u, r_sq, dim):
    """phi(u) with sign(phi) = sign(f'(sigma)) at sigma = sqrt(u).

    f'(sigma) = 2 B G(sigma) sigma (D(1+u) - r^2)/(1+u)^2 - D A sigma^(-D-1)
    with A = (4 pi)^(-D/2), B = (2 pi)^(-D/2), G = exp(-r^2/(2(1+u))) (1+u)^(-D/2).
    Both terms under/overflow for large D, so phi is the log of the ratio of
    the positive term to the negative one (−inf where the positive term is
    not positive).  phi is strictly increasing in u on its domain, so f has a
    single minimum, at the root of phi.
    """
    margin = dim * (1.0 + u) - r_sq
    safe_margin = torch.where(margin > 0, margin, torch.ones_like(margin))
    phi = (
        (1.0 + dim / 2) * math.log(2.0)
        - math.log(dim)
        + (dim / 2 + 1.0) * torch.log(u)
        - (dim / 2 + 2.0) * torch.log1p(u)
        - r_sq / (2.0 * (1.0 + u))
        + torch.log(safe_margin)
    )
    return torch.where(margin > 0, phi, torch.full_like(phi, -math.inf))


def mean_field_sigma(r, dim, approx=False):
    """Bandwidth sigma(r) minimizing formulas §3's f(sigma) (Duda eq. 11); approx gives eq. 12."""
    r64 = r.detach().to(torch.float64)
    if approx:
        return (1.0 + r64.pow(2) / (2.0 * dim)).to(r.dtype)

    r_sq = r64.pow(2)
    # Bisection on u = sigma^2 for the sign change of f'.  Below
    # max(r^2/D - 1, 0) f is decreasing, so that is a valid lower bracket;
    # the upper bracket doubles until f is increasing there (phi -> (1 + D/2)
    # log 2 > 0 as u grows, so this ends).
    lower = torch.clamp(r_sq / dim - 1.0, min=0.0)
    upper = lower + 1.0
    while True:
        # Non-finite radii have no bracket; leave them to yield NaN/inf, not a hang.
        not_yet = (_log_mean_field_derivative_sign(upper, r_sq, dim) <= 0) & torch.isfinite(upper)
        if not bool(not_yet.any()):
            break
        upper = torch.where(not_yet, 2.0 * upper, upper)
    # 200 halvings shrink any bracket below float64 resolution of the root.
    for _ in range(200):
        middle = 0.5 * (lower + upper)
        increasing = _log_mean_field_derivative_sign(middle, r_sq, dim) > 0
        upper = torch.where(increasing, middle, upper)
        lower = torch.where(increasing, lower, middle)
    return torch.sqrt(0.5 * (lower + upper)).to(r.dtype)


def _per_point_sigma(z, sigma):
    n, dim = z.shape
    if isinstance(sigma, str):
        if sigma != "mean_field":
            raise ValueError(f"sigma must be a number, a tensor or 'mean_field', got {sigma!r}")
        # A bandwidth choice, held constant: computed from the detached radii.
        return mean_field_sigma(z.detach().norm(dim=1), dim).detach()
    if isinstance(sigma, torch.Tensor):
        return sigma.to(device=z.device, dtype=z.dtype).expand(n)
    return torch.full((n,), float(sigma), dtype=z.dtype, device=z.device)


def gaussian_l2_to_normal(z, sigma=1.0):
    """S = d_g^2(X, N(0, I)) (4 pi)^{D/2} for per-point bandwidths (formulas §3, Duda eq. 9)."""
    dim = z.shape[1]
    sigma_sq = _per_point_sigma(z, sigma).pow(2)

    pair_variance = sigma_sq[:, None] + sigma_sq[None, :]  # a_ii'
    prior_variance = 1.0 + sigma_sq  # b_i
    # exp(-t/(2a)) (a/2)^(-D/2) taken as one exponential so large D neither
    # overflows nor underflows before the product.
    sample_sample = torch.exp(
        -_pairwise_sq_dists(z, z) / (2.0 * pair_variance)
        - dim / 2 * torch.log(pair_variance / 2.0)
    ).mean()
    sample_prior = torch.exp(
        -z.pow(2).sum(-1) / (2.0 * prior_variance)
        - dim / 2 * torch.log(prior_variance / 2.0)
    ).mean()
    return sample_sample + 1.0 - 2.0 * sample_prior


def gaussian_l2(x, y, sigma=1.0):
    """d_g^2(X, Y) (4 pi sigma^2)^{D/2} between two samples (formulas §3, Duda eq. 7)."""
    scale = 4.0 * sigma**2

    def mean_kernel(a, b):
        return torch.exp(-_pairwise_sq_dists(a, b) / scale).mean()

    return mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y)


def _gaussian_overlaps(means_a, covs_a, means_b, covs_b):
    """d_{mu_a - mu_b, S_a, S_b} of Duda eq. 5 for every component pair: (Ka, Kb)."""
    dim = means_a.shape[1]
    offsets = means_a[:, None, :] - means_b[None, :, :]
    summed_covs = covs_a[:, None, :, :] + covs_b[None, :, :, :]
    solved = torch.linalg.solve(summed_covs, offsets.unsqueeze(-1)).squeeze(-1)
    quadratic = (offsets * solved).sum(-1)
    _, log_det = torch.linalg.slogdet(summed_covs)
    return torch.exp(-0.5 * quadratic - 0.5 * (dim * math.log(2.0 * math.pi) + log_det))


def gaussian_mixture_l2(means_x, covs_x, weights_x, means_y, covs_y, weights_y):
    """Squared L2 distance between two full-covariance Gaussian mixtures (formulas §3, eq. 5)."""

    def cross(means_a, covs_a, weights_a, means_b, covs_b, weights_b):
        overlaps = _gaussian_overlaps(means_a, covs_a, means_b, covs_b)
        return weights_a @ overlaps @ weights_b

    xx = cross(means_x, covs_x, weights_x, means_x, covs_x, weights_x)
    yy = cross(means_y, covs_y, weights_y, means_y, covs_y, weights_y)
    xy = cross(means_x, covs_x, weights_x, means_y, covs_y, weights_y)
    return xx + yy - 2.0 * xy


# ---------------------------------------------------------------------------
# Section 4: WAE-MMD
# ---------------------------------------------------------------------------


def _mmd_kernel(sq_dists, dim, kernel, scales):
    if kernel == "imq":
        return sum((2.0 * dim * s) / (2.0 * dim * s + sq_dists) for s in scales)
    if kernel == "rbf":
        return sum(torch.exp(-sq_dists / (2.0 * dim * s)) for s in scales)
    raise ValueError(f"kernel must be 'imq' or 'rbf', got {kernel!r}")


def _analytic_rbf_prior_terms(z, scales):
    """Closed forms of E_y k(z_i, y) (per i) and E_{y,y'} k(y, y') for y, y' ~ N(0, I)."""
    dim = z.shape[1]
    radii = z.pow(2).sum(-1)
    sample_prior = 0
    prior_prior = 0.0
    for s in scales:
        h_sq = dim * s
        sample_prior = sample_prior + torch.exp(
            dim / 2 * math.log(h_sq / (h_sq + 1.0)) - radii / (2.0 * (h_sq + 1.0))
        )
        prior_prior += math.exp(dim / 2 * math.log(h_sq / (h_sq + 2.0)))
    return sample_prior, prior_prior


def mmd(
    z,
    prior_sample=None,
    *,
    kernel="imq",
    scales=(0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
    generator=None,
):
    """Unbiased MMD^2 between z and a N(0, I) prior (formulas §4, WAE-MMD)."""
    dim = z.shape[1]
    sample_sample = _off_diagonal_mean(_mmd_kernel(_pairwise_sq_dists(z, z), dim, kernel, scales))

    if isinstance(prior_sample, str):
        if prior_sample != "analytic" or kernel != "rbf":
            raise ValueError("prior_sample='analytic' is only defined for kernel='rbf'")
        sample_prior, prior_prior = _analytic_rbf_prior_terms(z, scales)
        return sample_sample + prior_prior - 2.0 * sample_prior.mean()

    if prior_sample is None:
        prior_sample = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    y = prior_sample
    prior_prior = _off_diagonal_mean(_mmd_kernel(_pairwise_sq_dists(y, y), dim, kernel, scales))
    sample_prior = _mmd_kernel(_pairwise_sq_dists(z, y), dim, kernel, scales).mean()
    return sample_sample + prior_prior - 2.0 * sample_prior


# ---------------------------------------------------------------------------
# Section 5: Cramer-Wold distance
# ---------------------------------------------------------------------------


def _hyp1f1_neg_values(a, b, s):
    """1F1(a; b; -s) elementwise by mpmath, computed in float64."""
    import mpmath  # lazily: only the exact CW kernel needs it

    flat = s.detach().to(device="cpu", dtype=torch.float64).flatten().tolist()
    values = [float(mpmath.hyp1f1(a, b, -v)) for v in flat]
    result = torch.tensor(values, dtype=torch.float64).reshape(s.shape)
    return result.to(device=s.device, dtype=s.dtype)


class Hyp1F1Neg(torch.autograd.Function):
    """1F1(a; b; -s) for a tensor s >= 0, differentiable in s.

    d/ds 1F1(a; b; -s) = -(a/b) 1F1(a+1; b+1; -s); the backward is written
    with this same Function, so higher derivatives work too.
    """

    @staticmethod
    def forward(ctx, a, b, s):
        ctx.a, ctx.b = a, b
        ctx.save_for_backward(s)
        return _hyp1f1_neg_values(a, b, s)

    @staticmethod
    def backward(ctx, grad_output):
        (s,) = ctx.saved_tensors
        a, b = ctx.a, ctx.b
        derivative = -(a / b) * Hyp1F1Neg.apply(a + 1.0, b + 1.0, s)
        return None, None, grad_output * derivative


def hyp1f1_neg(a, b, s):
    """Kummer's function 1F1(a; b; -s), elementwise, exact via mpmath (formulas §5 'exact')."""
    return Hyp1F1Neg.apply(float(a), float(b), s)


def _cramer_wold_kernel(s, dim, kernel):
    if kernel == "exact":
        return hyp1f1_neg(0.5, dim / 2, s)
    if kernel == "approx":
        if dim < 2:
            raise ValueError("kernel='approx' needs D >= 2; use kernel='exact'")
        return (1.0 + 4.0 * s / (2.0 * dim - 3.0)).pow(-0.5)
    raise ValueError(f"kernel must be 'approx' or 'exact', got {kernel!r}")


def cw_distance(z, *, gamma=None, kernel="approx", log=False):
    """Squared Cramer-Wold distance of z to N(0, I) (formulas §5, CWAE); log=True gives log(d_cw^2)."""
    n, dim = z.shape
    if gamma is None:
        gamma = (4.0 / (3.0 * n)) ** 0.4  # Silverman's rule

    sample_sample = _cramer_wold_kernel(_pairwise_sq_dists(z, z) / (4.0 * gamma), dim, kernel)
    sample_prior = _cramer_wold_kernel(z.pow(2).sum(-1) / (2.0 + 4.0 * gamma), dim, kernel)
    bracket = (
        sample_sample.sum() / math.sqrt(gamma)
        + n**2 / math.sqrt(1.0 + gamma)
        - (2.0 * n / math.sqrt(gamma + 0.5)) * sample_prior.sum()
    )
    distance = bracket / (2.0 * n**2 * math.sqrt(math.pi))
    return torch.log(distance) if log else distance


# ---------------------------------------------------------------------------
# Sections 6 and 7b: sliced statistics
# ---------------------------------------------------------------------------


def _unit_directions(count, dim, like, generator, directions):
    """Rows of ``directions`` (or standard normal draws) scaled to unit length."""
    if directions is None:
        directions = torch.randn(count, dim, generator=generator, dtype=like.dtype, device=like.device)
    else:
        directions = directions.to(device=like.device, dtype=like.dtype)
    return directions / directions.norm(dim=1, keepdim=True)


def sliced_wasserstein(
    z,
    *,
    num_projections=50,
    p=2,
    prior_sample=None,
    generator=None,
    directions=None,
):
    """Sliced Wasserstein-p^p distance to N(0, I) or to a prior sample (formulas §6, SWAE)."""
    n, dim = z.shape
    theta = _unit_directions(num_projections, dim, z, generator, directions)
    projections = torch.sort(z @ theta.T, dim=0).values  # (n, L), sorted per direction
    if prior_sample is None:
        targets = normal_quantiles(n, device=z.device, dtype=z.dtype)[:, None]
    else:
        targets = torch.sort(prior_sample @ theta.T, dim=0).values
    return _abs_power(projections - targets, p).mean()


def epps_pulley(
    z,
    *,
    num_slices=256,
    t_max=3.0,
    num_points=17,
    generator=None,
    directions=None,
):
    """Sliced Epps-Pulley statistic (SIGReg of LeJEPA), trapezoid rule on [-T, T] (formulas §7b)."""
    n, dim = z.shape
    slices = _unit_directions(num_slices, dim, z, generator, directions)
    projections = z @ slices.T  # u_il, (n, S)

    k = torch.arange(num_points, dtype=z.dtype, device=z.device)
    step = t_max / (num_points - 1)
    knots = k * step
    normal_cf = torch.exp(-knots.pow(2) / 2)
    is_end = (k == 0) | (k == num_points - 1)
    weights = 2.0 * step * normal_cf * torch.where(is_end, 0.5, 1.0).to(z.dtype)

    phases = knots[:, None, None] * projections[None, :, :]  # (K, n, S)
    cos_mean = torch.cos(phases).mean(1)  # (K, S)
    sin_mean = torch.sin(phases).mean(1)
    squared_gap = (cos_mean - normal_cf[:, None]).pow(2) + sin_mean.pow(2)
    per_slice = n * (weights[:, None] * squared_gap).sum(0)
    return per_slice.mean()


# ---------------------------------------------------------------------------
# Section 7: Gaussian-mixture prior (GMM-DAE)
# ---------------------------------------------------------------------------


def gmm_ks_loss(z, means, stds, weights):
    """Squared gap between empirical and mixture marginal CDFs at the samples (formulas §7)."""
    n = z.shape[0]
    columns = z.detach().T.contiguous()  # (D, n)
    sorted_columns = torch.sort(columns, dim=1).values
    # #{i' : z_i'j <= z_ij}: counts ties, and is held constant.
    at_or_below = torch.searchsorted(sorted_columns, columns, right=True)
    empirical_cdf = (at_or_below.T.to(z.dtype) / n).detach()

    standardized = (z[:, None, :] - means[None, :, :]) / stds[None, :, :]  # (n, K, D)
    mixture_cdf = (weights[None, :, None] * torch.special.ndtr(standardized)).sum(1)
    return (empirical_cdf - mixture_cdf).pow(2).mean()


def gmm_cov_loss(z, means, stds, weights):
    """Squared gap between the unbiased sample covariance and the mixture covariance (formulas §7)."""
    n = z.shape[0]
    centered = z - z.mean(0)
    sample_cov = centered.T @ centered / (n - 1)

    weighted_mean = weights @ means
    offsets = means - weighted_mean
    mixture_cov = torch.diag(weights @ stds.pow(2)) + (offsets.T * weights) @ offsets
    return (sample_cov - mixture_cov).pow(2).mean()
