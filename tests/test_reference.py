"""Checks of gaussreg.reference against SPEC.md.

Each reference function is compared with an independent float64 brute-force
computation that spells out SPEC's sums with Python loops, ``math``, numpy,
scipy or mpmath on tiny inputs, and its gradient with finite differences
(``torch.autograd.gradcheck``) or with SPEC's analytic gradient.
"""

import math
import statistics

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import torch

import gaussreg.reference as ref

SEEDS = (0, 1, 2)
SIZES = ((2, 1), (3, 2), (4, 3), (5, 4), (6, 2))  # (n, D)
NORMAL = statistics.NormalDist()


# ---------------------------------------------------------------------------
# Helpers: inputs and brute-force building blocks
# ---------------------------------------------------------------------------


def random_points(n, dim, seed, scale=1.0, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return points * scale + shift


def rows(tensor):
    return tensor.detach().tolist()


def sq_norm(a):
    return sum(v * v for v in a)


def sq_dist(a, b):
    return sum((u - v) ** 2 for u, v in zip(a, b))


def dot(a, b):
    return sum(u * v for u, v in zip(a, b))


def chi2_quantile(probability, df):
    # Inverse of the survival function: a different scipy route from chi2.ppf.
    return float(scipy.special.chdtri(df, 1.0 - probability))


def hazen(k, m):
    return (k - 0.5) / m


def assert_scalar_close(actual, expected, rel=1e-10, abs_=1e-12):
    assert actual.dim() == 0
    assert actual.item() == pytest.approx(expected, rel=rel, abs=abs_)


def gradcheck(function, *inputs):
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# Section 1: quantile targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 7.5])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_chi2_quantiles_invert_chi2_cdf(m, df):
    quantiles = ref.chi2_quantiles(m, df)
    assert quantiles.dtype == torch.float64 and quantiles.shape == (m,)
    for k, q in enumerate(quantiles.tolist(), start=1):
        # chi2_df CDF is the regularized lower incomplete gamma P(df/2, q/2).
        assert scipy.special.gammainc(df / 2, q / 2) == pytest.approx(hazen(k, m), rel=1e-10)


@pytest.mark.parametrize("m", [1, 3, 10])
def test_chi2_quantiles_closed_form_for_two_degrees_of_freedom(m):
    quantiles = ref.chi2_quantiles(m, 2).tolist()
    expected = [-2.0 * math.log(1.0 - hazen(k, m)) for k in range(1, m + 1)]
    assert quantiles == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chi2_target_quantiles_match_scipy(dtype):
    import scipy.stats

    values = ref.Chi2Target(4).quantiles(7, torch.device("cpu"), dtype)
    assert values.dtype == dtype
    expected = scipy.stats.chi2.ppf([hazen(k, 7) for k in range(1, 8)], 4)
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("m", [1, 2, 9, 50])
def test_normal_quantiles_invert_normal_cdf(m):
    quantiles = ref.normal_quantiles(m).tolist()
    for k, q in enumerate(quantiles, start=1):
        assert NORMAL.cdf(q) == pytest.approx(hazen(k, m), rel=1e-12, abs=1e-15)
    assert quantiles == sorted(quantiles)


@pytest.mark.parametrize(
    "m, expected",
    [
        (1, [2.5]),
        (2, [1.5, 6.5]),
        (4, [1.0, 2.0, 3.0, 10.0]),
        (8, [1.0, 1.25, 1.75, 2.25, 2.75, 4.75, 8.25, 10.0]),
    ],
)
def test_empirical_target_interpolates_at_hand_computed_points(m, expected):
    # Sorted values 1, 2, 3, 10 sit at probabilities 1/8, 3/8, 5/8, 7/8.
    target = ref.EmpiricalTarget(torch.tensor([3.0, 1.0, 10.0, 2.0]))
    values = target.quantiles(m, torch.device("cpu"), torch.float64)
    assert values.tolist() == pytest.approx(expected, rel=1e-14)


def test_empirical_target_with_one_value_is_constant():
    values = ref.EmpiricalTarget([4.5]).quantiles(5, torch.device("cpu"), torch.float32)
    assert values.dtype == torch.float32
    assert values.tolist() == [4.5] * 5


@pytest.mark.parametrize("seed", SEEDS)
def test_empirical_target_matches_numpy_interp(seed):
    rng = np.random.default_rng(seed)
    sample = rng.exponential(size=11)
    m = int(rng.integers(1, 30))
    positions = [(i - 0.5) / 11 for i in range(1, 12)]
    expected = np.interp([hazen(k, m) for k in range(1, m + 1)], positions, np.sort(sample))
    values = ref.EmpiricalTarget(sample).quantiles(m, torch.device("cpu"), torch.float64)
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-13)


# ---------------------------------------------------------------------------
# Section 1: CDF attraction
# ---------------------------------------------------------------------------


def radii_and_distances(points):
    radii = [sq_norm(p) for p in points]
    distances = [
        sq_dist(points[i], points[j]) / 2
        for i in range(len(points))
        for j in range(i + 1, len(points))
    ]
    return radii, distances


def brute_sorted_gap(values, quantile, p):
    ordered = sorted(values)
    m = len(ordered)
    return sum(abs(v - quantile(hazen(k, m))) ** p for k, v in enumerate(ordered, start=1)) / m


