"""epps_pulley (SPEC 7b, SIGReg) against gaussreg.reference, and the reference against the
formula written out with Python loops.

Sections as in DESIGN.md "Tests", then the moments op against direct sums, the global
statistic from summed moments, determinism and the null behaviour.
"""
import math

import numpy as np

import pytest
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.losses import epps_pulley as ep
from gaussreg.testing import LAYOUTS, random_points

from _helpers import (FLOAT_DTYPES, assert_close, check_compiled_matches_eager, check_cuda_parity, check_layout,
                      check_repeatable, check_thread_independent, compare_with_reference, half_precision_check)

SHAPES = [(n, s) for n in (1, 2, 3, 100, 1000) for s in (1, 2, 50)]


def _directions(count, d, seed=0):
    return random_points(count, d, seed=200 + seed)


def _loop_statistic(z, directions, t_max, num_points):
    """SPEC 7b literally, in Python floats: trapezoid weights, cos/sin means, n, mean over slices."""
    rows = [[float(v) for v in row] for row in z]
    unit = [[float(v) for v in a] for a in directions / directions.norm(dim=1, keepdim=True)]
    delta = t_max / (num_points - 1)
    total = 0.0
    for a in unit:
        u = [sum(x * y for x, y in zip(row, a)) for row in rows]
        ep_l = 0.0
        for k in range(num_points):
            t = k * delta
            w = 2 * delta * math.exp(-t * t / 2) * (0.5 if k in (0, num_points - 1) else 1.0)
            c = sum(math.cos(t * v) for v in u) / len(u)
            s = sum(math.sin(t * v) for v in u) / len(u)
            ep_l += w * ((c - math.exp(-t * t / 2)) ** 2 + s ** 2)
        total += len(u) * ep_l
    return total / len(unit)


@pytest.mark.parametrize("t_max,num_points", [(3.0, 17), (1.5, 2), (5.0, 5)])
def test_reference_matches_the_formula_literally(t_max, num_points):
    z, theta = random_points(7, 3, seed=1, scale=1.5), _directions(4, 3)
    want = _loop_statistic(z, theta, t_max, num_points)
    got = float(ref.epps_pulley(z, t_max=t_max, num_points=num_points, directions=theta))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def _long_double_value_and_gradient(z, directions, t_max, num_points):
    """SPEC 7b and its gradient in z in numpy's long double (64-bit mantissa on x86): cos/sin of
    the phases t_k u_il rounded 2048 times finer than in float64."""
    unit = directions.numpy().astype(np.longdouble)
    unit /= np.sqrt((unit * unit).sum(1, keepdims=True))
    u = z.numpy().astype(np.longdouble) @ unit.T  # (n, S)
    n = u.shape[0]
    k = np.arange(num_points)
    knots = k.astype(np.longdouble) * (np.longdouble(t_max) / (num_points - 1))
    normal_cf = np.exp(-knots * knots / 2)
    weights = 2 * knots[1] * normal_cf * np.where((k == 0) | (k == num_points - 1), 0.5, 1.0).astype(np.longdouble)
    phases = knots[:, None, None] * u[None]  # (K, n, S)
    cos_gap = np.cos(phases).mean(1) - normal_cf[:, None]  # (K, S)
    sin_mean = np.sin(phases).mean(1)
    value = n * (weights[:, None] * (cos_gap ** 2 + sin_mean ** 2)).sum(0).mean()
    d_u = 2 * (weights[:, None, None] * knots[:, None, None]
               * (sin_mean[:, None, :] * np.cos(phases) - cos_gap[:, None, :] * np.sin(phases))).sum(0)
    return value, (d_u / u.shape[1]) @ unit


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="long double is no wider than double here")
@pytest.mark.parametrize("scale,d", [(1.0, 3), (1e3, 3), (1e6, 3), (1e6, 1)])
def test_engine_within_the_conditioning_at_huge_phases(scale, d):
    """Phases t_k u up to ~1e7 rad: float64 rounds u (and t_k u) to ~eps |u|, so no float64
    evaluation can be closer to the exact statistic than about eps t_max max|u| per term. The
    engine (one sincos per projection, then rotations, which could accumulate error over the
    knots) stays within 4 times that of a long double evaluation, value and gradient.
    (The long hypothesis search found torch's float64 reference 5e-11 off at |z| = 1.5e6, D = 1,
    where the engine was 2e-13 off.)"""
    z = random_points(6, d, seed=7, scale=scale)
    theta = _directions(5, d)
    want_value, want_grad = _long_double_value_and_gradient(z, theta, 3.0, 17)
    bound = 4 * torch.finfo(torch.float64).eps * 3.0 * float((z @ theta.T).abs().max()) + 1e-14
    z = z.clone().requires_grad_()
    value = gaussreg.epps_pulley(z, directions=theta, backend="native")
    value.backward()
    assert abs(float(value.detach()) - float(want_value)) <= bound * max(1.0, abs(float(want_value)))
    assert float((z.grad - torch.from_numpy(want_grad.astype(np.float64))).abs().max()) <= bound


