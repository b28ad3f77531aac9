"""cw_distance (SPEC 5, Cramer-Wold / CWAE) against gaussreg.reference.

Sections as in DESIGN.md "Tests": (1) float64 value and gradient vs the reference,
(2) gradcheck, (3) float32 error, (4) layouts and half inputs, (5) CPU/CUDA parity,
(6) SPEC errors, (7) opcheck and the pair_sum contract, (8) torch.compile, then
autograd edge cases and determinism. The reference's "exact" kernel evaluates 1F1 with
mpmath per pair, so the exact kernel is compared at n <= 17. This module holds the stem's
cases and its own checks; the checks every pair-sum stem shares (reference, gradcheck,
layouts, half inputs, CUDA parity, SPEC errors, memory errors, opcheck, the op's contract,
compile and determinism) run over its tables in tests/test_pair_sum_losses.py.
"""
import math

import mpmath
import pytest
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.engines import pair_sum
from gaussreg.testing import LAYOUTS, random_points, with_layout

from _helpers import (assert_close, assert_identical, bytes_in_message, check_float32, compare_with_reference,
                      op_inputs, value_and_grads)

# ---------------------------------------------------------------------------
# Cases: (n, D, scale, seed). Scaled inputs move ||z_i - z_j||^2 / (4 gamma) across the
# kernel's range (phi_D decays slowly, like s^(-1/2), so every pair matters).
# ---------------------------------------------------------------------------

SMALL = [(n, d, scale, seed) for (n, d) in ((2, 2), (3, 3), (17, 2), (17, 20), (17, 128))
         for scale, seed in ((0.2, 0), (1.0, 1), (3.0, 2))]
SMALL_FEW = [(2, 2, 0.2, 0), (3, 3, 3.0, 1), (17, 2, 1.0, 2), (17, 20, 0.2, 3), (17, 128, 1.0, 4)]
D1 = [(2, 1, 1.0, 0), (5, 1, 0.2, 1), (17, 1, 3.0, 2)]  # the exact kernel serves D = 1
MEDIUM = [(256, 3, 1.0, 0), (256, 20, 3.0, 1), (256, 128, 0.2, 2)]
LARGE = [(1000, 2, 1.0, 3), (1000, 20, 0.2, 4)]


def case_id(case):
    n, d, scale, seed = case
    return f"n{n}-D{d}-x{scale:g}-s{seed}"


# Each option: build(n, d, scale, seed) -> ([z] (float64, CPU), fn(z, backend), ref_fn(z)).
def _cw(kernel, gamma=None, log=False):
    def build(n, d, scale, seed):
        z = random_points(n, d, seed=seed, scale=scale)

        def fn(z, backend="auto"):
            return gaussreg.cw_distance(z, gamma=gamma, kernel=kernel, log=log, backend=backend)

        def ref_fn(z):
            return ref.cw_distance(z, gamma=gamma, kernel=kernel, log=log)

        return [z], fn, ref_fn
    return build


OPTIONS = {
    "approx": _cw("approx"),
    "approx_gamma0.3": _cw("approx", 0.3),
    "approx_gamma2": _cw("approx", 2.0),
    "approx_log": _cw("approx", log=True),
    "exact": _cw("exact"),
    "exact_gamma0.7": _cw("exact", 0.7),
    "exact_log": _cw("exact", log=True),
}
EXACT = ("exact", "exact_gamma0.7", "exact_log")
MAIN_OPTIONS = ("approx", "approx_log", "exact")
SMALL_CASES = ([(o, c) for o in MAIN_OPTIONS for c in SMALL]
               + [(o, c) for o in sorted(OPTIONS) if o not in MAIN_OPTIONS for c in SMALL_FEW]
               + [(o, c) for o in EXACT for c in D1])
# The reference is O(n^2 D) (and mpmath per pair for "exact"): a covering subset beyond n = 17.
MEDIUM_CASES = ([(o, c) for o in ("approx", "approx_gamma0.3") for c in MEDIUM[:2]]
                + [("approx_log", MEDIUM[2])])
LARGE_CASES = [("approx", LARGE[1]), ("approx_log", LARGE[0])]


