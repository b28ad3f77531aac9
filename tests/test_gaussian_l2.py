"""gaussian_l2_to_normal and gaussian_l2 (SPEC 3) against gaussreg.reference.

Sections as in DESIGN.md "Tests": (1) float64 value and gradient vs the reference,
(2) gradcheck, (3) float32 error, (4) layouts and half inputs, (5) CPU/CUDA parity,
(6) SPEC errors, (7) opcheck and the pair_sum contract, (8) torch.compile, then
autograd edge cases and determinism. This module holds the stem's cases and its own
checks; the checks every pair-sum stem shares (reference, gradcheck, layouts, half
inputs, CUDA parity, SPEC errors, memory errors, opcheck, the op's contract, compile and
determinism) run over its tables in tests/test_pair_sum_losses.py.
"""
import math

import pytest
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.engines import pair_sum
from gaussreg.testing import LAYOUTS, random_points, with_layout

from _helpers import (assert_close, assert_identical, bytes_in_message, check_float32, compare_with_reference,
                      op_inputs, value_and_grads)

# ---------------------------------------------------------------------------
# Cases: (n, D, scale, seed). Scaled inputs make the off-diagonal kernel terms matter
# at large D (unit-scale points at D = 128 have exp(-64)-small pair terms).
# ---------------------------------------------------------------------------

SMALL = [(n, d, scale, seed) for (n, d) in ((2, 2), (3, 3), (17, 2), (17, 20), (17, 128))
         for scale, seed in ((0.2, 0), (1.0, 1), (3.0, 2))]
# Every option runs SMALL_FEW; the main options run all of SMALL.
SMALL_FEW = [(2, 2, 0.2, 0), (3, 3, 3.0, 1), (17, 2, 1.0, 2), (17, 20, 0.2, 3), (17, 128, 1.0, 4)]
MEDIUM = [(256, 3, 1.0, 0), (256, 20, 3.0, 1), (256, 128, 0.2, 2)]
LARGE = [(1000, 2, 1.0, 3), (1000, 20, 0.2, 4)]


def case_id(case):
    n, d, scale, seed = case
    return f"n{n}-D{d}-x{scale:g}-s{seed}"


