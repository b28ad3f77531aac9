"""coordinate_cdf_attraction (SPEC 2) and the segmented engine's ops against gaussreg.reference.

Sections as in DESIGN.md "Tests": (1) float64 value and gradient vs the reference,
(2) gradcheck, (3) float32, (4) layouts and half inputs, (5) CPU/CUDA parity, (6) SPEC
errors, (7) opcheck, (8) torch.compile; then the torus and quantization cases, the
engine's contract (tie counts, per-segment targets), determinism and the behavioural test.
"""
import pytest
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.engines import segmented
from gaussreg.targets import rank_targets
from gaussreg.testing import LAYOUTS, random_points

from _helpers import (FLOAT_DTYPES, assert_close, check_compiled_matches_eager, check_cuda_parity, check_layout,
                      check_repeatable, check_thread_independent, compare_with_reference, half_precision_check)

TARGETS = [("normal", None), ("uniform", None), ("torus", None), ("uniform", 4), ("torus", 3)]
SHAPES = [(n, d) for n in (2, 3, 100, 1000) for d in (1, 2, 50)]


def _points(n, d, marginal, seed=0, dtype=torch.float64):
    """N(0, 1) points for the normal marginal; for uniform/torus, values spread over
    [-0.3, 1.3] so that some fall outside [0, 1) and wrap on the torus."""
    z = random_points(n, d, seed=seed, dtype=torch.float64)
    if marginal != "normal":
        z = torch.special.ndtr(z) * 1.6 - 0.3
    return z.to(dtype)


def _loss(marginal, bits, p):
    return lambda z: gaussreg.coordinate_cdf_attraction(z, marginal=marginal, bits=bits, p=p)


def _ref(marginal, bits, p):
    return lambda z: ref.coordinate_cdf_attraction(z, marginal=marginal, bits=bits, p=p)


# ---------------------------------------------------------------- (1) vs the reference


@pytest.mark.parametrize("marginal,bits", TARGETS, ids=[f"{m}-{b}" for m, b in TARGETS])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,d", SHAPES, ids=[f"n{n}-D{d}" for n, d in SHAPES])
def test_matches_reference_float64(marginal, bits, p, n, d):
    z = _points(n, d, marginal, seed=n + d)
    compare_with_reference(_loss(marginal, bits, p), _ref(marginal, bits, p), [z], rtol=1e-12, atol=1e-15,
                           what=f"{marginal} bits={bits} p={p}")


def test_single_point_is_allowed():
    z = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    compare_with_reference(_loss("normal", None, 2), _ref("normal", None, 2), [z], what="n = 1")


# ---------------------------------------------------------------- (2) gradcheck


@pytest.mark.parametrize("marginal,bits", TARGETS, ids=[f"{m}-{b}" for m, b in TARGETS])
def test_gradcheck_p2(marginal, bits):
    z = _points(7, 3, marginal, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(_loss(marginal, bits, 2), (z,), eps=1e-7, atol=1e-8)


# ---------------------------------------------------------------- (3) float32


@pytest.mark.parametrize("marginal,bits", TARGETS, ids=[f"{m}-{b}" for m, b in TARGETS])
def test_float32_close_to_float64(marginal, bits):
    z = _points(2000, 8, marginal, seed=3)
    v64 = gaussreg.coordinate_cdf_attraction(z, marginal=marginal, bits=bits)
    v32 = gaussreg.coordinate_cdf_attraction(z.float(), marginal=marginal, bits=bits)
    assert v32.dtype == torch.float32
    assert_close(v32, v64, 1e-5, 1e-8, what="float32 vs float64 value")


# ---------------------------------------------------------------- (4) layouts and half inputs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    check_layout(_loss("torus", 2, 2), [_points(60, 5, "torus", seed=2)], layout)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(half):
    half_precision_check(_loss("normal", None, 2), [random_points(64, 4, seed=1)], half)


# ---------------------------------------------------------------- (5) CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("marginal,bits", TARGETS, ids=[f"{m}-{b}" for m, b in TARGETS])
@pytest.mark.parametrize("p", [1, 2])
def test_cuda_matches_cpu(dtype, marginal, bits, p):
    check_cuda_parity(_loss(marginal, bits, p), [_points(1000, 50, marginal, seed=4)], dtype, value_floor=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_tie_counts_match_cpu(dtype):
    values = torch.randint(0, 7, (5, 3001), generator=torch.Generator().manual_seed(0)).to(dtype)
    values[0, :10] = -0.0
    values[0, 10:20] = 0.0
    assert torch.equal(segmented.segment_counts_op(values.cuda()).cpu(), segmented.segment_counts_op(values))


# ---------------------------------------------------------------- (6) errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(marginal="normal", bits=3), ValueError, "bits is only defined"),
    (dict(marginal="uniform", bits=0), ValueError, "bits must be in"),
    (dict(marginal="uniform", bits=2.5), TypeError, "bits must be None or an int"),
    (dict(marginal="cauchy"), ValueError, "marginal must be one of"),
    (dict(p=3), ValueError, "p must be 1 or 2"),
    (dict(backend="fast"), ValueError, "backend must be"),
])
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussreg.coordinate_cdf_attraction(torch.randn(10, 3), **kwargs)


