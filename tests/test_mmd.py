"""mmd (SPEC 4, WAE-MMD) against gaussreg.reference.

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

DEFAULT_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SIXTEEN_SCALES = tuple(0.05 * 1.5**k for k in range(16))

# ---------------------------------------------------------------------------
# Cases: (n, D, scale, seed); scaled inputs move the pair distances through the kernels'
# length scales (h^2 = D s, C = 2 D s).
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


def _prior(n, d, scale, seed):
    """A prior sample with m != n points, differently spread than z."""
    return random_points(n + 3, d, seed=seed + 100, scale=1.0) * (0.5 + 0.5 * scale)


# Each option: build(n, d, scale, seed) -> (point inputs (float64, CPU), fn(*points, backend), ref_fn(*points)).
def _with_prior(kernel, scales):
    def build(n, d, scale, seed):
        z = random_points(n, d, seed=seed, scale=scale)
        y = _prior(n, d, scale, seed)

        def fn(z, y, backend="auto"):
            return gaussreg.mmd(z, y, kernel=kernel, scales=scales, backend=backend)

        def ref_fn(z, y):
            return ref.mmd(z, y, kernel=kernel, scales=scales)

        return [z, y], fn, ref_fn
    return build


def _drawn_prior(kernel, scales, global_seed=False):
    """prior_sample=None: y ~ N(0, I) drawn with a seeded generator (or the seeded global one);
    the reference draws with an identically seeded generator."""
    def build(n, d, scale, seed):
        z = random_points(n, d, seed=seed, scale=scale)

        def fn(z, backend="auto"):
            if global_seed:
                torch.manual_seed(500 + seed)
                return gaussreg.mmd(z, kernel=kernel, scales=scales, backend=backend)
            gen = torch.Generator(device=z.device).manual_seed(500 + seed)
            return gaussreg.mmd(z, None, kernel=kernel, scales=scales, generator=gen, backend=backend)

        def ref_fn(z):
            if global_seed:
                torch.manual_seed(500 + seed)
                return ref.mmd(z, kernel=kernel, scales=scales)
            return ref.mmd(z, None, kernel=kernel, scales=scales, generator=torch.Generator().manual_seed(500 + seed))

        return [z], fn, ref_fn
    return build


def _analytic(scales):
    def build(n, d, scale, seed):
        z = random_points(n, d, seed=seed, scale=scale)

        def fn(z, backend="auto"):
            return gaussreg.mmd(z, "analytic", kernel="rbf", scales=scales, backend=backend)

        def ref_fn(z):
            return ref.mmd(z, "analytic", kernel="rbf", scales=scales)

        return [z], fn, ref_fn
    return build


OPTIONS = {
    "imq": _with_prior("imq", DEFAULT_SCALES),
    "rbf": _with_prior("rbf", DEFAULT_SCALES),
    "imq_scales": _with_prior("imq", (0.3, 1.7)),
    "rbf_one_scale": _with_prior("rbf", (0.05,)),
    "imq_drawn": _drawn_prior("imq", DEFAULT_SCALES),
    "rbf_drawn": _drawn_prior("rbf", (0.5, 2.0)),
    "imq_drawn_global": _drawn_prior("imq", DEFAULT_SCALES, global_seed=True),
    "rbf_analytic": _analytic(DEFAULT_SCALES),
    "rbf_analytic_scales": _analytic((0.2, 3.0)),
}
# The sum of the kernel's weights, k(0): the size of each of the three terms of the estimator.
KERNEL_SIZE = {"imq": 7, "rbf": 7, "imq_scales": 2, "rbf_one_scale": 1, "imq_drawn": 7, "rbf_drawn": 2,
               "imq_drawn_global": 7, "rbf_analytic": 7, "rbf_analytic_scales": 2}

MAIN_OPTIONS = ("imq", "rbf", "imq_drawn", "rbf_analytic")
SMALL_CASES = ([(o, c) for o in MAIN_OPTIONS for c in SMALL]
               + [(o, c) for o in sorted(OPTIONS) if o not in MAIN_OPTIONS for c in SMALL_FEW])
# The reference is O(n^2 D) in time and memory: medium and large cases run a covering subset.
MEDIUM_CASES = [(o, c) for o in MAIN_OPTIONS for c in MEDIUM[:2]] + [("imq", MEDIUM[2]), ("rbf_analytic", MEDIUM[2])]
LARGE_CASES = [("imq", LARGE[1]), ("rbf_drawn", LARGE[0])]


def reference_atol(option):
    return 1e-13 * KERNEL_SIZE[option]  # the estimator may be ~0: errors are relative to its terms


# ---------------------------------------------------------------------------
# 1. value and gradient vs reference (float64)
# ---------------------------------------------------------------------------


def test_imq_spelled_out():
    """SPEC 4 with explicit loops: unbiased MMD^2, k = sum_s C_s / (C_s + ||x - y||^2), C_s = 2 D s."""
    z = random_points(5, 3, seed=1)
    y = random_points(4, 3, seed=2) + 0.3
    scales = (0.5, 2.0)
    d = 3

    def k(a, b):
        t = float((a - b).pow(2).sum())
        return sum(2 * d * s / (2 * d * s + t) for s in scales)

    n, m = 5, 4
    zz = sum(k(z[i], z[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    zy = sum(k(z[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert gaussreg.mmd(z, y, scales=scales).item() == pytest.approx(zz + yy - 2 * zy, rel=1e-13, abs=1e-15)


def test_analytic_prior_terms_spelled_out():
    """SPEC 4 'analytic': E_y k = sum_s (h^2/(h^2+1))^{D/2} exp(-||x||^2/(2(h^2+1))),
    E_yy' k = sum_s (h^2/(h^2+2))^{D/2}."""
    z = random_points(4, 2, seed=3)
    scales, d, n = (0.5, 4.0), 2, 4
    zz = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                t = float((z[i] - z[j]).pow(2).sum())
                zz += sum(math.exp(-t / (2 * d * s)) for s in scales)
    zz /= n * (n - 1)
    yy = sum((d * s / (d * s + 2)) ** (d / 2) for s in scales)
    zy = sum((d * s / (d * s + 1)) ** (d / 2) * math.exp(-float(z[i].pow(2).sum()) / (2 * (d * s + 1)))
             for s in scales for i in range(n)) / n
    got = gaussreg.mmd(z, "analytic", kernel="rbf", scales=scales).item()
    assert got == pytest.approx(zz + yy - 2 * zy, rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_sixteen_scales(kernel):
    """SPEC allows up to 16 scales for either kernel."""
    z = random_points(17, 5, seed=1, scale=0.5)
    y = random_points(15, 5, seed=2)
    compare_with_reference(lambda z, y: gaussreg.mmd(z, y, kernel=kernel, scales=SIXTEEN_SCALES),
                           lambda z, y: ref.mmd(z, y, kernel=kernel, scales=SIXTEEN_SCALES), [z, y], atol=1e-12,
                           what=f"{kernel} with 16 scales")


def test_drawn_prior_uses_generator():
    """prior_sample=None draws torch.randn(z.shape, generator=generator, dtype, device)."""
    z = random_points(30, 4, seed=1)
    y = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    drawn = gaussreg.mmd(z, generator=torch.Generator().manual_seed(9))
    assert_identical(drawn, gaussreg.mmd(z, y))
    other = gaussreg.mmd(z, generator=torch.Generator().manual_seed(10))
    assert float(other) != float(drawn)


# ---------------------------------------------------------------------------
# 2. gradcheck (float64, tiny inputs)
# ---------------------------------------------------------------------------

GRADCHECK_CASES = ([(o, (4, 3, 0.7)) for o in sorted(OPTIONS)]
                   + [(o, c) for o in MAIN_OPTIONS for c in ((2, 2, 0.3), (3, 1, 1.5))])


# ---------------------------------------------------------------------------
# 3. float32 vs float64 (given prior samples: a drawn one differs between dtypes)
# ---------------------------------------------------------------------------

F32_CASES = [(256, 3), (1024, 8), (4096, 8), (4096, 20)]
F32_OPTIONS = ("imq", "rbf", "rbf_analytic")
REF_F32_MAX_ELEMENTS = 2**25  # n^2 D: the reference's own float32 error is measured below this


@pytest.mark.parametrize("shape", F32_CASES, ids=lambda s: f"n{s[0]}-D{s[1]}")
@pytest.mark.parametrize("option", F32_OPTIONS)
def test_float32_error(option, shape, record_property):
    n, d = shape
    inputs, fn, ref_fn = OPTIONS[option](n, d, 1.0, 11)
    check_float32(fn, ref_fn, inputs, value_floor=KERNEL_SIZE[option],
                  run_reference=n * n * d <= REF_F32_MAX_ELEMENTS, record_property=record_property,
                  label=f"mmd {option} n={n} D={d}")


# ---------------------------------------------------------------------------
# 4. layouts and half precision
# ---------------------------------------------------------------------------

LAYOUT_OPTIONS = ("imq", "rbf_drawn", "rbf_analytic")
HALF_OPTIONS = ("imq", "rbf", "imq_drawn", "rbf_analytic")


def test_half_z_with_float32_prior():
    """A half z with a float32 prior is computed in float32; z's gradient comes back in half."""
    z = random_points(20, 4, seed=1, dtype=torch.float16, requires_grad=True)
    y = random_points(20, 4, seed=2, dtype=torch.float32, requires_grad=True)
    loss = gaussreg.mmd(z, y)
    assert loss.dtype == torch.float32
    gz, gy = torch.autograd.grad(loss, (z, y))
    assert gz.dtype == torch.float16 and gy.dtype == torch.float32


# ---------------------------------------------------------------------------
# 5. CPU / CUDA parity
# ---------------------------------------------------------------------------

CUDA_OPTIONS = ("imq", "rbf", "imq_scales", "rbf_one_scale", "rbf_analytic")


def value_floor(option):
    """The size of the value's terms, below which errors are absolute (the estimator may be ~0)."""
    return KERNEL_SIZE[option]


@pytest.mark.cuda
def test_cuda_drawn_prior_uses_cuda_generator():
    z = random_points(40, 5, seed=1, device="cuda")
    y = torch.randn(z.shape, generator=torch.Generator(device="cuda").manual_seed(4), dtype=z.dtype, device="cuda")
    drawn = gaussreg.mmd(z, generator=torch.Generator(device="cuda").manual_seed(4))
    assert_close(drawn, gaussreg.mmd(z, y), 1e-13, 1e-15)


@pytest.mark.cuda
def test_cuda_half_and_layouts():
    z = random_points(50, 6, seed=1, device="cuda")
    y = random_points(40, 6, seed=2, device="cuda")
    for layout in LAYOUTS:
        assert_close(gaussreg.mmd(with_layout(z, layout), with_layout(y, layout)), gaussreg.mmd(z, y),
                     1e-12, 1e-14, what=layout)
    h = gaussreg.mmd(z.half(), y.half())
    assert h.dtype == torch.float32 and h.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_mixed_devices_rejected():
    z = random_points(5, 3, seed=1)
    with pytest.raises(ValueError, match="device"):
        gaussreg.mmd(z, z.cuda())
    with pytest.raises(ValueError, match="device"):
        gaussreg.mmd(z.cuda(), z)


@pytest.mark.cuda
def test_cuda_memory_error():
    huge = torch.zeros(1, 64, device="cuda").expand(2**40, 64)
    with pytest.raises(MemoryError) as info:
        gaussreg.mmd(huge)
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
    "z_rank1": (lambda: gaussreg.mmd(torch.randn(6, dtype=torch.float64)), ValueError, "2-D"),
    "z_rank3": (lambda: gaussreg.mmd(torch.randn(2, 6, 3)), ValueError, "2-D"),
    "prior_rank1": (lambda: gaussreg.mmd(_z(), torch.randn(6, dtype=torch.float64)), ValueError, "prior_sample.*2-D"),
    # non-tensor
    "z_list": (lambda: gaussreg.mmd([[0.0, 1.0], [1.0, 0.0]]), TypeError, "z.*Tensor"),
    "z_numpy": (lambda: gaussreg.mmd(_z().numpy()), TypeError, "z.*Tensor"),
    "prior_numpy": (lambda: gaussreg.mmd(_z(), _z().numpy()), TypeError, "prior_sample"),
    "prior_list": (lambda: gaussreg.mmd(_z(), [[0.0] * 3] * 6), TypeError, "prior_sample"),
    # dtypes
    "z_int": (lambda: gaussreg.mmd(torch.ones(6, 3, dtype=torch.int64)), TypeError, "floating"),
    "z_complex": (lambda: gaussreg.mmd(torch.ones(6, 3, dtype=torch.complex64)), TypeError, "floating"),
    "prior_int": (lambda: gaussreg.mmd(_z(), torch.ones(6, 3, dtype=torch.int32)), TypeError, "prior_sample.*floating"),
    # devices
    "z_meta": (lambda: gaussreg.mmd(torch.empty(6, 3, device="meta")), (ValueError, TypeError), "meta"),
    "z_meta_prior_meta": (lambda: gaussreg.mmd(torch.empty(6, 3, device="meta"), torch.empty(6, 3, device="meta")),
                          (ValueError, TypeError), "meta"),
    "prior_meta": (lambda: gaussreg.mmd(_z(), torch.empty(6, 3, dtype=torch.float64, device="meta")), ValueError,
                   "device"),
    # sizes
    "n1": (lambda: gaussreg.mmd(_z()[:1]), ValueError, "at least 2"),
    "n1_analytic": (lambda: gaussreg.mmd(_z()[:1], "analytic", kernel="rbf"), ValueError, "at least 2"),
    "prior_m1": (lambda: gaussreg.mmd(_z(), _z()[:1]), ValueError, "prior_sample.*at least 2"),
    "D0": (lambda: gaussreg.mmd(torch.zeros(6, 0)), ValueError, "D = 0"),
    "prior_dim": (lambda: gaussreg.mmd(_z(), random_points(6, 4)), ValueError, "same dimension"),
    # non-finite points
    "z_nan": (lambda: gaussreg.mmd(_with(float("nan"))), ValueError, "NaN"),
    "z_inf": (lambda: gaussreg.mmd(_with(float("inf"))), ValueError, "Inf"),
    "z_neg_inf_analytic": (lambda: gaussreg.mmd(_with(-float("inf"), 5, 2), "analytic", kernel="rbf"), ValueError,
                           "Inf"),
    "z_nan_reference": (lambda: gaussreg.mmd(_with(float("nan")), backend="reference"), ValueError, "NaN"),
    "z_nan_half": (lambda: gaussreg.mmd(_with(float("nan")).bfloat16()), ValueError, "NaN"),
    "prior_nan": (lambda: gaussreg.mmd(_z(), _with(float("nan"))), ValueError, "prior_sample.*NaN"),
    "prior_inf": (lambda: gaussreg.mmd(_z(), _with(float("inf"))), ValueError, "prior_sample.*Inf"),
    # kernel
    "kernel_bogus": (lambda: gaussreg.mmd(_z(), kernel="gaussian"), ValueError, "kernel"),
    "kernel_none": (lambda: gaussreg.mmd(_z(), kernel=None), ValueError, "kernel"),
    # scales
    "scales_empty": (lambda: gaussreg.mmd(_z(), scales=()), ValueError, "scales"),
    "scales_zero": (lambda: gaussreg.mmd(_z(), scales=(1.0, 0.0)), ValueError, "scale"),
    "scales_negative": (lambda: gaussreg.mmd(_z(), scales=(-1.0,)), ValueError, "scale"),
    "scales_nan": (lambda: gaussreg.mmd(_z(), scales=(float("nan"),)), ValueError, "scale"),
    "scales_inf": (lambda: gaussreg.mmd(_z(), kernel="rbf", scales=(float("inf"),)), ValueError, "scale"),
    "scales_17": (lambda: gaussreg.mmd(_z(), scales=tuple(range(1, 18))), ValueError, "scales"),
    "scales_float": (lambda: gaussreg.mmd(_z(), scales=1.0), TypeError, "scales"),
    "scales_none": (lambda: gaussreg.mmd(_z(), scales=None), TypeError, "scales"),
    "scales_string": (lambda: gaussreg.mmd(_z(), scales="abc"), (TypeError, ValueError), "scales"),
    # prior_sample options
    "prior_string": (lambda: gaussreg.mmd(_z(), "exact"), ValueError, "prior_sample"),
    "analytic_imq": (lambda: gaussreg.mmd(_z(), "analytic", kernel="imq"), ValueError, "analytic"),
    "generator_int": (lambda: gaussreg.mmd(_z(), generator=0), TypeError, "generator"),
    # backend
    "backend_bogus": (lambda: gaussreg.mmd(_z(), _z(), backend="bogus"), ValueError, "backend"),
}