# ---------------------------------------------------------------------------
# 1. value and gradient vs reference (float64)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["approx", "exact"])
def test_spelled_out(kernel):
    """SPEC 5 with explicit loops, math/mpmath and Silverman's default gamma."""
    z = random_points(5, 3, seed=4, scale=0.8)
    n, d = 5, 3
    gamma = (4 / (3 * n)) ** 0.4

    def phi(s):
        if kernel == "exact":
            return float(mpmath.hyp1f1(0.5, d / 2, -s))
        return (1 + 4 * s / (2 * d - 3)) ** -0.5

    pairs = sum(phi(float((z[i] - z[j]).pow(2).sum()) / (4 * gamma)) for i in range(n) for j in range(n))
    points = sum(phi(float(z[i].pow(2).sum()) / (2 + 4 * gamma)) for i in range(n))
    expected = (pairs / math.sqrt(gamma) + n * n / math.sqrt(1 + gamma)
                - 2 * n / math.sqrt(gamma + 0.5) * points) / (2 * n * n * math.sqrt(math.pi))
    assert gaussreg.cw_distance(z, kernel=kernel).item() == pytest.approx(expected, rel=1e-12)
    log = gaussreg.cw_distance(z, kernel=kernel, log=True).item()
    assert log == pytest.approx(math.log(expected), rel=1e-12, abs=1e-12)


def test_approx_is_official_cw_normality():
    """SPEC 5: 2 sqrt(pi) d_cw^2 = Duda eq. (2) + 1/sqrt(1 + gamma) (the CWAE cw_normality)."""
    z = random_points(6, 20, seed=1)
    n, d, gamma = 6, 20, 0.5
    dist = sum(1 / math.sqrt(gamma + float((z[i] - z[j]).pow(2).sum()) / (2 * d - 3))
               for i in range(n) for j in range(n)) / n**2
    radii = sum(1 / math.sqrt(gamma + 0.5 + float(z[i].pow(2).sum()) / (2 * d - 3)) for i in range(n)) / n
    cw_normality = dist + 1 / math.sqrt(1 + gamma) - 2 * radii
    got = 2 * math.sqrt(math.pi) * gaussreg.cw_distance(z, gamma=gamma).item()
    assert got == pytest.approx(cw_normality, rel=1e-12)


# ---------------------------------------------------------------------------
# 2. gradcheck (float64, tiny inputs)
# ---------------------------------------------------------------------------

GRADCHECK_CASES = ([(o, (4, 3, 0.7)) for o in sorted(OPTIONS)]
                   + [(o, c) for o in MAIN_OPTIONS for c in ((2, 2, 0.3), (3, 2, 1.5))]
                   + [(o, (3, 1, 0.5)) for o in EXACT])


# ---------------------------------------------------------------------------
# 3. float32 vs float64
# ---------------------------------------------------------------------------

F32_CASES = ([(o, s) for o in ("approx", "approx_log") for s in ((256, 3), (1024, 8), (4096, 8), (4096, 20))]
             + [("exact", s) for s in ((256, 3), (1024, 8))])
REF_F32_MAX_ELEMENTS = 2**25  # n^2 D: the reference's own float32 error is measured below this


@pytest.mark.parametrize("option, shape", F32_CASES, ids=[f"{o}-n{s[0]}-D{s[1]}" for o, s in F32_CASES])
def test_float32_error(option, shape, record_property):
    n, d = shape
    inputs, fn, ref_fn = OPTIONS[option](n, d, 1.0, 11)
    run_reference = n * n * d <= REF_F32_MAX_ELEMENTS and option not in EXACT  # mpmath per pair: too slow
    check_float32(fn, ref_fn, inputs, value_floor=0.0, run_reference=run_reference,
                  record_property=record_property, label=f"cw_distance {option} n={n} D={d}",
                  log_value=option.endswith("_log"))


# ---------------------------------------------------------------------------
# 4. layouts and half precision
# ---------------------------------------------------------------------------

LAYOUT_OPTIONS = ("approx", "exact_log")
HALF_OPTIONS = ("approx", "approx_log", "exact")

# ---------------------------------------------------------------------------
# 5. CPU / CUDA parity
# ---------------------------------------------------------------------------

CUDA_OPTIONS = ("approx", "approx_gamma0.3", "approx_log", "exact", "exact_log")


def value_floor(option):
    """The size of the value's terms, below which errors are absolute (none: relative throughout)."""
    return 0.0


@pytest.mark.cuda
def test_cuda_exact_d1():
    inputs, fn, ref_fn = OPTIONS["exact"](17, 1, 1.0, 3)
    v_gpu, (g_gpu,) = value_and_grads(fn, [inputs[0].cuda()])
    v_ref, (g_ref,) = value_and_grads(ref_fn, inputs)
    assert_close(v_gpu, v_ref, 1e-10, 0)
    assert_close(g_gpu, g_ref, 1e-10, 1e-10 * float(g_ref.abs().max()))


