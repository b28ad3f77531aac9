"""GMM-prior losses (SPEC 7): GaussianMixture, gmm_ks_loss, gmm_cov_loss, gmm_loss_weights.

gmm_ks_loss against gaussreg.reference (value and gradients in z and in the prior's
parameters, with ties), the mixture covariance against the moments of a large sample and
an independent moment computation, reproducibility, errors, CUDA parity.
"""
import pytest
import torch

import gaussreg
from gaussreg import GaussianMixture
from gaussreg import reference as ref
from gaussreg.testing import random_points

from _helpers import FLOAT_DTYPES, assert_close, check_cuda_parity, compare_with_reference

SHAPES = [(n, d) for n in (2, 3, 100, 1000) for d in (1, 2, 50)]


def _mixture_params(k, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    stds = 0.3 + torch.rand(k, d, generator=g, dtype=torch.float64)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    return means.to(dtype), stds.to(dtype), (weights / weights.sum()).to(dtype)


@pytest.mark.parametrize("n,d", SHAPES, ids=[f"n{n}-D{d}" for n, d in SHAPES])
def test_ks_loss_matches_reference_in_z_and_parameters(n, d):
    z = random_points(n, d, seed=n + d, scale=2.0)
    params = list(_mixture_params(3, d, seed=d))
    compare_with_reference(lambda a, m, s, w: gaussreg.gmm_ks_loss(a, GaussianMixture(m, s, w)),
                           lambda a, m, s, w: ref.gmm_ks_loss(a, m, s, w),
                           [z] + params, rtol=1e-11, atol=1e-15, what="gmm_ks_loss")


def test_ks_loss_second_derivatives_in_z_and_a_learnable_prior():
    """The mixture CDF's backward is made of differentiable torch ops: gradgradcheck holds in z
    and in the prior's parameters (means, log-stds, weight logits), as when the prior is learned."""
    means, stds, weights = _mixture_params(2, 3, seed=6)
    leaves = [random_points(12, 3, seed=5, scale=2.0), means, stds.log(), weights.log()]

    def loss(a, m, log_s, logits):
        return gaussreg.gmm_ks_loss(a, GaussianMixture(m, log_s.exp(), logits.softmax(0)))

    assert torch.autograd.gradgradcheck(loss, [t.clone().requires_grad_() for t in leaves], eps=1e-6, atol=1e-6)


def test_ks_loss_counts_ties_together():
    z = torch.randint(-2, 3, (200, 4), generator=torch.Generator().manual_seed(0)).double()
    z[:30, 0] = -0.0
    params = list(_mixture_params(2, 4))
    compare_with_reference(lambda a: gaussreg.gmm_ks_loss(a, GaussianMixture(*params)),
                           lambda a: ref.gmm_ks_loss(a, *params), [z], rtol=1e-12, atol=1e-15, what="ties")


@pytest.mark.parametrize("n,d", [(2, 1), (100, 2), (1000, 50)])
def test_cov_loss_matches_reference(n, d):
    z = random_points(n, d, seed=1)
    params = list(_mixture_params(4, d, seed=2))
    compare_with_reference(lambda a, m, s, w: gaussreg.gmm_cov_loss(a, GaussianMixture(m, s, w)),
                           lambda a, m, s, w: ref.gmm_cov_loss(a, m, s, w),
                           [z] + params, rtol=1e-12, atol=1e-15, what="gmm_cov_loss")


def test_covariance_equals_the_mixture_moments():
    """Sigma = E[x x^T] - E[x] E[x]^T, with E[x x^T] = sum_k p_k (diag sigma_k^2 + mu_k mu_k^T)."""
    means, stds, weights = _mixture_params(5, 6, seed=3)
    second = sum(w * (torch.diag(s ** 2) + torch.outer(m, m)) for m, s, w in zip(means, stds, weights))
    first = (weights[:, None] * means).sum(0)
    assert_close(GaussianMixture(means, stds, weights).covariance(), second - torch.outer(first, first), 1e-13, 1e-14,
                 what="covariance")


def test_sample_covariance_converges_to_sigma():
    prior = GaussianMixture(*_mixture_params(4, 3, seed=4))
    x = prior.sample(400_000, generator=torch.Generator().manual_seed(1))
    sample_cov = torch.cov(x.t())
    sigma = prior.covariance()
    # Standard error of a covariance entry ~ sqrt((S_ll S_jj + S_lj^2) / n); 6 of them is a loose bound.
    se = ((torch.outer(sigma.diag(), sigma.diag()) + sigma ** 2) / x.shape[0]).sqrt()
    assert bool(((sample_cov - sigma).abs() < 6 * se).all()), (sample_cov - sigma) / se
    assert float(gaussreg.gmm_cov_loss(x, prior)) < 1e-3


def test_sample_frequencies_follow_the_weights_and_are_reproducible():
    prior = GaussianMixture(*_mixture_params(3, 2, seed=5))
    x1, c1 = prior.sample(60_000, generator=torch.Generator().manual_seed(7), return_components=True)
    x2 = prior.sample(60_000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2)
    freq = torch.bincount(c1, minlength=3).double() / 60_000
    assert_close(freq, prior.weights, 0, 0.01, what="component frequencies")


def test_separated_places_means_at_the_distance():
    prior = GaussianMixture.separated(5, 8, distance=6.0, dtype=torch.float64)
    dists = torch.cdist(prior.means, prior.means)
    off = dists[~torch.eye(5, dtype=torch.bool)]
    assert_close(off, torch.full_like(off, 6.0), 1e-14, 0, what="pairwise distances")
    assert_close(prior.means.mean(0), torch.zeros(8, dtype=torch.float64), 0, 1e-14, what="centred")


def test_samples_of_the_prior_score_low():
    prior = GaussianMixture.separated(4, 5, distance=5.0, dtype=torch.float64)
    x = prior.sample(3000, generator=torch.Generator().manual_seed(2))
    assert float(gaussreg.gmm_ks_loss(x, prior)) < 2e-4  # ~ 1/(6n) for the prior's own sample
    assert float(gaussreg.gmm_ks_loss(torch.randn(3000, 5, dtype=torch.float64), prior)) > 1e-3


def test_loss_weights_are_reproducible_and_balance_the_terms():
    prior = GaussianMixture.separated(3, 4, distance=4.0)
    a = gaussreg.gmm_loss_weights(prior, 256, num_batches=8, generator=torch.Generator().manual_seed(3))
    b = gaussreg.gmm_loss_weights(prior, 256, num_batches=8, generator=torch.Generator().manual_seed(3))
    assert a == b and a[0] > 0 and a[1] > 0
    x = prior.sample(256, generator=torch.Generator().manual_seed(11))
    assert 0.2 < a[0] * float(gaussreg.gmm_ks_loss(x, prior)) < 5
    assert 0.2 < a[1] * float(gaussreg.gmm_cov_loss(x, prior)) < 5


@pytest.mark.parametrize("make,error,match", [
    (lambda m, s, w: GaussianMixture(m, s[:2], w), ValueError, "stds must have the shape of means"),
    (lambda m, s, w: GaussianMixture(m, s, w[:2]), ValueError, r"weights must have shape \(3,\)"),
    (lambda m, s, w: GaussianMixture(m, -s, w), ValueError, "stds must be positive"),
    (lambda m, s, w: GaussianMixture(m, s, w * 2), ValueError, "weights must sum to 1"),
    (lambda m, s, w: GaussianMixture(m, s, w - w.max()), ValueError, "non-negative"),
    (lambda m, s, w: GaussianMixture(m[0], s, w), ValueError, "means must be a non-empty 2-D"),
    (lambda m, s, w: GaussianMixture(m.long(), s, w), TypeError, "floating"),
    (lambda m, s, w: GaussianMixture.separated(5, 3), ValueError, "K <= D"),
    (lambda m, s, w: gaussreg.gmm_ks_loss(torch.randn(10, 5), GaussianMixture(m, s, w)), ValueError,
     "dimension 4 but z has D = 5"),
    (lambda m, s, w: gaussreg.gmm_ks_loss(torch.randn(10, 4), (m, s, w)), TypeError, "GaussianMixture"),
    (lambda m, s, w: gaussreg.gmm_cov_loss(torch.randn(1, 4), GaussianMixture(m, s, w)), ValueError,
     "at least 2 points"),
    (lambda m, s, w: gaussreg.gmm_loss_weights(GaussianMixture(m, s, w), 1), ValueError, "n must be an int >= 2"),
])
def test_bad_inputs_raise(make, error, match):
    with pytest.raises(error, match=match):
        make(*_mixture_params(3, 4))


def test_compile_fullgraph_of_the_modules():
    prior = GaussianMixture.separated(3, 4)
    reg = gaussreg.nn.Regularizer(ks=(1.0, gaussreg.nn.GMMKS(prior)), cov=(0.5, gaussreg.nn.GMMCov(prior)))
    z = random_points(200, 4, seed=1, dtype=torch.float32)
    eager = reg(z)[0]
    got = torch.compile(lambda a: reg(a)[0], fullgraph=True)(z)
    assert_close(got, eager, 1e-6, 1e-9, what="compiled Regularizer of GMM losses")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_matches_cpu(dtype):
    params = _mixture_params(3, 20)
    check_cuda_parity(lambda z: gaussreg.gmm_ks_loss(z, GaussianMixture(*(p.to(z) for p in params))),
                      [random_points(1000, 20, seed=1)], dtype, value_floor=1e-3)


def test_docstring_examples_of_the_segmented_losses_run():
    import doctest

    from gaussreg.losses import coordinate_cdf_attraction, epps_pulley, gmm, sliced_wasserstein

    for module in (coordinate_cdf_attraction, epps_pulley, gmm, sliced_wasserstein):
        results = doctest.testmod(module, extraglobs={"torch": torch, "gaussreg": gaussreg})
        assert results.attempted > 0 and results.failed == 0, module.__name__