def assert_still_works():
    z = random_points(9, 4, seed=5, scale=0.5)
    y = random_points(7, 4, seed=6)
    compare_with_reference(lambda z, y: gaussreg.mmd(z, y), lambda z, y: ref.mmd(z, y), [z, y],
                           what="after an error")


MEMORY_CALLS = {  # the fronts' memory checks, each given a 2^40 x 64 expanded tensor
    "drawn": lambda huge: gaussreg.mmd(huge),
    "analytic": lambda huge: gaussreg.mmd(huge, "analytic", kernel="rbf"),
    "both_huge": lambda huge: gaussreg.mmd(huge, huge, kernel="rbf"),
    "prior_huge": lambda huge: gaussreg.mmd(torch.zeros(3, 64), huge),
    "z_huge": lambda huge: gaussreg.mmd(huge, torch.zeros(3, 64)),
}



# ---------------------------------------------------------------------------
# 7. opcheck and the pair_sum contract for this stem's kernels
# ---------------------------------------------------------------------------


def _imq(params):
    return lambda t, pi, pj: sum(c / (c + t) for c in params)


def _rbf(params):
    return lambda t, pi, pj: sum(w * torch.exp(-c * t) for c, w in zip(params[0::2], params[1::2]))


def op_cases(dtype):
    """name -> (pair_sum arguments, brute-force kernel k(t, p_i, p_j))."""
    x, y, _, _ = op_inputs(dtype)
    imq, rbf = pair_sum.MMD_IMQ, pair_sum.MMD_RBF
    c = [2.0 * 5 * s for s in DEFAULT_SCALES]
    r = [1.0 / (2.0 * 5 * 0.5), 1.0, 1.0 / (2.0 * 5 * 3.0), 1.0]
    return {
        "self_imq": ((x, None, None, None, "mmd", imq, c, True, True), _imq(c)),
        "self_imq_nograd": ((x, None, None, None, "mmd", imq, c, False, False), _imq(c)),
        "cross_imq": ((x, y, None, None, "mmd", imq, c, True, True), _imq(c)),
        "cross_imq_x_only": ((x, y, None, None, "mmd", imq, c, True, False), _imq(c)),
        "self_rbf": ((x, None, None, None, "mmd", rbf, r, True, True), _rbf(r)),
        "cross_rbf": ((x, y, None, None, "mmd", rbf, r, True, True), _rbf(r)),
        "cross_rbf_nograd": ((x, y, None, None, "mmd", rbf, r, False, False), _rbf(r)),
    }