@pytest.mark.parametrize("z,error,match", [
    (torch.randn(10), ValueError, "2-D"),
    (torch.randint(0, 3, (10, 2)), TypeError, "floating"),
    (torch.zeros(0, 3), ValueError, "at least 1 points"),
    (torch.tensor([[0.0, float("nan")]]), ValueError, "NaN or Inf"),
    (torch.tensor([[0.0], [float("inf")]]), ValueError, "NaN or Inf"),
])
def test_bad_points_raise(z, error, match):
    with pytest.raises(error, match=match):
        gaussreg.coordinate_cdf_attraction(z)


# ---------------------------------------------------------------- (7) opcheck


def test_opcheck_sorted_gaps_and_counts():
    values = random_points(3, 40, seed=1)  # 3 segments of 40
    shared = rank_targets(40, "normal", None, values.device, values.dtype)
    per_segment = torch.sort(random_points(3, 40, seed=2), dim=1).values
    torch.library.opcheck(torch.ops.gaussreg.sorted_gaps.default,
                          (values.clone().requires_grad_(True), shared, False, 2, False))
    torch.library.opcheck(torch.ops.gaussreg.sorted_gaps.default,
                          (values.clone().requires_grad_(True), per_segment.clone().requires_grad_(True), True, 1,
                           True))
    torch.library.opcheck(torch.ops.gaussreg.segment_counts.default, (values,))


@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("per_segment", (False, True))
def test_eager_sorted_gaps_match_the_op(per_segment, p):
    """Eagerly sorted_gaps runs the op's body and registered autograd in an autograd.Function
    (no dispatch); torch.compile traces the op. Both give the same bits, targets' gradient included."""
    values0 = random_points(3, 40, seed=1)
    targets0 = (torch.sort(random_points(3, 40, seed=2), dim=1).values if per_segment
                else rank_targets(40, "normal", None, values0.device, values0.dtype))

    def run(call):
        values = values0.clone().requires_grad_(True)
        targets = targets0.clone().requires_grad_(per_segment)
        value = call(values, targets, per_segment, p, per_segment)
        value.backward(torch.tensor(0.75, dtype=value.dtype))
        return value.detach(), values.grad, targets.grad

    eager = run(segmented._SortedGapsFn.apply)
    through_op = run(lambda *a: segmented.sorted_gaps_op(*a)[0])
    for got, expected in zip(eager, through_op):
        assert (got is None) == (expected is None)
        if got is not None:
            assert torch.equal(got, expected)


# ---------------------------------------------------------------- (8) torch.compile


def test_compile_fullgraph_matches_eager():
    check_compiled_matches_eager(_loss("torus", 4, 2), _points(300, 6, "torus", seed=7, dtype=torch.float32))


# ---------------------------------------------------------------- torus and quantization


def test_torus_wraps_the_residual_across_one():
    # Both points in [0.9, 1): ranks 0 and 1 target 0.25 and 0.75; the first residual
    # 0.9 - 0.25 = 0.65 wraps to -0.35 (0.9 is closer to 0.25 + 1 going up through 1 = 0).
    z = torch.tensor([[0.9], [0.95]], dtype=torch.float64, requires_grad=True)
    loss = gaussreg.coordinate_cdf_attraction(z, marginal="torus")
    expected = (0.35 ** 2 + 0.2 ** 2) / 2
    assert abs(float(loss.detach()) - expected) < 1e-14
    loss.backward()
    assert_close(z.grad, torch.tensor([[-0.35], [0.2]], dtype=torch.float64), 1e-12, 1e-14, what="torus gradient")


def test_torus_is_invariant_to_integer_shifts():
    z = _points(257, 4, "torus", seed=9)
    shifted = z + torch.tensor([3.0, -2.0, 0.0, 1.0], dtype=torch.float64)
    a = gaussreg.coordinate_cdf_attraction(z, marginal="torus", p=1)
    b = gaussreg.coordinate_cdf_attraction(shifted, marginal="torus", p=1)
    assert_close(b, a, 1e-12, 1e-15, what="loss of z + integers")