@pytest.mark.parametrize("num_points", [2, 17])
@pytest.mark.parametrize("n,S", SHAPES, ids=[f"n{n}-S{s}" for n, s in SHAPES])
def test_matches_reference_float64(num_points, n, S):
    theta = _directions(S, 6, seed=n)
    z = random_points(n, 6, seed=n + S, scale=1.4)
    compare_with_reference(lambda a: gaussreg.epps_pulley(a, num_points=num_points, directions=theta),
                           lambda a: ref.epps_pulley(a, num_points=num_points, directions=theta),
                           [z], rtol=1e-10, atol=1e-13, what=f"K={num_points}")


def test_random_directions_are_drawn_like_the_reference():
    z = random_points(300, 9, seed=3)
    got = gaussreg.epps_pulley(z, num_slices=40, generator=torch.Generator().manual_seed(2))
    want = ref.epps_pulley(z, num_slices=40, generator=torch.Generator().manual_seed(2))
    assert_close(got, want, 1e-10, 0, what="value with a seeded generator")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_moments_op_equals_direct_sums(dtype):
    u = random_points(3, 500, seed=4, scale=3.0).to(dtype)
    delta = 0.37
    cos_sums, sin_sums = ep.moments(u, 9, delta)
    t = torch.arange(9, dtype=torch.float64) * delta
    phases = t[None, :, None] * u.double()[:, None, :]  # (S, K, n)
    assert_close(cos_sums, torch.cos(phases).sum(-1), 1e-12, 1e-11, what="cos sums")
    assert_close(sin_sums, torch.sin(phases).sum(-1), 1e-12, 1e-11, what="sin sums")


def test_summed_moments_of_two_halves_give_the_global_statistic():
    """What a process group does: per-rank sums added, n the global count."""
    z, theta = random_points(301, 5, seed=5), _directions(20, 5)
    unit = theta / theta.norm(dim=1, keepdim=True)
    delta = 3.0 / 16
    parts = [ep.moments((unit @ half.t()).contiguous(), 17, delta) for half in (z[:120], z[120:])]
    cos_sums, sin_sums = parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
    got = ep.statistic(cos_sums, sin_sums, 301, delta)
    assert_close(got, ref.epps_pulley(z, directions=theta), 1e-11, 0, what="statistic from summed moments")


# ---------------------------------------------------------------- (2)-(5)


def test_gradcheck():
    theta = _directions(3, 3)
    z = random_points(5, 3, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: gaussreg.epps_pulley(a, num_points=5, directions=theta), (z,),
                                    eps=1e-6, atol=1e-7)


def test_float32_close_to_float64():
    theta = _directions(64, 16)
    z = random_points(4000, 16, seed=3)
    v64 = gaussreg.epps_pulley(z, directions=theta)
    v32 = gaussreg.epps_pulley(z.float(), directions=theta.float())
    assert_close(v32, v64, 1e-4, 1e-6, what="float32 vs float64")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    theta = _directions(8, 5)
    check_layout(lambda z: gaussreg.epps_pulley(z, directions=theta), [random_points(60, 5, seed=2)], layout)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(half):
    theta = _directions(8, 4).float()
    half_precision_check(lambda z: gaussreg.epps_pulley(z, directions=theta), [random_points(64, 4)], half)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_matches_cpu(dtype):
    theta = _directions(300, 20)
    check_cuda_parity(lambda z: gaussreg.epps_pulley(z, directions=theta.to(z)), [random_points(3000, 20, seed=1)],
                      dtype, value_floor=1e-2)