def _per_point_sigma(n, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return 0.3 + 1.7 * torch.rand(n, generator=g, dtype=torch.float64)


# Each option: build(n, d, scale, seed) -> (point inputs (float64, CPU), fn(*points, backend), ref_fn(*points)).
def _to_normal(sigma_of):
    def build(n, d, scale, seed):
        z = random_points(n, d, seed=seed, scale=scale)
        sigma = sigma_of(n, seed)

        def fn(z, backend="auto"):
            s = sigma.to(z.device) if isinstance(sigma, torch.Tensor) else sigma
            return gaussreg.gaussian_l2_to_normal(z, s, backend=backend)

        def ref_fn(z):
            return ref.gaussian_l2_to_normal(z, sigma)

        return [z], fn, ref_fn
    return build


def _two_sample(sigma):
    def build(n, d, scale, seed):
        x = random_points(n, d, seed=seed, scale=scale)
        m = max(2, n // 2 + 1)
        y = random_points(m, d, seed=seed + 100, scale=scale) * 1.1 + 0.2 * scale

        def fn(x, y, backend="auto"):
            return gaussreg.gaussian_l2(x, y, sigma, backend=backend)

        def ref_fn(x, y):
            return ref.gaussian_l2(x, y, sigma)

        return [x, y], fn, ref_fn
    return build


OPTIONS = {
    "sigma1": _to_normal(lambda n, seed: 1.0),
    "sigma0.6": _to_normal(lambda n, seed: 0.6),
    "sigma2.5": _to_normal(lambda n, seed: 2.5),
    "sigma_0dim_tensor": _to_normal(lambda n, seed: torch.tensor(0.8, dtype=torch.float64)),
    "per_point": _to_normal(_per_point_sigma),
    "mean_field": _to_normal(lambda n, seed: "mean_field"),
    "xy_sigma1": _two_sample(1.0),
    "xy_sigma0.4": _two_sample(0.4),
    "xy_sigma2.5": _two_sample(2.5),
}
MAIN_OPTIONS = ("sigma0.6", "per_point", "mean_field", "xy_sigma0.4")
SMALL_CASES = ([(o, c) for o in MAIN_OPTIONS for c in SMALL]
               + [(o, c) for o in sorted(OPTIONS) if o not in MAIN_OPTIONS for c in SMALL_FEW])
# The reference is O(n^2 D) in time and memory: medium and large cases run a covering subset.
MEDIUM_CASES = ([(o, c) for o in MAIN_OPTIONS + ("sigma1",) for c in MEDIUM[:2]]
                + [("sigma0.6", MEDIUM[2]), ("xy_sigma0.4", MEDIUM[2])])
LARGE_CASES = [("sigma1", LARGE[1]), ("per_point", LARGE[0]), ("mean_field", LARGE[0]), ("xy_sigma0.4", LARGE[1])]


# ---------------------------------------------------------------------------
# 1. value and gradient vs reference (float64)
# ---------------------------------------------------------------------------


def test_sigma_one_is_eq10():
    """SPEC: sigma = 1 is eq. (10), written out here with explicit loops over pairs."""
    z = random_points(7, 3, seed=3, scale=0.8)
    n = z.shape[0]
    pairs = sum(math.exp(-float((z[i] - z[j]).pow(2).sum()) / 4) for i in range(n) for j in range(i + 1, n))
    points = sum(math.exp(-float(z[i].pow(2).sum()) / 4) for i in range(n))
    expected = 1 + 1 / n + 2 / n**2 * pairs - 2 / n * points
    assert gaussreg.gaussian_l2_to_normal(z).item() == pytest.approx(expected, rel=1e-13)


def test_mean_field_equals_per_point_sigma_and_is_held_constant():
    """'mean_field' is the per-point tensor mean_field_sigma(||z_i||, D) of z.detach():
    same value and the same gradient (sigma contributes no gradient)."""
    z = random_points(40, 6, seed=2, scale=1.5)
    sigma = ref.mean_field_sigma(z.norm(dim=1), 6)
    v1, (g1,) = value_and_grads(lambda z: gaussreg.gaussian_l2_to_normal(z, "mean_field"), [z])
    v2, (g2,) = value_and_grads(lambda z: gaussreg.gaussian_l2_to_normal(z, sigma), [z])
    assert_close(v1, v2, 1e-12, 0, what="value")
    assert_close(g1, g2, 1e-10, 1e-14, what="gradient")


# ---------------------------------------------------------------------------
# 2. gradcheck (float64, tiny inputs)
# ---------------------------------------------------------------------------

GRADCHECK_OPTIONS = sorted(k for k in OPTIONS if k != "mean_field")  # mean_field: held constant, see above


GRADCHECK_CASES = ([(o, (4, 3, 0.7)) for o in GRADCHECK_OPTIONS]
                   + [(o, c) for o in ("sigma0.6", "per_point", "xy_sigma0.4") for c in ((2, 2, 0.3), (3, 1, 1.5))])


# ---------------------------------------------------------------------------
# 3. float32 vs float64
# ---------------------------------------------------------------------------

F32_CASES = [(256, 3), (1024, 8), (4096, 8), (4096, 20)]
F32_OPTIONS = ("sigma1", "sigma0.6", "per_point", "xy_sigma1")
REF_F32_MAX_ELEMENTS = 2**25  # n^2 D: the reference's own float32 error is measured below this


@pytest.mark.parametrize("shape", F32_CASES, ids=lambda s: f"n{s[0]}-D{s[1]}")
@pytest.mark.parametrize("option", F32_OPTIONS)
def test_float32_error(option, shape, record_property):
    n, d = shape
    inputs, fn, ref_fn = OPTIONS[option](n, d, 1.0, 11)
    # Every loss here is a difference of O(1) terms (k(0) = 1, the prior's own term 1).
    check_float32(fn, ref_fn, inputs, value_floor=1.0, run_reference=n * n * d <= REF_F32_MAX_ELEMENTS,
                  record_property=record_property, label=f"gaussian_l2 {option} n={n} D={d}")


# ---------------------------------------------------------------------------
# 4. layouts and half precision
# ---------------------------------------------------------------------------

LAYOUT_OPTIONS = ("per_point", "mean_field", "xy_sigma0.4")
HALF_OPTIONS = ("sigma1", "per_point", "mean_field", "xy_sigma1")


def test_non_contiguous_per_point_sigma():
    z = random_points(30, 4, seed=1)
    sigma = _per_point_sigma(30, 1)
    strided = torch.zeros(60, dtype=torch.float64)
    strided[::2] = sigma
    strided = strided[::2]
    assert not strided.is_contiguous()
    assert_identical(gaussreg.gaussian_l2_to_normal(z, strided), gaussreg.gaussian_l2_to_normal(z, sigma))


# ---------------------------------------------------------------------------
# 5. CPU / CUDA parity
# ---------------------------------------------------------------------------

CUDA_OPTIONS = ("sigma1", "sigma0.6", "per_point", "mean_field", "xy_sigma1", "xy_sigma0.4")


def value_floor(option):
    """The size of the value's terms, below which errors are absolute (k(0) = 1, the prior's own term 1)."""
    return 1.0


@pytest.mark.cuda
def test_cuda_half_and_layouts():
    x = random_points(50, 6, seed=1, device="cuda")
    for layout in LAYOUTS:
        assert_close(gaussreg.gaussian_l2_to_normal(with_layout(x, layout)), gaussreg.gaussian_l2_to_normal(x),
                     1e-12, 0, what=layout)
    h = gaussreg.gaussian_l2_to_normal(x.half())
    assert h.dtype == torch.float32 and h.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    x = random_points(5, 3, seed=1)
    with pytest.raises(ValueError, match="device"):
        gaussreg.gaussian_l2(x, x.cuda())
    with pytest.raises(ValueError, match="device"):
        gaussreg.gaussian_l2_to_normal(x.cuda(), torch.ones(5, dtype=torch.float64))


@pytest.mark.cuda
def test_cuda_memory_error():
    huge = torch.zeros(1, 64, device="cuda").expand(2**40, 64)
    with pytest.raises(MemoryError) as info:
        gaussreg.gaussian_l2_to_normal(huge)
    assert bytes_in_message(str(info.value)) >= 2**40 * 64 * 4


# ---------------------------------------------------------------------------
# 6. SPEC errors
# ---------------------------------------------------------------------------


def _z():
    return random_points(6, 3, seed=0)


def _with(value, row=2, col=1):
    z = _z()
    z[row, col] = value
    return z


BAD_CALLS = {
    # wrong rank
    "z_rank1": (lambda: gaussreg.gaussian_l2_to_normal(torch.randn(6, dtype=torch.float64)), ValueError, "2-D"),
    "z_rank3": (lambda: gaussreg.gaussian_l2_to_normal(torch.randn(2, 6, 3)), ValueError, "2-D"),
    "x_rank1": (lambda: gaussreg.gaussian_l2(torch.randn(6), _z()), ValueError, "x.*2-D"),
    "y_rank3": (lambda: gaussreg.gaussian_l2(_z(), torch.randn(2, 6, 3, dtype=torch.float64)), ValueError, "y.*2-D"),
    # non-tensor
    "z_list": (lambda: gaussreg.gaussian_l2_to_normal([[0.0, 1.0], [1.0, 0.0]]), TypeError, "z.*Tensor"),
    "z_numpy": (lambda: gaussreg.gaussian_l2_to_normal(_z().numpy()), TypeError, "z.*Tensor"),
    "y_numpy": (lambda: gaussreg.gaussian_l2(_z(), _z().numpy()), TypeError, "y.*Tensor"),
    # dtypes
    "z_int": (lambda: gaussreg.gaussian_l2_to_normal(torch.ones(6, 3, dtype=torch.int64)), TypeError, "floating"),
    "z_bool": (lambda: gaussreg.gaussian_l2_to_normal(torch.ones(6, 3, dtype=torch.bool)), TypeError, "floating"),
    "z_complex": (lambda: gaussreg.gaussian_l2_to_normal(torch.ones(6, 3, dtype=torch.complex128)), TypeError,
                  "floating"),
    "y_int": (lambda: gaussreg.gaussian_l2(_z(), torch.ones(6, 3, dtype=torch.int32)), TypeError, "y.*floating"),
    # devices
    "z_meta": (lambda: gaussreg.gaussian_l2_to_normal(torch.empty(6, 3, device="meta")), (ValueError, TypeError),
               "meta"),
    "xy_meta": (lambda: gaussreg.gaussian_l2(torch.empty(6, 3, device="meta"), torch.empty(6, 3, device="meta")),
                (ValueError, TypeError), "meta"),
    "y_meta": (lambda: gaussreg.gaussian_l2(_z(), torch.empty(6, 3, dtype=torch.float64, device="meta")), ValueError,
               "device"),
    "sigma_meta": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, device="meta")), ValueError, "device"),
    # sizes
    "n1": (lambda: gaussreg.gaussian_l2_to_normal(_z()[:1]), ValueError, "at least 2"),
    "n0": (lambda: gaussreg.gaussian_l2_to_normal(_z()[:0]), ValueError, "at least 2"),
    "y_n1": (lambda: gaussreg.gaussian_l2(_z(), _z()[:1]), ValueError, "y.*at least 2"),
    "D0": (lambda: gaussreg.gaussian_l2_to_normal(torch.zeros(6, 0)), ValueError, "D = 0"),
    "xy_dims": (lambda: gaussreg.gaussian_l2(_z(), random_points(6, 4)), ValueError, "same dimension"),
    # non-finite points
    "z_nan": (lambda: gaussreg.gaussian_l2_to_normal(_with(float("nan"))), ValueError, "NaN"),
    "z_inf": (lambda: gaussreg.gaussian_l2_to_normal(_with(float("inf"))), ValueError, "Inf"),
    "z_neg_inf": (lambda: gaussreg.gaussian_l2_to_normal(_with(-float("inf"), 5, 2)), ValueError, "Inf"),
    "z_nan_mean_field": (lambda: gaussreg.gaussian_l2_to_normal(_with(float("nan")), "mean_field"), ValueError,
                         "NaN"),
    "z_nan_reference": (lambda: gaussreg.gaussian_l2_to_normal(_with(float("nan")), backend="reference"),
                        ValueError, "NaN"),
    "z_nan_half": (lambda: gaussreg.gaussian_l2_to_normal(_with(float("nan")).half()), ValueError, "NaN"),
    "x_inf": (lambda: gaussreg.gaussian_l2(_with(float("inf")), _z()), ValueError, "x.*Inf"),
    "y_nan": (lambda: gaussreg.gaussian_l2(_z(), _with(float("nan"))), ValueError, "y.*NaN"),
    # sigma
    "sigma_zero": (lambda: gaussreg.gaussian_l2_to_normal(_z(), 0.0), ValueError, "sigma"),
    "sigma_negative": (lambda: gaussreg.gaussian_l2_to_normal(_z(), -1.0), ValueError, "sigma"),
    "sigma_inf": (lambda: gaussreg.gaussian_l2_to_normal(_z(), float("inf")), ValueError, "sigma"),
    "sigma_nan": (lambda: gaussreg.gaussian_l2_to_normal(_z(), float("nan")), ValueError, "sigma"),
    "sigma_bool": (lambda: gaussreg.gaussian_l2_to_normal(_z(), True), TypeError, "sigma"),
    "sigma_string": (lambda: gaussreg.gaussian_l2_to_normal(_z(), "silverman"), ValueError, "sigma"),
    "sigma_list": (lambda: gaussreg.gaussian_l2_to_normal(_z(), [1.0] * 6), TypeError, "sigma"),
    "sigma_shape": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(7)), ValueError, "sigma.*shape"),
    "sigma_2d": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, 1)), ValueError, "sigma.*shape"),
    "sigma_tensor_zero": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.tensor([1.0, 0, 1, 1, 1, 1])),
                          ValueError, "sigma"),
    "sigma_tensor_nan": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.tensor([1.0, 1, float("nan"), 1, 1, 1])),
                         ValueError, "sigma"),
    "sigma_0dim_negative": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.tensor(-1.0)), ValueError, "sigma"),
    "sigma_requires_grad": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, requires_grad=True)),
                            ValueError, "sigma"),
    "xy_sigma_zero": (lambda: gaussreg.gaussian_l2(_z(), _z(), 0.0), ValueError, "sigma"),
    "xy_sigma_string": (lambda: gaussreg.gaussian_l2(_z(), _z(), "mean_field"), TypeError, "sigma"),
    # regressions (issue 8): an AttributeError for a missing y; integer, bool and complex
    # per-point widths were taken (complex failed deep in torch)
    "y_none": (lambda: gaussreg.gaussian_l2(_z(), None), TypeError, "y must be a torch.Tensor"),
    "sigma_int_tensor": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, dtype=torch.int64)),
                         TypeError, "sigma.*floating"),
    "sigma_bool_tensor": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, dtype=torch.bool)),
                          TypeError, "sigma.*floating"),
    "sigma_complex_tensor": (lambda: gaussreg.gaussian_l2_to_normal(_z(), torch.ones(6, dtype=torch.complex64)),
                             TypeError, "sigma.*floating"),
    # backend
    "backend_bogus": (lambda: gaussreg.gaussian_l2_to_normal(_z(), backend="bogus"), ValueError, "backend"),
    "xy_backend_bogus": (lambda: gaussreg.gaussian_l2(_z(), _z(), backend="bogus"), ValueError, "backend"),
}