OP_CASES = ["self_imq", "self_imq_nograd", "cross_imq", "self_rbf", "cross_rbf", "cross_rbf_nograd"]
OPCHECK_CASES = [(name, torch.float64) for name in OP_CASES] + [("cross_imq", torch.float32)]


# ---------------------------------------------------------------------------
# 8. torch.compile
# ---------------------------------------------------------------------------

# The options the compiled-loss check runs (tests/test_pair_sum_losses.py).
COMPILE_OPTIONS = ("imq", "rbf", "rbf_analytic")
COMPILE_VALUE_ATOL = 1e-14  # a difference of near-equal sums, near 0: an absolute floor


def test_compile_fullgraph_pair_sum_op():
    """The custom op itself traces (fake impl + autograd registration) with fullgraph=True."""
    torch._dynamo.reset()
    z = random_points(20, 4, seed=1)
    y = random_points(15, 4, seed=2)

    def f(z, y):
        zy, _, _ = torch.ops.gaussreg.pair_sum(z, y, None, None, "mmd", pair_sum.MMD_IMQ, [8.0, 16.0], True, True)
        return zy / 300.0

    eager_v, eager_g = value_and_grads(f, [z, y])
    compiled_v, compiled_g = value_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), [z, y])
    assert_close(compiled_v, eager_v, 1e-14, 0)
    for g, h in zip(compiled_g, eager_g):
        assert_close(g, h, 1e-14, 1e-17)


# ---------------------------------------------------------------------------
# autograd edge cases and determinism
# ---------------------------------------------------------------------------

# The options the autograd edge-case and determinism checks run (the checks themselves:
# tests/test_pair_sum_losses.py, one table over the pair-sum stems).
EDGE_OPTIONS = ("imq", "rbf_drawn", "rbf_analytic")


def test_gradient_only_to_inputs_that_ask():
    z = random_points(20, 3, seed=1, requires_grad=True)
    y = random_points(20, 3, seed=2)
    loss = gaussreg.mmd(z, y)
    (gz,) = torch.autograd.grad(loss, (z,))
    _, (gz_ref, gy_ref) = value_and_grads(lambda a, b: gaussreg.mmd(a, b), [z.detach(), y])
    assert_identical(gz, gz_ref)
    y_leaf = y.clone().requires_grad_(True)
    (gy,) = torch.autograd.grad(gaussreg.mmd(z.detach(), y_leaf), (y_leaf,))
    # Only y asking: the kernels swap x and y, so the same sums are taken in another order.
    assert_close(gy, gy_ref, 1e-12, 1e-16)
