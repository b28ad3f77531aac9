"""sliced_wasserstein (SPEC 6, SWAE) against gaussreg.reference and scipy's 1-D Wasserstein distance.

Sections as in DESIGN.md "Tests", then the textbook formula, determinism and the
behavioural test (minimizing the loss alone moves a uniform sample toward N(0, I)).
"""
import numpy as np
import pytest
import scipy.stats
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.testing import LAYOUTS, random_points

from _helpers import (FLOAT_DTYPES, assert_close, check_compiled_matches_eager, check_cuda_parity, check_layout,
                      check_repeatable, check_thread_independent, compare_with_reference, half_precision_check)

SHAPES = [(n, L) for n in (2, 3, 100, 1000) for L in (1, 2, 50)]


def _directions(count, d, seed=0):
    return random_points(count, d, seed=100 + seed)


# ---------------------------------------------------------------- (1) vs the reference


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("with_prior", [False, True], ids=["normal-quantiles", "prior-sample"])
@pytest.mark.parametrize("n,L", SHAPES, ids=[f"n{n}-L{L}" for n, L in SHAPES])
def test_matches_reference_float64(p, with_prior, n, L):
    d = 5
    theta = _directions(L, d, seed=n)
    z = random_points(n, d, seed=n + L, scale=1.3)
    if with_prior:
        prior = random_points(n, d, seed=n + L + 1)
        compare_with_reference(lambda a, b: gaussreg.sliced_wasserstein(a, p=p, prior_sample=b, directions=theta),
                               lambda a, b: ref.sliced_wasserstein(a, p=p, prior_sample=b, directions=theta),
                               [z, prior], rtol=1e-12, atol=1e-15, what=f"p={p} with prior")
    else:
        compare_with_reference(lambda a: gaussreg.sliced_wasserstein(a, p=p, directions=theta),
                               lambda a: ref.sliced_wasserstein(a, p=p, directions=theta),
                               [z], rtol=1e-12, atol=1e-15, what=f"p={p}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_random_directions_are_drawn_like_the_reference(dtype):
    z = random_points(200, 7, seed=2, dtype=dtype)
    got = gaussreg.sliced_wasserstein(z, num_projections=33, generator=torch.Generator().manual_seed(5))
    want = ref.sliced_wasserstein(z, num_projections=33, generator=torch.Generator().manual_seed(5))
    assert_close(got, want, 1e-5 if dtype == torch.float32 else 1e-12, 0, what="value with a seeded generator")


# ---------------------------------------------------------------- the textbook formula


@pytest.mark.parametrize("n", [2, 17, 500])
def test_prior_sample_p1_equals_scipy_wasserstein_of_projections(n):
    """With a prior sample and p = 1, each direction's term is the 1-D Wasserstein-1
    distance between the two projected samples (scipy.stats.wasserstein_distance)."""
    d, L = 4, 6
    theta = _directions(L, d, seed=1)
    z, y = random_points(n, d, seed=3, scale=2.0), random_points(n, d, seed=4)
    got = float(gaussreg.sliced_wasserstein(z, p=1, prior_sample=y, directions=theta))
    unit = (theta / theta.norm(dim=1, keepdim=True)).numpy()
    want = np.mean([scipy.stats.wasserstein_distance(z.numpy() @ u, y.numpy() @ u) for u in unit])
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))


def test_one_dimension_p2_is_the_mean_squared_gap_of_sorted_samples():
    z = torch.tensor([[3.0], [-1.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0], [-2.0]], dtype=torch.float64)
    got = float(gaussreg.sliced_wasserstein(z, p=2, prior_sample=y, directions=torch.ones(1, 1, dtype=torch.float64)))
    assert got == pytest.approx(((-1 + 2) ** 2 + (0.5 - 0) ** 2 + (3 - 2) ** 2) / 3, rel=1e-15)


def test_default_targets_are_normal_quantiles():
    n = 9
    quantiles = torch.tensor(scipy.stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n))
    z = quantiles[torch.randperm(n, generator=torch.Generator().manual_seed(0))][:, None]
    assert float(gaussreg.sliced_wasserstein(z, directions=torch.ones(1, 1, dtype=torch.float64))) < 1e-28


# ---------------------------------------------------------------- (2)-(4)


def test_gradcheck_p2():
    theta = _directions(3, 3)
    z = random_points(6, 3, seed=1).requires_grad_(True)
    y = random_points(6, 3, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gaussreg.sliced_wasserstein(a, prior_sample=b, directions=theta),
                                    (z, y), eps=1e-7, atol=1e-8)