def assert_still_works():
    z = random_points(9, 4, seed=5, scale=0.5)
    compare_with_reference(lambda a, b: gaussreg.gaussian_l2(a, b, 0.7),
                           lambda a, b: ref.gaussian_l2(a, b, 0.7), [z, z[:5] + 0.1], what="after an error")


MEMORY_CALLS = {  # the fronts' memory checks, each given a 2^40 x 64 expanded tensor
    "sigma_float": lambda huge: gaussreg.gaussian_l2_to_normal(huge),
    "mean_field": lambda huge: gaussreg.gaussian_l2_to_normal(huge, "mean_field"),
    "per_point": lambda huge: gaussreg.gaussian_l2_to_normal(huge, torch.ones(1).expand(huge.shape[0])),
    "x_huge": lambda huge: gaussreg.gaussian_l2(huge, torch.zeros(3, 64)),
    "y_huge": lambda huge: gaussreg.gaussian_l2(torch.zeros(3, 64), huge),
}



def test_native_backend_on_meta_names_device():
    with pytest.raises(ValueError, match="meta"):
        gaussreg.gaussian_l2_to_normal(torch.empty(6, 3, device="meta"), backend="native")


# ---------------------------------------------------------------------------
# 7. opcheck and the pair_sum contract for this stem's kernels
# ---------------------------------------------------------------------------