@pytest.mark.cuda
def test_cuda_half_and_layouts():
    z = random_points(50, 6, seed=1, device="cuda")
    for layout in LAYOUTS:
        assert_close(gaussreg.cw_distance(with_layout(z, layout)), gaussreg.cw_distance(z), 1e-12, 0, what=layout)
    h = gaussreg.cw_distance(z.bfloat16())
    assert h.dtype == torch.float32 and h.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_memory_error():
    huge = torch.zeros(1, 64, device="cuda").expand(2**40, 64)
    with pytest.raises(MemoryError) as info:
        gaussreg.cw_distance(huge)
    assert bytes_in_message(str(info.value)) >= 2**40 * 64 * 4


# ---------------------------------------------------------------------------
# 6. SPEC errors
# ---------------------------------------------------------------------------


def _z(d=3):
    return random_points(6, d, seed=0)


def _with(value, row=2, col=1):
    z = _z()
    z[row, col] = value
    return z


BAD_CALLS = {
    # wrong rank
    "z_rank1": (lambda: gaussreg.cw_distance(torch.randn(6, dtype=torch.float64)), ValueError, "2-D"),
    "z_rank3": (lambda: gaussreg.cw_distance(torch.randn(2, 6, 3)), ValueError, "2-D"),
    "z_rank0": (lambda: gaussreg.cw_distance(torch.tensor(1.0)), ValueError, "2-D"),
    # non-tensor
    "z_list": (lambda: gaussreg.cw_distance([[0.0, 1.0], [1.0, 0.0]]), TypeError, "z.*Tensor"),
    "z_numpy": (lambda: gaussreg.cw_distance(_z().numpy()), TypeError, "z.*Tensor"),
    # dtypes
    "z_int": (lambda: gaussreg.cw_distance(torch.ones(6, 3, dtype=torch.int64)), TypeError, "floating"),
    "z_uint8": (lambda: gaussreg.cw_distance(torch.ones(6, 3, dtype=torch.uint8)), TypeError, "floating"),
    "z_complex": (lambda: gaussreg.cw_distance(torch.ones(6, 3, dtype=torch.complex128)), TypeError, "floating"),
    # devices
    "z_meta": (lambda: gaussreg.cw_distance(torch.empty(6, 3, device="meta")), (ValueError, TypeError), "meta"),
    "z_meta_exact": (lambda: gaussreg.cw_distance(torch.empty(6, 3, device="meta"), kernel="exact"),
                     (ValueError, TypeError), "meta"),
    # sizes
    "n1": (lambda: gaussreg.cw_distance(_z()[:1]), ValueError, "at least 2"),
    "n0": (lambda: gaussreg.cw_distance(_z()[:0], kernel="exact"), ValueError, "at least 2"),
    "D1_approx": (lambda: gaussreg.cw_distance(_z(1)), ValueError, "D >= 2"),
    "D0_exact": (lambda: gaussreg.cw_distance(torch.zeros(6, 0), kernel="exact"), ValueError, "D = 0"),
    # non-finite points
    "z_nan": (lambda: gaussreg.cw_distance(_with(float("nan"))), ValueError, "NaN"),
    "z_inf": (lambda: gaussreg.cw_distance(_with(float("inf"))), ValueError, "Inf"),
    "z_neg_inf_exact": (lambda: gaussreg.cw_distance(_with(-float("inf"), 5, 2), kernel="exact"), ValueError, "Inf"),
    "z_nan_log": (lambda: gaussreg.cw_distance(_with(float("nan")), log=True), ValueError, "NaN"),
    "z_nan_reference": (lambda: gaussreg.cw_distance(_with(float("nan")), backend="reference"), ValueError, "NaN"),
    "z_nan_half": (lambda: gaussreg.cw_distance(_with(float("nan")).half()), ValueError, "NaN"),
    # gamma
    "gamma_zero": (lambda: gaussreg.cw_distance(_z(), gamma=0.0), ValueError, "gamma"),
    "gamma_negative": (lambda: gaussreg.cw_distance(_z(), gamma=-0.5), ValueError, "gamma"),
    "gamma_nan": (lambda: gaussreg.cw_distance(_z(), gamma=float("nan")), ValueError, "gamma"),
    "gamma_inf": (lambda: gaussreg.cw_distance(_z(), gamma=float("inf"), kernel="exact"), ValueError, "gamma"),
    "gamma_string": (lambda: gaussreg.cw_distance(_z(), gamma="silverman"), TypeError, "gamma"),
    "gamma_bool": (lambda: gaussreg.cw_distance(_z(), gamma=True), TypeError, "gamma"),
    # kernel, log
    "kernel_bogus": (lambda: gaussreg.cw_distance(_z(), kernel="approximate"), ValueError, "kernel"),
    "kernel_none": (lambda: gaussreg.cw_distance(_z(), kernel=None), ValueError, "kernel"),
    "log_int": (lambda: gaussreg.cw_distance(_z(), log=1), TypeError, "log"),
    "log_string": (lambda: gaussreg.cw_distance(_z(), log="yes"), TypeError, "log"),
    # backend
    "backend_bogus": (lambda: gaussreg.cw_distance(_z(), backend="bogus"), ValueError, "backend"),
}