def test_float32_close_to_float64():
    theta = _directions(64, 16)
    z = random_points(4000, 16, seed=3)
    v64 = gaussreg.sliced_wasserstein(z, directions=theta)
    v32 = gaussreg.sliced_wasserstein(z.float(), directions=theta.float())
    assert_close(v32, v64, 1e-5, 1e-8, what="float32 vs float64")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    theta = _directions(8, 5)
    check_layout(lambda z: gaussreg.sliced_wasserstein(z, p=1, directions=theta), [random_points(60, 5, seed=2)],
                 layout)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(half):
    theta = _directions(8, 4).float()
    half_precision_check(lambda z: gaussreg.sliced_wasserstein(z, directions=theta), [random_points(64, 4)], half)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", [1, 2])
def test_cuda_matches_cpu(dtype, p):
    theta = _directions(50, 20)
    if dtype == torch.float32:
        # Signed coordinate axes: projections exact on both devices. Random directions make
        # cuBLAS and the CPU round float32 projections differently, and near-tied ones then
        # swap ranks, which moves the p = 2 gradient by far more than rounding.
        axes = torch.arange(50)
        theta = torch.eye(20, dtype=torch.float64)[axes % 20] * torch.where(axes % 3 == 0, -1.0, 1.0).double()[:, None]
    check_cuda_parity(lambda z, y: gaussreg.sliced_wasserstein(z, p=p, prior_sample=y, directions=theta.to(z)),
                      [random_points(1000, 20, seed=1), random_points(1000, 20, seed=2)], dtype, value_floor=1e-3)


# ---------------------------------------------------------------- (6) errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(p=0), ValueError, "p must be 1 or 2"),
    (dict(num_projections=0), ValueError, "num_projections must be a positive int"),
    (dict(prior_sample=torch.randn(9, 3)), ValueError, "as many points"),
    (dict(prior_sample=torch.randn(10, 4)), ValueError, "same dimension"),
    (dict(directions=torch.randn(5, 4)), ValueError, "directions must have shape"),
    (dict(directions=torch.zeros(2, 3)), ValueError, "zero row"),
    (dict(directions=torch.tensor([[float("nan"), 0.0, 1.0]])), ValueError, "NaN or Inf"),
    (dict(generator=1), TypeError, "torch.Generator"),
])
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussreg.sliced_wasserstein(torch.randn(10, 3), **kwargs)


# ---------------------------------------------------------------- (8) compile, determinism, module


def test_compile_fullgraph_matches_eager():
    theta = _directions(16, 6).float()
    check_compiled_matches_eager(lambda z: gaussreg.sliced_wasserstein(z, p=1, directions=theta),
                                 random_points(300, 6, seed=7, dtype=torch.float32))


def test_repeatable_and_thread_independent(restore_threads):
    theta = _directions(40, 10).float()
    fn = lambda z: gaussreg.sliced_wasserstein(z, directions=theta)  # noqa: E731
    z = random_points(3000, 10, seed=1, dtype=torch.float32)
    check_repeatable(fn, [z])
    check_thread_independent(fn, [z])


def test_module_matches_functional():
    z = random_points(50, 3, seed=6)
    got = gaussreg.nn.SlicedWasserstein(num_projections=7, generator=torch.Generator().manual_seed(1))(z)
    want = gaussreg.sliced_wasserstein(z, num_projections=7, generator=torch.Generator().manual_seed(1))
    assert float(got) == float(want)


# ---------------------------------------------------------------- behaviour


def _mean_projection_ks(z, directions):
    unit = directions / directions.norm(dim=1, keepdim=True)
    return float(np.mean([scipy.stats.kstest((z @ u).numpy(), "norm").statistic for u in unit]))


def test_minimizing_sliced_wasserstein_moves_a_uniform_sample_to_normal():
    n, d = 256, 8
    check = random_points(20, d, seed=99)  # fixed test directions, independent of training's
    null = [_mean_projection_ks(random_points(n, d, seed=1000 + s), check) for s in range(50)]
    threshold = float(np.quantile(null, 0.95))
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    before = _mean_projection_ks(z.detach(), check)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        gaussreg.sliced_wasserstein(z, num_projections=64, generator=g).backward()
        opt.step()
    after = _mean_projection_ks(z.detach(), check)
    assert before > threshold, (before, threshold)
    assert after < threshold, f"mean KS of projections {after:.4f} >= N(0, I)'s 95th percentile {threshold:.4f}"