def _exp_sum(params):
    return lambda t, pi, pj: sum(w * torch.exp(-c * t) for c, w in zip(params[0::2], params[1::2]))


def _per_point(params):
    half_d = params[0]
    return lambda t, pi, pj: torch.exp(-t / (2 * (pi + pj)) - half_d * torch.log((pi + pj) / 2))


def op_cases(dtype):
    """name -> (pair_sum arguments, brute-force kernel k(t, p_i, p_j))."""
    x, y, px, py = op_inputs(dtype)
    exp_sum, per_point = pair_sum.GAUSS_EXP_SUM, pair_sum.GAUSS_PER_POINT
    one, two, pp = [0.25, 1.0], [0.25, 1.0, 0.05, 2.0], [2.5]
    return {
        "self_exp": ((x, None, None, None, "gaussian_l2", exp_sum, one, True, True), _exp_sum(one)),
        "self_exp_nograd": ((x, None, None, None, "gaussian_l2", exp_sum, one, False, False), _exp_sum(one)),
        "cross_exp_two_terms": ((x, y, None, None, "gaussian_l2", exp_sum, two, True, True), _exp_sum(two)),
        "self_per_point": ((x, None, px, None, "gaussian_l2", per_point, pp, True, True), _per_point(pp)),
        "cross_per_point": ((x, y, px, py, "gaussian_l2", per_point, pp, True, True), _per_point(pp)),
        "cross_per_point_x_only": ((x, y, px, py, "gaussian_l2", per_point, pp, True, False), _per_point(pp)),
        "cross_per_point_nograd": ((x, y, px, py, "gaussian_l2", per_point, pp, False, False), _per_point(pp)),
    }