def assert_still_works():
    z = random_points(9, 4, seed=5, scale=0.5)
    compare_with_reference(lambda z: gaussreg.cw_distance(z, kernel="exact"),
                           lambda z: ref.cw_distance(z, kernel="exact"), [z], what="after an error")


MEMORY_CALLS = {  # the fronts' memory checks, each given a 2^40 x 64 expanded tensor
    "approx": lambda huge: gaussreg.cw_distance(huge),
    "exact_log": lambda huge: gaussreg.cw_distance(huge, kernel="exact", log=True),
    "float64": lambda huge: gaussreg.cw_distance(torch.zeros(1, 64, dtype=torch.float64).expand(huge.shape),
                                                 gamma=0.5),
}



# ---------------------------------------------------------------------------
# 7. opcheck and the pair_sum contract for this stem's kernels
# ---------------------------------------------------------------------------


def _approx(params):
    q = params[0]
    return lambda t, pi, pj: (1 + q * t).pow(-0.5)


def _exact(params):
    c, b = params
    return lambda t, pi, pj: ref.hyp1f1_neg(0.5, b, c * t)


def op_cases(dtype):
    """name -> (pair_sum arguments, brute-force kernel k(t, p_i, p_j))."""
    x, y, _, _ = op_inputs(dtype)
    origin = torch.zeros(1, x.shape[1], dtype=dtype)
    approx, exact = pair_sum.CW_APPROX, pair_sum.CW_EXACT
    q, e = [0.37], [0.3, 2.5]
    return {
        "self_approx": ((x, None, None, None, "cramer_wold", approx, q, True, True), _approx(q)),
        "self_approx_nograd": ((x, None, None, None, "cramer_wold", approx, q, False, False), _approx(q)),
        "cross_approx": ((x, y, None, None, "cramer_wold", approx, q, True, True), _approx(q)),
        "origin_approx": ((x, origin, None, None, "cramer_wold", approx, q, True, True), _approx(q)),
        "self_exact": ((x, None, None, None, "cramer_wold", exact, e, True, True), _exact(e)),
        "cross_exact": ((x, y, None, None, "cramer_wold", exact, e, True, True), _exact(e)),
        "origin_exact_nograd": ((x, origin, None, None, "cramer_wold", exact, e, False, False), _exact(e)),
    }


OP_CASES = ["self_approx", "self_approx_nograd", "cross_approx", "origin_approx", "self_exact", "cross_exact",
            "origin_exact_nograd"]
OPCHECK_CASES = [(name, torch.float64) for name in OP_CASES] + [("self_exact", torch.float32)]


# ---------------------------------------------------------------------------
# 8. torch.compile
# ---------------------------------------------------------------------------

# The options the compiled-loss check runs (tests/test_pair_sum_losses.py).
COMPILE_OPTIONS = ("approx", "approx_log", "exact")


def test_compile_fullgraph_pair_sum_op():
    """The custom op itself traces (fake impl + autograd registration) with fullgraph=True."""
    torch._dynamo.reset()
    z = random_points(20, 4, seed=1)

    def f(z):
        pairs, _, _ = torch.ops.gaussreg.pair_sum(z, None, None, None, "cramer_wold", pair_sum.CW_EXACT,
                                                  [0.5, 2.0], True, False)
        return torch.log(pairs)

    eager_v, (eager_g,) = value_and_grads(f, [z])
    compiled_v, (compiled_g,) = value_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), [z])
    assert_close(compiled_v, eager_v, 1e-14, 0)
    assert_close(compiled_g, eager_g, 1e-14, 1e-17)


# ---------------------------------------------------------------------------
# autograd edge cases and determinism
# ---------------------------------------------------------------------------

# The options the autograd edge-case and determinism checks run (the checks themselves:
# tests/test_pair_sum_losses.py, one table over the pair-sum stems).
EDGE_OPTIONS = ("approx", "approx_log", "exact")


def test_default_gamma_is_silverman():
    z = random_points(40, 6, seed=3)
    assert_identical(gaussreg.cw_distance(z), gaussreg.cw_distance(z, gamma=(4 / (3 * 40)) ** 0.4))