def brute_cdf_attraction(points, p, radii_weight, distances_weight, radii_quantile, distances_quantile):
    radii, distances = radii_and_distances(points)
    return radii_weight * brute_sorted_gap(radii, radii_quantile, p) + distances_weight * brute_sorted_gap(
        distances, distances_quantile, p
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0)])
def test_cdf_attraction_matches_brute_force(seed, n, dim, p, weights):
    z = random_points(n, dim, seed, scale=1.3)
    chi2 = lambda probability: chi2_quantile(probability, dim)  # noqa: E731
    expected = brute_cdf_attraction(rows(z), p, *weights, chi2, chi2)
    actual = ref.cdf_attraction(z, radii_weight=weights[0], distances_weight=weights[1], p=p)
    assert_scalar_close(actual, expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [1, 2])
def test_cdf_attraction_with_empirical_targets(seed, p):
    rng = np.random.default_rng(seed)
    radii_sample = np.sort(rng.gamma(2.0, size=9))
    distance_sample = np.sort(rng.gamma(3.0, size=13))

    def interpolator(sample):
        positions = [(i - 0.5) / len(sample) for i in range(1, len(sample) + 1)]
        return lambda probability: float(np.interp(probability, positions, sample))

    z = random_points(5, 3, seed)
    expected = brute_cdf_attraction(
        rows(z), p, 1.0, 1.0, interpolator(radii_sample), interpolator(distance_sample)
    )
    actual = ref.cdf_attraction(
        z,
        p=p,
        radii_target=ref.EmpiricalTarget(radii_sample),
        distances_target=ref.EmpiricalTarget(distance_sample),
    )
    assert_scalar_close(actual, expected)