OP_CASES = ["self_exp", "self_exp_nograd", "cross_exp_two_terms", "self_per_point", "cross_per_point",
            "cross_per_point_nograd"]
OPCHECK_CASES = [(name, torch.float64) for name in OP_CASES] + [("cross_per_point", torch.float32)]


# ---------------------------------------------------------------------------
# 8. torch.compile
# ---------------------------------------------------------------------------

# The options the compiled-loss check runs (tests/test_pair_sum_losses.py).
COMPILE_OPTIONS = ("sigma1", "per_point", "mean_field", "xy_sigma1")


def test_compile_fullgraph_pair_sum_op():
    """The custom op itself traces (fake impl + autograd registration) with fullgraph=True."""
    torch._dynamo.reset()
    x = random_points(20, 4, seed=1)

    def f(x):
        value, _, _ = torch.ops.gaussreg.pair_sum(x, None, None, None, "gaussian_l2", pair_sum.GAUSS_EXP_SUM,
                                                  [0.25, 1.0], True, False)
        return 2.0 * value / 400 + 1.0

    eager_v, (eager_g,) = value_and_grads(f, [x])
    compiled_v, (compiled_g,) = value_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), [x])
    assert_close(compiled_v, eager_v, 1e-14, 0)
    assert_close(compiled_g, eager_g, 1e-14, 1e-17)