# ---------------------------------------------------------------- (6) errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_points=1), ValueError, "num_points must be an int in"),
    (dict(num_points=65), ValueError, "num_points must be an int in"),
    (dict(t_max=0.0), ValueError, "t_max must be positive"),
    (dict(num_slices=0), ValueError, "num_slices must be a positive int"),
    (dict(directions=torch.randn(4, 2)), ValueError, "directions must have shape"),
])
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussreg.epps_pulley(torch.randn(10, 3), **kwargs)


# ---------------------------------------------------------------- (7)-(8), determinism, module


def test_opcheck_moments():
    u = random_points(3, 40, seed=1).requires_grad_(True)
    torch.library.opcheck(torch.ops.gaussreg.epps_pulley_moments.default, (u, 7, 0.25))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_eager_moments_match_the_op(dtype):
    """Eagerly the moments run the op's bodies and autograd formula in an autograd.Function
    (no dispatch); torch.compile traces the ops. Both give the same bits, gradient included."""
    from gaussreg.engines import epps_pulley as engine
    u0 = random_points(3, 40, seed=1, dtype=dtype)
    weights = random_points(2, 3 * 7, seed=2).view(2, 3, 7)

    def run(call):
        u = u0.clone().requires_grad_(True)
        cos_sums, sin_sums = call(u, 7, 0.25)
        ((cos_sums * weights[0]).sum() + (sin_sums * weights[1]).sum()).backward()
        return cos_sums.detach(), sin_sums.detach(), u.grad

    for got, expected in zip(run(engine._MomentsFn.apply), run(engine.moments_op)):
        assert torch.equal(got, expected)


def test_compile_fullgraph_matches_eager():
    theta = _directions(16, 6).float()
    check_compiled_matches_eager(lambda z: gaussreg.epps_pulley(z, directions=theta),
                                 random_points(300, 6, seed=7, dtype=torch.float32))


def test_double_backward_refused():
    z = random_points(10, 3).requires_grad_(True)
    (g,) = torch.autograd.grad(gaussreg.epps_pulley(z, num_slices=4), z, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(g.sum(), z)


def test_repeatable_and_thread_independent(restore_threads):
    theta = _directions(40, 10).float()
    fn = lambda z: gaussreg.epps_pulley(z, directions=theta)  # noqa: E731
    z = random_points(5000, 10, seed=1, dtype=torch.float32)
    check_repeatable(fn, [z])
    check_thread_independent(fn, [z])


def test_module_matches_functional():
    z = random_points(50, 3, seed=6)
    got = gaussreg.nn.EppsPulley(num_slices=7, generator=torch.Generator().manual_seed(1))(z)
    want = gaussreg.epps_pulley(z, num_slices=7, generator=torch.Generator().manual_seed(1))
    assert float(got) == float(want)


def test_normal_samples_score_their_expected_value_and_uniform_far_above():
    """For X ~ N(0, 1), E[n |phi_hat(t) - phi(t)|^2] = Var cos(tX) + Var sin(tX)
    = (1 + e^{-2t^2})/2 - e^{-t^2} + (1 - e^{-2t^2})/2 = 1 - e^{-t^2}, so E[EP_l] = sum_k w_k (1 - e^{-t_k^2})."""
    theta = _directions(64, 8)
    knots, weights = ep.knot_weights(17, 3.0 / 16, torch.device("cpu"))
    expected = float((weights * (1 - torch.exp(-knots ** 2))).sum())
    normal = [float(gaussreg.epps_pulley(random_points(2000, 8, seed=s), directions=theta)) for s in range(12)]
    mean = sum(normal) / len(normal)
    assert abs(mean - expected) < 0.3 * expected, (mean, expected)
    uniform = float(gaussreg.epps_pulley(torch.rand(2000, 8, dtype=torch.float64) * 2 - 1, directions=theta))
    assert uniform > 50 * expected, (uniform, expected)