def spec_cdf_attraction_gradient(points, p, radii_weight, distances_weight):
    """SPEC 1's analytic gradient, written out with ranks found by counting."""
    n, dim = len(points), len(points[0])
    radii, distances = radii_and_distances(points)
    pair_distance = {}
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for (i, j), d in zip(pairs, distances):
        pair_distance[i, j] = pair_distance[j, i] = d

    def residual(value, values):
        rank = sum(1 for v in values if v < value) + 1  # no ties in random data
        return value - chi2_quantile(hazen(rank, len(values)), dim)

    def slope(e):
        if p == 1:
            return (e > 0) - (e < 0)
        return 2 * e

    gradient = []
    for i in range(n):
        radius_factor = radii_weight * (2 / n) * slope(residual(radii[i], radii))
        row = [radius_factor * points[i][c] for c in range(dim)]
        for j in range(n):
            if j == i:
                continue
            factor = distances_weight / len(pairs) * slope(residual(pair_distance[i, j], distances))
            for c in range(dim):
                row[c] += factor * (points[i][c] - points[j][c])
        gradient.append(row)
    return gradient


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", [(2, 1), (3, 2), (5, 3), (6, 4)])
@pytest.mark.parametrize("p", [1, 2])
def test_cdf_attraction_gradient_is_spec_gradient(seed, n, dim, p):
    z = random_points(n, dim, seed).requires_grad_(True)
    ref.cdf_attraction(z, radii_weight=0.7, distances_weight=1.9, p=p).backward()
    expected = spec_cdf_attraction_gradient(rows(z), p, 0.7, 1.9)
    np.testing.assert_allclose(z.grad.numpy(), np.array(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_cdf_attraction_gradcheck_p2(seed):
    gradcheck(lambda z: ref.cdf_attraction(z, p=2, distances_weight=0.5), random_points(5, 3, seed))


# ---------------------------------------------------------------------------
# Section 2: coordinate-wise CDF attraction
# ---------------------------------------------------------------------------


def brute_coordinate_attraction(points, marginal, bits, p):
    n, dim = len(points), len(points[0])
    total = 0.0
    for j in range(dim):
        column = [points[i][j] for i in range(n)]
        if marginal == "torus":
            column = [v % 1.0 for v in column]
        for i in range(n):
            rank = sum(1 for v in column if v < column[i])  # 0-based, no ties
            if marginal == "normal":
                target = NORMAL.inv_cdf((rank + 0.5) / n)
            elif bits is None:
                target = (rank + 0.5) / n
            else:
                target = 2.0**-bits * (math.floor(2**bits * rank / n) + 0.5)
            if marginal == "torus":
                error = ((column[i] - target + 0.5) % 1.0) - 0.5
            else:
                error = points[i][j] - target
            total += abs(error) ** p
    return total / (n * dim)


COORDINATE_CASES = [
    ("normal", None),
    ("uniform", None),
    ("uniform", 1),
    ("uniform", 3),
    ("torus", None),
    ("torus", 2),
]


def coordinate_inputs(n, dim, seed, marginal):
    if marginal == "normal":
        return random_points(n, dim, seed, scale=1.5)
    if marginal == "uniform":
        return random_points(n, dim, seed, scale=0.3, shift=0.5)
    return random_points(n, dim, seed, scale=2.0)  # spans several unit cells


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("marginal, bits", COORDINATE_CASES)
@pytest.mark.parametrize("p", [1, 2])
def test_coordinate_cdf_attraction_matches_brute_force(seed, n, dim, marginal, bits, p):
    z = coordinate_inputs(n, dim, seed, marginal)
    expected = brute_coordinate_attraction(rows(z), marginal, bits, p)
    actual = ref.coordinate_cdf_attraction(z, marginal=marginal, bits=bits, p=p)
    assert_scalar_close(actual, expected)


@pytest.mark.parametrize("marginal, bits", COORDINATE_CASES)
def test_coordinate_cdf_attraction_gradcheck(marginal, bits):
    # Small perturbations keep the ranks, so finite differences see the
    # held-constant-target gradient that SPEC asks for.
    z = coordinate_inputs(6, 3, 5, marginal)
    gradcheck(lambda t: ref.coordinate_cdf_attraction(t, marginal=marginal, bits=bits, p=2), z)


def test_coordinate_cdf_attraction_torus_wraps_residual_by_hand():
    # w = (0.01, 0.02) (the second from -1.98 mod 1); targets 0.25, 0.75;
    # residuals -0.24 and 0.02 - 0.75 = -0.73, which wraps to +0.27.
    z = torch.tensor([[0.01], [-1.98]], dtype=torch.float64)
    expected = (0.24**2 + 0.27**2) / 2
    assert_scalar_close(ref.coordinate_cdf_attraction(z, marginal="torus", p=2), expected)
    z.requires_grad_(True)
    ref.coordinate_cdf_attraction(z, marginal="torus", p=2).backward()
    assert z.grad.flatten().tolist() == pytest.approx([-0.24, 0.27], rel=1e-10)


def test_coordinate_cdf_attraction_rejects_bits_for_normal():
    with pytest.raises(ValueError):
        ref.coordinate_cdf_attraction(random_points(4, 2, 0), marginal="normal", bits=2)


# ---------------------------------------------------------------------------
# Section 3: Gaussian-smoothed L2
# ---------------------------------------------------------------------------


def brute_l2_to_normal(points, sigmas):
    n, dim = len(points), len(points[0])
    sample_sample = 0.0
    for i in range(n):
        for k in range(n):
            a = sigmas[i] ** 2 + sigmas[k] ** 2
            sample_sample += math.exp(-sq_dist(points[i], points[k]) / (2 * a)) * (a / 2) ** (-dim / 2)
    sample_prior = 0.0
    for i in range(n):
        b = 1 + sigmas[i] ** 2
        sample_prior += math.exp(-sq_norm(points[i]) / (2 * b)) * (b / 2) ** (-dim / 2)
    return sample_sample / n**2 + 1 - 2 * sample_prior / n


def brute_eq10(points):
    n = len(points)
    pair_sum = sum(
        math.exp(-sq_dist(points[i], points[k]) / 4) for i in range(n) for k in range(i + 1, n)
    )
    radius_sum = sum(math.exp(-sq_norm(p) / 4) for p in points)
    return 1 + 1 / n + 2 / n**2 * pair_sum - 2 / n * radius_sum


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
def test_gaussian_l2_to_normal_matches_brute_force(seed, n, dim, sigma):
    z = random_points(n, dim, seed)
    expected = brute_l2_to_normal(rows(z), [sigma] * n)
    assert_scalar_close(ref.gaussian_l2_to_normal(z, sigma), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
def test_gaussian_l2_to_normal_per_point_sigma(seed, n, dim):
    z = random_points(n, dim, seed)
    sigmas = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.3
    expected = brute_l2_to_normal(rows(z), sigmas.tolist())
    assert_scalar_close(ref.gaussian_l2_to_normal(z, sigmas), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
def test_gaussian_l2_to_normal_sigma_one_is_eq10(seed, n, dim):
    z = random_points(n, dim, seed)
    assert_scalar_close(ref.gaussian_l2_to_normal(z, 1.0), brute_eq10(rows(z)))


def mean_field_objective(sigma, radius, dim):
    """SPEC 3's f(sigma), evaluated in mpmath so no power under/overflows."""
    sigma, radius = mpmath.mpf(sigma), mpmath.mpf(radius)
    widened = 1 + sigma**2
    return (
        (4 * mpmath.pi * sigma**2) ** (-mpmath.mpf(dim) / 2)
        + (4 * mpmath.pi) ** (-mpmath.mpf(dim) / 2)
        - 2 * mpmath.exp(-(radius**2) / (2 * widened)) * (2 * mpmath.pi * widened) ** (-mpmath.mpf(dim) / 2)
    )


def stationary_mean_field_sigma(radius, dim):
    """Root of f'(sigma) found by mpmath from f itself (f has one stationary point)."""

    def slope(sigma):
        with mpmath.workdps(30):
            return float(mpmath.diff(lambda t: mean_field_objective(t, radius, dim), sigma))

    # f decreases near 0 and increases beyond sigma^2 = 1 + r^2: a bracket.
    return scipy.optimize.brentq(slope, 0.2, 2.0 + radius**2, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", [(2, 1), (4, 2), (5, 3)])
def test_gaussian_l2_to_normal_mean_field(seed, n, dim):
    z = random_points(n, dim, seed)
    sigmas = [stationary_mean_field_sigma(math.sqrt(sq_norm(p)), dim) for p in rows(z)]
    expected = brute_l2_to_normal(rows(z), sigmas)
    assert_scalar_close(ref.gaussian_l2_to_normal(z, "mean_field"), expected, rel=1e-7)


def test_gaussian_l2_to_normal_mean_field_sigma_is_held_constant():
    z = random_points(4, 3, 0).requires_grad_(True)
    ref.gaussian_l2_to_normal(z, "mean_field").backward()
    sigmas = ref.mean_field_sigma(z.detach().norm(dim=1), 3)
    fixed = z.detach().clone().requires_grad_(True)
    ref.gaussian_l2_to_normal(fixed, sigmas).backward()
    np.testing.assert_allclose(z.grad.numpy(), fixed.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dim, sigma", [(600, 0.8), (1000, 0.9), (2000, 1.3)])
def test_gaussian_l2_to_normal_large_dimension_matches_mpmath(dim, sigma):
    z = random_points(3, dim, 4, scale=0.2)
    with mpmath.workdps(40):
        sigma_mp = mpmath.mpf(sigma)
        total = mpmath.mpf(0)
        points = rows(z)
        for i in range(3):
            for k in range(3):
                a = 2 * sigma_mp**2
                total += mpmath.exp(-mpmath.mpf(sq_dist(points[i], points[k])) / (2 * a)) * (a / 2) ** (-dim / 2)
        b = 1 + sigma_mp**2
        prior = sum(mpmath.exp(-mpmath.mpf(sq_norm(p)) / (2 * b)) * (b / 2) ** (-dim / 2) for p in points)
        expected = float(total / 9 + 1 - 2 * prior / 3)
    actual = ref.gaussian_l2_to_normal(z, sigma)
    assert torch.isfinite(actual)
    assert_scalar_close(actual, expected, rel=1e-9)


@pytest.mark.parametrize("sigma", [1.0, 0.7, "per_point"])
def test_gaussian_l2_to_normal_gradcheck(sigma):
    # "mean_field" is left out: its bandwidth is held constant, which finite
    # differences cannot see (test_..._mean_field_sigma_is_held_constant covers it).
    if sigma == "per_point":
        sigma = torch.tensor([0.6, 1.0, 1.4, 2.0], dtype=torch.float64)
    gradcheck(lambda z: ref.gaussian_l2_to_normal(z, sigma), random_points(4, 3, 1))


def brute_gaussian_l2(xs, ys, sigma):
    def mean_kernel(a, b):
        return sum(math.exp(-sq_dist(u, v) / (4 * sigma**2)) for u in a for v in b) / (len(a) * len(b))

    return mean_kernel(xs, xs) + mean_kernel(ys, ys) - 2 * mean_kernel(xs, ys)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m, dim", [(2, 3, 1), (4, 2, 2), (5, 6, 4)])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_l2_matches_brute_force(seed, n, m, dim, sigma):
    x = random_points(n, dim, seed)
    y = random_points(m, dim, seed + 100, scale=1.5, shift=0.3)
    assert_scalar_close(ref.gaussian_l2(x, y, sigma), brute_gaussian_l2(rows(x), rows(y), sigma))


def test_gaussian_l2_gradcheck():
    gradcheck(lambda x, y: ref.gaussian_l2(x, y, 0.8), random_points(3, 2, 0), random_points(4, 2, 1))


# ---------------------------------------------------------------------------
# Section 3: mean-field bandwidth
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 10, 100, 1000])
def test_mean_field_sigma_at_zero_radius_is_one(dim):
    sigma = ref.mean_field_sigma(torch.zeros(3, dtype=torch.float64), dim)
    np.testing.assert_allclose(sigma.numpy(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 5, 20, 500, 5000])
@pytest.mark.parametrize("radius", [0.3, 1.0, 2.5, 6.0, 40.0])
def test_mean_field_sigma_is_a_minimizer(dim, radius):
    sigma = ref.mean_field_sigma(torch.tensor([radius], dtype=torch.float64), dim).item()
    with mpmath.workdps(50):
        at_sigma = mean_field_objective(sigma, radius, dim)
        assert at_sigma <= mean_field_objective(sigma * (1 + 1e-3), radius, dim)
        assert at_sigma <= mean_field_objective(sigma * (1 - 1e-3), radius, dim)
        # f' at sigma, relative to the size of f's first term's derivative.
        slope = mpmath.diff(lambda s: mean_field_objective(s, radius, dim), sigma)
        scale = dim * (4 * mpmath.pi * mpmath.mpf(sigma) ** 2) ** (-mpmath.mpf(dim) / 2) / sigma
        assert abs(slope / scale) < 1e-9


@pytest.mark.parametrize("dim", [1, 2, 4])
@pytest.mark.parametrize("radius", [0.5, 1.7, 3.0])
def test_mean_field_sigma_matches_mpmath_stationary_point(dim, radius):
    sigma = ref.mean_field_sigma(torch.tensor([radius], dtype=torch.float64), dim).item()
    assert sigma == pytest.approx(stationary_mean_field_sigma(radius, dim), rel=1e-12)


@pytest.mark.parametrize("dim", [1, 3, 64])
def test_mean_field_sigma_approx_is_eq12(dim):
    radii = torch.tensor([0.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    expected = [1 + r * r / (2 * dim) for r in radii.tolist()]
    assert ref.mean_field_sigma(radii, dim, approx=True).tolist() == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("approx", [False, True])
def test_mean_field_sigma_keeps_dtype(approx):
    radii = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float32)
    sigma = ref.mean_field_sigma(radii, 5, approx=approx)
    assert sigma.dtype == torch.float32 and sigma.shape == (3,)


# ---------------------------------------------------------------------------
# Section 3: Gaussian mixtures
# ---------------------------------------------------------------------------


def random_mixture(k, dim, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, dim))
    factors = rng.normal(size=(k, dim, dim)) * 0.5
    covs = factors @ factors.transpose(0, 2, 1) + 0.3 * np.eye(dim)
    weights = rng.random(k) + 0.2
    weights /= weights.sum()
    return [torch.tensor(a, dtype=torch.float64) for a in (means, covs, weights)]


def brute_mixture_l2(mixture_x, mixture_y):
    def overlap(mu, cov):
        dim = len(mu)
        quadratic = float(mu @ np.linalg.inv(cov) @ mu)
        return math.exp(-quadratic / 2) / math.sqrt((2 * math.pi) ** dim * np.linalg.det(cov))

    def cross(a, b):
        (means_a, covs_a, weights_a), (means_b, covs_b, weights_b) = a, b
        total = 0.0
        for i in range(len(weights_a)):
            for j in range(len(weights_b)):
                total += weights_a[i] * weights_b[j] * overlap(means_a[i] - means_b[j], covs_a[i] + covs_b[j])
        return total

    x = [t.numpy() for t in mixture_x]
    y = [t.numpy() for t in mixture_y]
    return cross(x, x) + cross(y, y) - 2 * cross(x, y)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kx, ky, dim", [(1, 1, 1), (2, 3, 2), (3, 2, 4)])
def test_gaussian_mixture_l2_matches_brute_force(seed, kx, ky, dim):
    mixture_x = random_mixture(kx, dim, seed)
    mixture_y = random_mixture(ky, dim, seed + 50)
    actual = ref.gaussian_mixture_l2(*mixture_x, *mixture_y)
    assert_scalar_close(actual, brute_mixture_l2(mixture_x, mixture_y))


def test_gaussian_mixture_l2_is_integral_of_squared_difference_in_1d():
    mixture_x = random_mixture(2, 1, 7)
    mixture_y = random_mixture(3, 1, 8)

    def density(mixture, v):
        means, covs, weights = (t.numpy() for t in mixture)
        return sum(
            w * math.exp(-((v - m[0]) ** 2) / (2 * c[0, 0])) / math.sqrt(2 * math.pi * c[0, 0])
            for m, c, w in zip(means, covs, weights)
        )

    integral, _ = scipy.integrate.quad(
        lambda v: (density(mixture_x, v) - density(mixture_y, v)) ** 2, -30, 30, limit=200
    )
    assert_scalar_close(ref.gaussian_mixture_l2(*mixture_x, *mixture_y), integral, rel=1e-8)


def test_gaussian_mixture_l2_gradcheck():
    gradcheck(ref.gaussian_mixture_l2, *random_mixture(2, 2, 3), *random_mixture(2, 2, 4))


# ---------------------------------------------------------------------------
# Section 4: MMD
# ---------------------------------------------------------------------------

SCALE_SETS = [(0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0), (0.7,), (0.3, 3.0)]


def brute_kernel(a, b, dim, kernel, scales):
    d = sq_dist(a, b)
    if kernel == "imq":
        return sum(2 * dim * s / (2 * dim * s + d) for s in scales)
    return sum(math.exp(-d / (2 * dim * s)) for s in scales)


def brute_mmd(zs, ys, kernel, scales):
    n, m, dim = len(zs), len(ys), len(zs[0])
    k = lambda a, b: brute_kernel(a, b, dim, kernel, scales)  # noqa: E731
    zz = sum(k(zs[i], zs[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    zy = sum(k(a, b) for a in zs for b in ys) / (n * m)
    return zz + yy - 2 * zy


def brute_analytic_rbf_mmd(zs, scales):
    n, dim = len(zs), len(zs[0])
    zz = sum(
        brute_kernel(zs[i], zs[j], dim, "rbf", scales) for i in range(n) for j in range(n) if i != j
    ) / (n * (n - 1))
    yy = sum((dim * s / (dim * s + 2)) ** (dim / 2) for s in scales)
    zy = sum(
        (dim * s / (dim * s + 1)) ** (dim / 2) * math.exp(-sq_norm(z) / (2 * (dim * s + 1)))
        for s in scales
        for z in zs
    ) / n
    return zz + yy - 2 * zy


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m, dim", [(2, 2, 1), (3, 5, 2), (6, 4, 3), (4, 4, 4)])
@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("scales", SCALE_SETS)
def test_mmd_matches_brute_force(seed, n, m, dim, kernel, scales):
    z = random_points(n, dim, seed, scale=1.2, shift=0.2)
    y = random_points(m, dim, seed + 100)
    actual = ref.mmd(z, y, kernel=kernel, scales=scales)
    assert_scalar_close(actual, brute_mmd(rows(z), rows(y), kernel, scales))


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_keeps_pairs_of_coincident_distinct_points(kernel):
    # Rows 0 and 2 coincide: the pair (0, 2) has distance 0 but i != j, so it counts.
    z = torch.tensor([[0.1, 0.2], [1.0, -0.5], [0.1, 0.2]], dtype=torch.float64)
    y = torch.tensor([[0.3, 0.3], [-0.4, 0.9], [0.3, 0.3]], dtype=torch.float64)
    assert_scalar_close(ref.mmd(z, y, kernel=kernel), brute_mmd(rows(z), rows(y), kernel, SCALE_SETS[0]))


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_default_prior_sample_is_randn_from_generator(kernel):
    z = random_points(5, 3, 0)
    drawn = torch.randn(z.shape, generator=torch.Generator().manual_seed(11), dtype=z.dtype)
    expected = brute_mmd(rows(z), rows(drawn), kernel, SCALE_SETS[0])
    actual = ref.mmd(z, kernel=kernel, generator=torch.Generator().manual_seed(11))
    assert_scalar_close(actual, expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("scales", SCALE_SETS)
def test_mmd_analytic_rbf_matches_brute_force(seed, n, dim, scales):
    z = random_points(n, dim, seed, scale=1.4)
    actual = ref.mmd(z, "analytic", kernel="rbf", scales=scales)
    assert_scalar_close(actual, brute_analytic_rbf_mmd(rows(z), scales))


@pytest.mark.parametrize("dim", [1, 3])
def test_mmd_analytic_rbf_matches_monte_carlo(dim):
    scales = (0.2, 1.0, 4.0)
    z = random_points(3, dim, 9, scale=1.5, shift=0.5)
    zs = z.numpy()
    rng = np.random.default_rng(1234)
    samples, partners = rng.normal(size=(2, 200_000, dim))

    def rbf(sq_dists):
        return sum(np.exp(-sq_dists / (2 * dim * s)) for s in scales)

    prior_prior = rbf(((samples - partners) ** 2).sum(1))
    sample_prior = np.stack([rbf(((samples - point) ** 2).sum(1)) for point in zs]).mean(0)
    points = rows(z)
    zz = sum(
        brute_kernel(points[i], points[j], dim, "rbf", scales) for i in range(3) for j in range(3) if i != j
    ) / 6
    estimate_terms = prior_prior - 2 * sample_prior
    estimate = zz + estimate_terms.mean()
    standard_error = estimate_terms.std() / math.sqrt(len(estimate_terms))
    actual = ref.mmd(z, "analytic", kernel="rbf", scales=scales).item()
    assert abs(actual - estimate) < 5 * standard_error


def test_mmd_analytic_rejects_imq():
    with pytest.raises(ValueError):
        ref.mmd(random_points(3, 2, 0), "analytic", kernel="imq")


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_gradcheck(kernel):
    gradcheck(
        lambda z, y: ref.mmd(z, y, kernel=kernel, scales=(0.5, 2.0)),
        random_points(4, 2, 0),
        random_points(3, 2, 1),
    )


def test_mmd_analytic_gradcheck():
    gradcheck(lambda z: ref.mmd(z, "analytic", kernel="rbf", scales=(0.5, 2.0)), random_points(4, 3, 2))


# ---------------------------------------------------------------------------
# Section 5: Kummer's function and the Cramer-Wold distance
# ---------------------------------------------------------------------------



def kummer_arguments():
    return torch.tensor([0.0, 1e-8, 0.3, 1.0, 4.5, 30.0, 700.0], dtype=torch.float64)


@pytest.mark.parametrize("a", [0.5, 1.5, 3.0])
def test_hyp1f1_neg_with_equal_parameters_is_exponential(a):
    values = ref.hyp1f1_neg(a, a, kummer_arguments())
    expected = [math.exp(-s) for s in kummer_arguments().tolist()]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-13, atol=0)


def test_hyp1f1_neg_half_three_halves_is_error_function():
    values = ref.hyp1f1_neg(0.5, 1.5, kummer_arguments()).tolist()
    expected = [1.0] + [
        math.sqrt(math.pi) / 2 * math.erf(math.sqrt(s)) / math.sqrt(s) for s in kummer_arguments().tolist()[1:]
    ]
    assert values == pytest.approx(expected, rel=1e-13)


def test_hyp1f1_neg_derivative_of_exponential_case():
    s = kummer_arguments()[:-1].clone().requires_grad_(True)
    ref.hyp1f1_neg(2.0, 2.0, s).sum().backward()
    np.testing.assert_allclose(s.grad.numpy(), -np.exp(-s.detach().numpy()), rtol=1e-13)


def test_hyp1f1_neg_gradcheck_and_second_derivative():
    s = torch.tensor([0.2, 1.3, 5.0], dtype=torch.float64, requires_grad=True)
    function = lambda t: ref.hyp1f1_neg(0.5, 2.5, t)  # noqa: E731
    assert torch.autograd.gradcheck(function, (s,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(function, (s,), eps=1e-6, atol=1e-7)


def test_hyp1f1_neg_keeps_dtype_and_shape():
    s = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float32)
    values = ref.hyp1f1_neg(0.5, 1.0, s)
    assert values.dtype == torch.float32 and values.shape == (2, 2)


def brute_cramer_wold(points, gamma, kernel):
    n, dim = len(points), len(points[0])

    def phi(s):
        if kernel == "exact":
            return float(scipy.special.hyp1f1(0.5, dim / 2, -s))
        return (1 + 4 * s / (2 * dim - 3)) ** -0.5

    pair_sum = sum(phi(sq_dist(a, b) / (4 * gamma)) for a in points for b in points)
    radius_sum = sum(phi(sq_norm(a) / (2 + 4 * gamma)) for a in points)
    bracket = pair_sum / math.sqrt(gamma) + n**2 / math.sqrt(1 + gamma) - 2 * n / math.sqrt(gamma + 0.5) * radius_sum
    return bracket / (2 * n**2 * math.sqrt(math.pi))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", [(2, 2), (3, 3), (5, 4), (6, 2)])
@pytest.mark.parametrize("gamma", [None, 0.3])
def test_cw_distance_approx_matches_brute_force(seed, n, dim, gamma):
    z = random_points(n, dim, seed)
    expected_gamma = (4 / (3 * n)) ** 0.4 if gamma is None else gamma
    expected = brute_cramer_wold(rows(z), expected_gamma, "approx")
    assert_scalar_close(ref.cw_distance(z, gamma=gamma), expected)
    assert_scalar_close(ref.cw_distance(z, gamma=gamma, log=True), math.log(expected))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", [(2, 1), (3, 2), (4, 3), (5, 4)])
@pytest.mark.parametrize("gamma", [None, 0.5])
def test_cw_distance_exact_matches_brute_force(seed, n, dim, gamma):
    z = random_points(n, dim, seed, scale=1.5)
    expected_gamma = (4 / (3 * n)) ** 0.4 if gamma is None else gamma
    expected = brute_cramer_wold(rows(z), expected_gamma, "exact")
    assert_scalar_close(ref.cw_distance(z, gamma=gamma, kernel="exact"), expected, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_cw_distance_exact_in_one_dimension_uses_exponential_kernel(seed):
    # phi_1(s) = 1F1(1/2; 1/2; -s) = exp(-s).
    points = rows(random_points(4, 1, seed))
    gamma = (4 / (3 * 4)) ** 0.4
    pair_sum = sum(math.exp(-sq_dist(a, b) / (4 * gamma)) for a in points for b in points)
    radius_sum = sum(math.exp(-sq_norm(a) / (2 + 4 * gamma)) for a in points)
    bracket = pair_sum / math.sqrt(gamma) + 16 / math.sqrt(1 + gamma) - 8 / math.sqrt(gamma + 0.5) * radius_sum
    expected = bracket / (2 * 16 * math.sqrt(math.pi))
    assert_scalar_close(ref.cw_distance(torch.tensor(points, dtype=torch.float64), kernel="exact"), expected)


def test_cw_distance_approx_rejects_one_dimension():
    with pytest.raises(ValueError):
        ref.cw_distance(random_points(4, 1, 0))


@pytest.mark.parametrize("kernel", ["approx", "exact"])
@pytest.mark.parametrize("log", [False, True])
def test_cw_distance_gradcheck(kernel, log):
    gradcheck(lambda z: ref.cw_distance(z, kernel=kernel, log=log), random_points(3, 2, 6))


# ---------------------------------------------------------------------------
# Section 6: sliced Wasserstein
# ---------------------------------------------------------------------------


def brute_sliced_wasserstein(points, directions, p, prior_points=None):
    n = len(points)
    total = 0.0
    for theta in directions:
        length = math.sqrt(sq_norm(theta))
        unit = [c / length for c in theta]
        projected = sorted(dot(z, unit) for z in points)
        if prior_points is None:
            targets = [NORMAL.inv_cdf(hazen(i, n)) for i in range(1, n + 1)]
        else:
            targets = sorted(dot(y, unit) for y in prior_points)
        total += sum(abs(u - v) ** p for u, v in zip(projected, targets)) / n
    return total / len(directions)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("with_prior", [False, True])
def test_sliced_wasserstein_matches_brute_force(seed, n, dim, p, with_prior):
    z = random_points(n, dim, seed, scale=1.3, shift=0.2)
    directions = random_points(4, dim, seed + 10, scale=3.0)  # not unit: the function normalizes
    prior = random_points(n, dim, seed + 20) if with_prior else None
    expected = brute_sliced_wasserstein(rows(z), rows(directions), p, None if prior is None else rows(prior))
    actual = ref.sliced_wasserstein(z, p=p, prior_sample=prior, directions=directions)
    assert_scalar_close(actual, expected)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_default_directions_are_randn_from_generator(p):
    z = random_points(5, 3, 0)
    drawn = torch.randn(7, 3, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    expected = brute_sliced_wasserstein(rows(z), rows(drawn), p)
    actual = ref.sliced_wasserstein(z, num_projections=7, p=p, generator=torch.Generator().manual_seed(3))
    assert_scalar_close(actual, expected)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_gradcheck(p):
    directions = random_points(3, 2, 8)
    gradcheck(
        lambda z, y: ref.sliced_wasserstein(z, p=p, prior_sample=y, directions=directions),
        random_points(4, 2, 0),
        random_points(4, 2, 1),
    )
    gradcheck(lambda z: ref.sliced_wasserstein(z, p=p, directions=directions), random_points(4, 2, 2))


# ---------------------------------------------------------------------------
# Section 7: Gaussian-mixture prior losses
# ---------------------------------------------------------------------------


def random_diagonal_mixture(k, dim, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, dim))
    stds = rng.random((k, dim)) + 0.4
    weights = rng.random(k) + 0.2
    weights /= weights.sum()
    return [torch.tensor(a, dtype=torch.float64) for a in (means, stds, weights)]


def brute_gmm_ks(points, means, stds, weights):
    n, dim = len(points), len(points[0])
    total = 0.0
    for j in range(dim):
        column = [points[i][j] for i in range(n)]
        for v in column:
            empirical = sum(1 for u in column if u <= v) / n
            mixture = sum(
                w * 0.5 * (1 + math.erf((v - mu[j]) / (sd[j] * math.sqrt(2))))
                for mu, sd, w in zip(means, stds, weights)
            )
            total += (empirical - mixture) ** 2
    return total / (n * dim)


def brute_gmm_cov(points, means, stds, weights):
    n, dim, k = len(points), len(points[0]), len(weights)
    column_means = [sum(p[j] for p in points) / n for j in range(dim)]
    mixture_mean = [sum(weights[c] * means[c][j] for c in range(k)) for j in range(dim)]
    total = 0.0
    for l in range(dim):
        for j in range(dim):
            sample = sum((p[l] - column_means[l]) * (p[j] - column_means[j]) for p in points) / (n - 1)
            prior = sum(
                weights[c] * (means[c][l] - mixture_mean[l]) * (means[c][j] - mixture_mean[j]) for c in range(k)
            )
            if l == j:
                prior += sum(weights[c] * stds[c][j] ** 2 for c in range(k))
            total += (sample - prior) ** 2
    return total / dim**2


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("k", [1, 3])
def test_gmm_losses_match_brute_force(seed, n, dim, k):
    z = random_points(n, dim, seed, scale=1.5)
    mixture = random_diagonal_mixture(k, dim, seed + 30)
    plain = [t.tolist() for t in mixture]
    assert_scalar_close(ref.gmm_ks_loss(z, *mixture), brute_gmm_ks(rows(z), *plain))
    assert_scalar_close(ref.gmm_cov_loss(z, *mixture), brute_gmm_cov(rows(z), *plain))


def test_gmm_ks_loss_counts_ties():
    z = torch.tensor([[0.5, 1.0], [0.5, -1.0], [-0.2, 1.0], [0.5, 0.0]], dtype=torch.float64)
    mixture = random_diagonal_mixture(2, 2, 0)
    expected = brute_gmm_ks(rows(z), *[t.tolist() for t in mixture])
    assert_scalar_close(ref.gmm_ks_loss(z, *mixture), expected)


def test_gmm_losses_gradcheck():
    # The empirical CDF is piecewise constant, so finite differences agree
    # with the gradient that holds it constant.
    z = random_points(5, 2, 3)
    mixture = random_diagonal_mixture(2, 2, 4)
    gradcheck(ref.gmm_ks_loss, z, *mixture)
    gradcheck(ref.gmm_cov_loss, z, *mixture)


# ---------------------------------------------------------------------------
# Section 7b: sliced Epps-Pulley
# ---------------------------------------------------------------------------


def brute_epps_pulley(points, directions, t_max, num_points):
    n = len(points)
    step = t_max / (num_points - 1)
    total = 0.0
    for a in directions:
        length = math.sqrt(sq_norm(a))
        projected = [dot(z, a) / length for z in points]
        statistic = 0.0
        for k in range(num_points):
            t = k * step
            weight = 2 * step * math.exp(-t * t / 2)
            if k in (0, num_points - 1):
                weight /= 2
            cos_mean = sum(math.cos(t * u) for u in projected) / n
            sin_mean = sum(math.sin(t * u) for u in projected) / n
            statistic += weight * ((cos_mean - math.exp(-t * t / 2)) ** 2 + sin_mean**2)
        total += n * statistic
    return total / len(directions)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, dim", SIZES)
@pytest.mark.parametrize("t_max, num_points", [(3.0, 17), (2.0, 2), (5.0, 6)])
def test_epps_pulley_matches_direct_loop(seed, n, dim, t_max, num_points):
    z = random_points(n, dim, seed, scale=1.2, shift=0.1)
    directions = random_points(5, dim, seed + 40, scale=2.0)
    expected = brute_epps_pulley(rows(z), rows(directions), t_max, num_points)
    actual = ref.epps_pulley(z, t_max=t_max, num_points=num_points, directions=directions)
    assert_scalar_close(actual, expected)


def test_epps_pulley_default_directions_are_randn_from_generator():
    z = random_points(6, 3, 1)
    drawn = torch.randn(9, 3, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
    expected = brute_epps_pulley(rows(z), rows(drawn), 3.0, 17)
    actual = ref.epps_pulley(z, num_slices=9, generator=torch.Generator().manual_seed(5))
    assert_scalar_close(actual, expected)


def test_epps_pulley_gradcheck():
    directions = random_points(4, 3, 2)
    gradcheck(lambda z: ref.epps_pulley(z, num_points=7, directions=directions), random_points(5, 3, 0))


# ---------------------------------------------------------------------------
# All losses: 0-dim results in z's dtype, finite gradients
# ---------------------------------------------------------------------------

LOSSES = {
    "cdf_attraction": lambda z: ref.cdf_attraction(z),
    "coordinate_cdf_attraction": lambda z: ref.coordinate_cdf_attraction(z, marginal="torus", bits=2),
    "gaussian_l2_to_normal": lambda z: ref.gaussian_l2_to_normal(z, "mean_field"),
    "gaussian_l2": lambda z: ref.gaussian_l2(z, z.flip(0) + 0.5),
    "mmd": lambda z: ref.mmd(z, random_points(5, 3, 1).to(z.dtype)),
    "mmd_analytic": lambda z: ref.mmd(z, "analytic", kernel="rbf"),
    "cw_distance": lambda z: ref.cw_distance(z, log=True),
    "cw_distance_exact": lambda z: ref.cw_distance(z, kernel="exact"),
    "sliced_wasserstein": lambda z: ref.sliced_wasserstein(z, directions=random_points(8, 3, 2)),
    "epps_pulley": lambda z: ref.epps_pulley(z, directions=random_points(8, 3, 3)),
    "gmm_ks_loss": lambda z: ref.gmm_ks_loss(z, *[t.to(z.dtype) for t in random_diagonal_mixture(2, 3, 0)]),
    "gmm_cov_loss": lambda z: ref.gmm_cov_loss(z, *[t.to(z.dtype) for t in random_diagonal_mixture(2, 3, 0)]),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_return_scalar_of_input_dtype_with_finite_gradient(name, dtype):
    z = random_points(6, 3, 0).to(dtype).requires_grad_(True)
    value = LOSSES[name](z)
    assert value.dim() == 0 and value.dtype == dtype
    value.backward()
    assert z.grad.dtype == dtype and bool(torch.isfinite(z.grad).all())
    assert float(z.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_agree_between_float32_and_float64(name):
    z = random_points(6, 3, 0)
    single = LOSSES[name](z.to(torch.float32)).item()
    double = LOSSES[name](z).item()
    assert single == pytest.approx(double, rel=1e-4, abs=1e-5)