# ---------------------------------------------------------------------------
# autograd edge cases and determinism
# ---------------------------------------------------------------------------

# The options the autograd edge-case and determinism checks run (the checks themselves:
# tests/test_pair_sum_losses.py, one table over the pair-sum stems).
EDGE_OPTIONS = ("sigma1", "per_point", "mean_field", "xy_sigma1")


def test_no_grad_inputs_give_value_only():
    z = random_points(20, 3, seed=1)
    v = gaussreg.gaussian_l2_to_normal(z)
    assert not v.requires_grad
    with torch.no_grad():
        w = gaussreg.gaussian_l2_to_normal(z.clone().requires_grad_(True))
    assert not w.requires_grad
    assert_identical(v, w)


@pytest.mark.parametrize("which", ["x", "y"])
def test_gradient_of_one_side_only(which):
    """Only x or only y requires grad: the kernels then skip (or swap to) the needed side."""
    x = random_points(37, 5, seed=11, scale=0.6)
    y = random_points(23, 5, seed=12, scale=0.6) + 0.3
    leaf, other = (x, y) if which == "x" else (y, x)
    leaf_native = leaf.clone().requires_grad_(True)
    leaf_ref = leaf.clone().requires_grad_(True)
    args_native = (leaf_native, other) if which == "x" else (other, leaf_native)
    args_ref = (leaf_ref, other) if which == "x" else (other, leaf_ref)
    gaussreg.gaussian_l2(*args_native, sigma=0.7).backward()
    gaussreg.reference.gaussian_l2(*args_ref, sigma=0.7).backward()
    assert_close(leaf_native.grad, leaf_ref.grad, 1e-12, 1e-15)


def test_huge_smoothing_factor_gives_inf_like_the_reference():
    """(sigma^2)^(-D/2) above 1e308 (sigma = 0.3, D = 1000): inf, as the math says, never an exception."""
    z = random_points(10, 1000, seed=2)
    value = gaussreg.gaussian_l2_to_normal(z, sigma=0.3)
    assert value.isinf() and ref.gaussian_l2_to_normal(z, 0.3).isinf()


def test_per_point_sigma_below_normal_range_rejected():
    z = random_points(10, 4, seed=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="sigma must be at least"):
        gaussreg.gaussian_l2_to_normal(z, torch.full((10,), 1e-21))


@pytest.mark.parametrize("dtype, exponent", [(torch.float32, 88.5), (torch.float64, 709.6)])
def test_kernel_exp_is_finite_up_to_the_overflow_end(dtype, exponent):
    """The CPU exp keeps values just below the dtype's largest finite number (pairs at t = 0)."""
    half_dim = 4.0
    a_half = math.exp(-exponent / half_dim)  # (a/2)^(-D/2) = e^exponent with a = px_i + px_j
    x = torch.zeros(2, 3, dtype=dtype)
    px = torch.full((2,), a_half, dtype=dtype)
    value, _, _ = torch.ops.gaussreg.pair_sum(x, None, px, None, "gaussian_l2", pair_sum.GAUSS_PER_POINT,
                                              [half_dim], False, False)
    expected = float(px[0]) ** -half_dim  # one unordered pair, (a/2)^(-D/2) with a/2 = px_0
    assert math.isfinite(float(value))
    assert abs(float(value) / expected - 1) < (1e-5 if dtype == torch.float32 else 1e-13)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, d", [(torch.float32, 383), (torch.float32, 1023), (torch.float64, 191),
                                      (torch.float32, 4099)])
def test_cuda_dims_that_fill_shared_memory(dtype, d):
    """D that filled the former whole-point tile of shared memory; the chunked sweep stages
    a chunk of coordinates at a time, so any D runs (4099: beyond any whole-point tile)."""
    z = random_points(300, d, seed=4, dtype=dtype, scale=0.05, requires_grad=True)
    zc = z.detach().cuda().requires_grad_(True)
    gaussreg.gaussian_l2_to_normal(z).backward()
    gaussreg.gaussian_l2_to_normal(zc).backward()
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    # Entries far below the largest are cancelling sums over the other points: absolute slack
    # scaled by the largest (as check_cuda_parity), not a fixed 1e-12.
    assert_close(zc.grad.cpu(), z.grad, rtol, 5 * rtol * float(z.grad.abs().max()))