@pytest.mark.parametrize("bits,n", [(1, 2), (3, 64), (4, 1000), (4, 7)])
def test_quantized_targets_are_cell_centres(bits, n):
    targets = rank_targets(n, "uniform", bits, torch.device("cpu"), torch.float64)
    centres = (torch.arange(2 ** bits, dtype=torch.float64) + 0.5) / 2 ** bits
    assert bool(torch.isin(targets, centres).all()), "a target is not the centre of a k-bit cell"
    assert bool((targets[1:] >= targets[:-1]).all())
    if n % 2 ** bits == 0:  # every cell gets n / 2^k ranks
        assert torch.equal(torch.bincount((targets * 2 ** bits).long(), minlength=2 ** bits),
                           torch.full((2 ** bits,), n // 2 ** bits))


def test_points_on_the_cell_centres_have_zero_loss():
    n, bits = 64, 3
    centres = rank_targets(n, "uniform", bits, torch.device("cpu"), torch.float64)
    z = centres[torch.randperm(n, generator=torch.Generator().manual_seed(0))][:, None].repeat(1, 3)
    assert float(gaussreg.coordinate_cdf_attraction(z, marginal="uniform", bits=bits)) == 0.0


# ---------------------------------------------------------------- the engine's contract


def _brute_counts(values):
    return (values[:, None, :] <= values[:, :, None]).sum(-1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_segment_counts_count_ties_together(dtype):
    values = torch.randint(0, 5, (4, 301), generator=torch.Generator().manual_seed(1)).to(dtype)
    values[1, :50] = -0.0  # equal to +0 in value
    values[1, 50:100] = 0.0
    values[2] = torch.randn(301, dtype=dtype)
    assert torch.equal(segmented.segment_counts_op(values), _brute_counts(values))


def test_per_segment_targets_get_the_gradient_of_sorted_targets():
    values = random_points(4, 30, seed=3).requires_grad_(True)
    targets = torch.sort(random_points(4, 30, seed=4), dim=1).values.requires_grad_(True)
    got = segmented.sorted_gaps(values, targets, p=2)
    want = (torch.sort(values, dim=1).values - targets).pow(2).sum()
    g_got = torch.autograd.grad(got, [values, targets])
    g_want = torch.autograd.grad(want, [values, targets])
    assert_close(got, want, 1e-13, 0, what="value")
    for a, b in zip(g_got, g_want):
        assert_close(a, b, 1e-13, 1e-14, what="gradient")


def test_double_backward_p1_is_zero_and_p2_refused():
    z = _points(20, 3, "uniform", seed=1).requires_grad_(True)
    (g,) = torch.autograd.grad(gaussreg.coordinate_cdf_attraction(z, marginal="uniform", p=1), z, create_graph=True)
    assert not g.requires_grad  # sgn(e) is piecewise constant: the second derivative is 0 a.e.
    (g,) = torch.autograd.grad(gaussreg.coordinate_cdf_attraction(z, marginal="uniform", p=2), z, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(g.pow(2).sum(), z)


def test_repeatable_and_thread_independent(restore_threads):
    z = _points(3000, 9, "normal", seed=2, dtype=torch.float32)
    check_repeatable(_loss("normal", None, 1), [z])
    check_thread_independent(_loss("torus", 5, 2), [_points(3000, 9, "torus", seed=2, dtype=torch.float32)])


def test_module_matches_functional():
    z = _points(50, 3, "torus", seed=6)
    module = gaussreg.nn.CoordinateCDFAttraction(marginal="torus", bits=2, p=1)
    assert float(module(z)) == float(gaussreg.coordinate_cdf_attraction(z, marginal="torus", bits=2, p=1))


# ---------------------------------------------------------------- behaviour


def test_minimizing_uniform_bits_4_piles_coordinates_on_the_16_centres():
    """The compression use (SPEC 2, bits=k): gradient descent on the loss alone moves a
    random sample onto neighbourhoods of the 2^k cell centres, every cell used equally."""
    n, d, bits = 512, 6, 4
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(n, d, generator=g, dtype=torch.float64) * 1.2 - 0.1).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=0.5 * n * d)  # a step of n D / 2 is the paper's x -> x + alpha (x~ - x)
    for _ in range(30):
        opt.zero_grad()
        loss = gaussreg.coordinate_cdf_attraction(z, marginal="uniform", bits=bits, p=2)
        loss.backward()
        opt.step()
    zd = z.detach()
    centres = (torch.floor(zd * 2 ** bits).clamp(0, 2 ** bits - 1) + 0.5) / 2 ** bits
    distance = (zd - centres).abs()
    assert float((distance < 0.005).double().mean()) > 0.99, float(distance.max())
    cells = torch.floor(zd * 2 ** bits).clamp(0, 2 ** bits - 1).long()
    for j in range(d):
        assert torch.equal(torch.bincount(cells[:, j], minlength=16), torch.full((16,), n // 16))
