"""Hostile inputs (issue 8, item 2), over every loss of the table in _loss_cases.py.

Each bad point tensor (NaN, +/-Inf, empty, 1-D, 3-D, integer, bool, complex, a list, a
numpy array, a tensor requiring grad on another device, mismatched D) and each bad option
(a generator, a prior or per-point widths on another device than the points among them)
must raise TypeError or ValueError whose message names the argument; afterwards the
library must still compute the right value and gradients. Views that are valid input
(transposed, sliced, offset, expanded with stride 0, overlapping rows) must give what
reference.py gives on the same view, gradients flowing back to the viewed tensor.
"""
import re

import numpy as np
import pytest
import torch
from _helpers import assert_close, cuda_ok
from _loss_cases import CASE_IDS, CASES, LossCase, points_for, value_and_grads

import gaussreg
from gaussreg import _checks, engines
from gaussreg.engines import cdf_attraction as cdf_engine, pair_sum


def _with(value):
    def make(t):
        t = t.clone()
        t[1, 0] = value
        return t
    return make


NAN_OR_INF = "{arg} contains NaN or Inf"
TOO_FEW = "{arg} needs at least {min_rows} point"
NOT_2D = "{arg} must be a 2-D tensor"
NOT_FLOAT = "{arg} must be a floating-point tensor"
NOT_TENSOR = r"{arg} must be a (torch\.Tensor|tensor)"

# name -> (make the bad value from a valid float64 point tensor, exception, message regex)
BAD_POINTS = {
    "nan": (_with(float("nan")), ValueError, NAN_OR_INF),
    "+inf": (_with(float("inf")), ValueError, NAN_OR_INF),
    "-inf": (_with(-float("inf")), ValueError, NAN_OR_INF),
    "+inf_and_-inf": (lambda t: _with(-float("inf"))(_with(float("inf"))(t).t()).t(), ValueError, NAN_OR_INF),
    "nan_bfloat16": (lambda t: _with(float("nan"))(t).bfloat16(), ValueError, NAN_OR_INF),
    "inf_float32_requires_grad": (lambda t: _with(float("inf"))(t).float().requires_grad_(), ValueError,
                                  NAN_OR_INF),
    "nan_in_a_transposed_view": (lambda t: _with(float("nan"))(t).t().contiguous().t(), ValueError, NAN_OR_INF),
    "empty_rows": (lambda t: t[:0], ValueError, TOO_FEW),
    "one_row": (lambda t: t[:1], ValueError, TOO_FEW),
    "empty_columns": (lambda t: t[:, :0], ValueError, r"{arg} needs at least 1 dimension.*D = 0"),
    "empty_both": (lambda t: t[:0, :0], ValueError, TOO_FEW),
    "rank0": (lambda t: t[0, 0], ValueError, NOT_2D),
    "rank1": (lambda t: t[:, 0], ValueError, NOT_2D),
    "rank3": (lambda t: t[None], ValueError, NOT_2D),
    "rank3_batch": (lambda t: torch.stack([t, t]), ValueError, NOT_2D),
    "int64": (lambda t: t.long(), TypeError, NOT_FLOAT),
    "int32": (lambda t: t.int(), TypeError, NOT_FLOAT),
    "uint8": (lambda t: t.abs().to(torch.uint8), TypeError, NOT_FLOAT),
    "bool": (lambda t: t > 0, TypeError, NOT_FLOAT),
    "complex64": (lambda t: t.to(torch.complex64), TypeError, NOT_FLOAT),
    "complex128": (lambda t: t.to(torch.complex128), TypeError, NOT_FLOAT),
    "list": (lambda t: t.tolist(), TypeError, NOT_TENSOR),
    "numpy": (lambda t: t.numpy(), TypeError, NOT_TENSOR),
    "none": (lambda t: None, TypeError, NOT_TENSOR),
    "meta_requires_grad": (lambda t: torch.empty(t.shape, device="meta", requires_grad=True), ValueError,
                           r"\b{arg}\b.*meta"),
}


def _arg_cases():
    out = []
    for case in CASES:
        for k, arg in enumerate(case.args):
            for bad in BAD_POINTS:
                if bad == "none" and arg in case.optional_args:
                    continue
                if bad == "one_row" and case.min_rows < 2:  # a single point is a valid input there
                    continue
                out.append(pytest.param(case, k, bad, id=f"{case.name}-{arg}-{bad}"))
    return out


def _still_works(case: LossCase) -> None:
    """After an error: the right value and gradients on valid input."""
    points = points_for(case, n=7, d=3, seed=11)
    value, grads = value_and_grads(case.call, points)
    ref_value, ref_grads = value_and_grads(case.reference, points)
    assert_close(value, ref_value, 1e-9, 1e-12 * case.term_size, what=f"{case.name} value after an error")
    for g, h in zip(grads, ref_grads):
        assert_close(g, h, 1e-9, 1e-12 * case.term_size + 1e-9 * float(h.abs().max()),
                     what=f"{case.name} gradient after an error")


@pytest.mark.parametrize("dtype, big", [(torch.float16, 6e4), (torch.bfloat16, 3e38), (torch.float32, 3e38),
                                        (torch.float64, 1.7e308)], ids=str)
def test_the_finite_check_when_the_sum_overflows(dtype, big):
    """The check's fast path sums the values; finite values whose sum overflows still pass,
    and a NaN or an Inf among them is still found."""
    values = torch.full((8, 4), big, dtype=dtype)
    assert not torch.isfinite(values.sum())
    _checks.finite("z", values)
    _checks.finite("z", -values)
    for bad in (float("nan"), float("inf"), -float("inf")):
        spoiled = values.clone()
        spoiled[5, 2] = bad
        with pytest.raises(ValueError, match="z contains NaN or Inf"):
            _checks.finite("z", spoiled)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case, position, bad", _arg_cases())
def test_bad_point_argument_is_named(case, position, bad):
    make, error, pattern = BAD_POINTS[bad]
    points = points_for(case, n=7, d=3, seed=1)
    points[position] = make(points[position])
    with pytest.raises(error, match=pattern.format(arg=re.escape(case.args[position]), min_rows=case.min_rows)):
        case.call(*points)
    _still_works(case)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", [c for c in CASES if len(c.args) == 2], ids=lambda c: c.name)
def test_mismatched_dimensions_are_named(case):
    x, y = points_for(case, n=7, d=3, seed=1)
    with pytest.raises(ValueError, match=rf"{case.args[0]} and {case.args[1]} must have the same dimension D"):
        case.call(x, torch.cat([y, y[:, :1]], 1))
    _still_works(case)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", [c for c in CASES if c.min_dim > 1], ids=lambda c: c.name)
def test_too_few_dimensions(case):
    with pytest.raises(ValueError, match=rf"D >= {case.min_dim}, got {case.args[0]} with D = 1"):
        case.call(*points_for(case, n=7, d=1, seed=1))
    _still_works(case)


def _option_cases():
    return [pytest.param(case, k, id=f"{case.name}-{k}-{'-'.join(f'{a}={v!r}'[:30] for a, v in opt.items())}")
            for case in CASES for k, (opt, _, _) in enumerate(case.bad_options)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case, index", _option_cases())
def test_bad_option_is_named(case, index):
    options, error, pattern = case.bad_options[index]
    points = points_for(case, n=5, d=3, seed=2)
    with pytest.raises(error, match=pattern):
        case.call(*points, **options)
    _still_works(case)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("loss", ["cdf_attraction", "coordinate_cdf_attraction", "sliced_wasserstein"])
def test_p_as_a_float_or_numpy_number_is_that_p(loss, p):
    """Regression: sliced_wasserstein(p=2.0) reached the compiled op, which takes an int."""
    z = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    options = {"directions": _directions_of(z)} if loss == "sliced_wasserstein" else {}
    want = getattr(gaussreg, loss)(z, p=p, **options)
    for same in (float(p), np.int64(p), np.float32(p)):
        assert torch.equal(getattr(gaussreg, loss)(z, p=same, **options), want), repr(same)


def _directions_of(z):
    return torch.randn(5, z.shape[1], dtype=z.dtype, generator=torch.Generator().manual_seed(9))


# ---------------------------------------------------------------------------
# Views that are valid input: the reference on the same view, gradients into the base
# ---------------------------------------------------------------------------


def _view(layout: str, t: torch.Tensor):
    """(base leaf, function base -> a view holding t's values in ``layout``)."""
    n, d = t.shape
    if layout == "transposed":
        return t.t().contiguous(), lambda b: b.t()
    if layout == "sliced":
        base = torch.zeros(2 * n + 1, 3 * d, dtype=t.dtype)
        base[1::2, ::3] = t
        return base, lambda b: b[1::2, ::3]
    if layout == "offset":
        base = torch.zeros(n + 3, d + 2, dtype=t.dtype)
        base[2:2 + n, 1:1 + d] = t
        return base, lambda b: b[2:2 + n, 1:1 + d]
    if layout == "expanded_rows":  # stride 0 along the points: n equal points
        return t[:1].clone(), lambda b: b.expand(n, d)
    if layout == "expanded_columns":  # stride 0 along the coordinates: points on the diagonal
        return t[:, :1].clone(), lambda b: b.expand(n, d)
    if layout == "overlapping_rows":  # rows sharing memory: z_ij = b[i + j]
        base = torch.randn(n + d - 1, dtype=t.dtype, generator=torch.Generator().manual_seed(n))
        return base, lambda b: b.as_strided((n, d), (1, 1))
    raise ValueError(layout)


VIEW_LAYOUTS = ("transposed", "sliced", "offset", "expanded_rows", "expanded_columns", "overlapping_rows")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("layout", VIEW_LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_views_match_the_reference(case, layout):
    points = points_for(case, n=9, d=4, seed=3)
    bases, makers = zip(*(_view(layout, p) for p in points))

    def through(fn):
        return lambda *leaves: fn(*(make(b) for make, b in zip(makers, leaves)))

    value, grads = value_and_grads(through(case.call), bases)
    ref_value, ref_grads = value_and_grads(through(case.reference), bases)
    assert_close(value, ref_value, 1e-9, 1e-12 * case.term_size, what=f"{layout} value")
    for g, h in zip(grads, ref_grads):
        # For ranked losses the equal points of expanded_rows are tied; the gradient of the
        # base (1, D) is the sum over them, which does not depend on the order of ties.
        assert_close(g, h, 1e-9, 1e-12 * case.term_size + 1e-9 * float(h.abs().max()), what=f"{layout} gradient")


# ---------------------------------------------------------------------------
# Errors raised inside the compiled engines and by the custom ops' own checks
# ---------------------------------------------------------------------------


def test_engine_errors_leave_the_library_working(one_thread):
    z = torch.zeros(200, 3, dtype=torch.float64)  # 19900 tied distances in one bucket
    entry = cdf_engine.entry_bytes(z.device, z.dtype, z.shape[0])
    for _ in range(3):
        with pytest.raises(MemoryError, match="share one bucket"):
            gaussreg.cdf_attraction(z, max_sort_bytes=entry * 1000)
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="gaussreg::pair_sum: x must be"):
        pair_sum.pair_sum_op(x.long(), None, None, None, "mmd", pair_sum.MMD_IMQ, [1.0], False, False)
    with pytest.raises(ValueError, match="gaussreg::cdf_pairs: z must be"):
        cdf_engine.cdf_pairs_op(x[:1], None, torch.zeros(1, dtype=torch.float64), None, 1, 1, 0, False)
    with pytest.raises(ValueError, match="dtype code"):  # the C++ boundary's own check
        gaussreg._C.mmd_workspace_bytes(7, 5, 0, 3, 1)
    for case in CASES:
        _still_works(case)


# ---------------------------------------------------------------------------
# Devices: a generator, an option tensor or one of two point tensors on another device
# ---------------------------------------------------------------------------


class _GeneratorClaimingCuda(torch.Generator):
    """A CPU generator that says it is on cuda:0: the device checks run without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _drawing_calls(z, generator):
    """Every public entry point that draws with a user's generator, on z's device."""
    prior = gaussreg.GaussianMixture.separated(2, z.shape[1], dtype=z.dtype, device=z.device)
    return {
        "mmd": lambda: gaussreg.mmd(z, generator=generator),
        "sliced_wasserstein": lambda: gaussreg.sliced_wasserstein(z, generator=generator),
        "epps_pulley": lambda: gaussreg.epps_pulley(z, generator=generator),
        "GaussianMixture.sample": lambda: prior.sample(5, generator),
    }


@pytest.mark.parametrize("entry", ["mmd", "sliced_wasserstein", "epps_pulley", "GaussianMixture.sample"])
def test_generator_of_another_device_is_named(entry):
    z = torch.randn(7, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"generator is on cuda:0 but draws on cpu: pass torch.Generator\(device='cpu'\)"):
        _drawing_calls(z, _GeneratorClaimingCuda())[entry]()
    _drawing_calls(z, torch.Generator().manual_seed(0))[entry]()  # still works, with a CPU generator


def test_diagnostics_draw_on_the_cpu_whatever_the_points_device():
    z = torch.randn(50, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="generator is on cuda:0 but draws on cpu"):
        gaussreg.diagnostics.projection_ks(z, 4, generator=_GeneratorClaimingCuda())
    assert gaussreg.diagnostics.projection_ks(z, 4, generator=torch.Generator().manual_seed(0)).max >= 0


needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not cuda_ok(), reason="needs CUDA")]


def _still_works_on_cuda(case: LossCase) -> None:
    """After an error: on CUDA points, the reference's value and gradients (computed on the CPU)."""
    points = points_for(case, n=7, d=3, seed=11)
    value, grads = value_and_grads(case.call, [p.cuda() for p in points])
    ref_value, ref_grads = value_and_grads(case.reference, points)
    assert value.device.type == "cuda" and all(g.device.type == "cuda" for g in grads)
    assert_close(value.cpu(), ref_value, 1e-9, 1e-12 * case.term_size, what=f"{case.name} value on CUDA")
    for g, h in zip(grads, ref_grads):
        assert_close(g.cpu(), h, 1e-9, 1e-12 * case.term_size + 1e-9 * float(h.abs().max()),
                     what=f"{case.name} gradient on CUDA")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda, id="cuda")])
def test_every_case_on_cuda_matches_the_reference(case, _):
    _still_works_on_cuda(case)


def _split_cases():
    return [pytest.param(c, k, marks=needs_cuda, id=f"{c.name}-{c.args[k]}-on-cpu")
            for c in CASES if len(c.args) == 2 for k in range(2)]


@pytest.mark.parametrize("case, position", _split_cases())
def test_points_split_over_cpu_and_cuda_are_named(case, position):
    points = [p if k == position else p.cuda().requires_grad_()
              for k, p in enumerate(points_for(case, n=7, d=3, seed=1))]
    with pytest.raises(ValueError, match=rf"same device, got .*\b{case.args[position]} on cpu"):
        case.call(*points)
    _still_works_on_cuda(case)


def _cpu_options(z):
    """Calls on CUDA points z whose option tensor or generator is on the CPU: (call, message)."""
    n, d = z.shape
    cpu_points = torch.randn(n, d, dtype=z.dtype)
    cpu_prior = gaussreg.GaussianMixture.separated(2, d, dtype=z.dtype)
    return {
        "per_point_sigma": (lambda: gaussreg.gaussian_l2_to_normal(z, torch.ones(n, dtype=z.dtype)),
                            "sigma must be on z's device cuda:0, got cpu"),
        "gmm_ks_prior": (lambda: gaussreg.gmm_ks_loss(z, cpu_prior), r"prior is on cpu but z is on cuda:0: use prior.to"),
        "gmm_cov_prior": (lambda: gaussreg.gmm_cov_loss(z, cpu_prior), r"prior is on cpu but z is on cuda:0"),
        "mmd_prior_sample": (lambda: gaussreg.mmd(z, cpu_points), r"same device, got z on cuda:0, prior_sample on cpu"),
        "swae_prior_sample": (lambda: gaussreg.sliced_wasserstein(z, prior_sample=cpu_points),
                              r"same device, got z on cuda:0, prior_sample on cpu"),
        **{f"{name}_generator": (call, r"generator is on cpu but draws on cuda:0")
           for name, call in _drawing_calls(z, torch.Generator()).items()},
    }


@pytest.mark.parametrize("option", [pytest.param(o, marks=needs_cuda) for o in (
    "per_point_sigma", "gmm_ks_prior", "gmm_cov_prior", "mmd_prior_sample", "swae_prior_sample",
    "mmd_generator", "sliced_wasserstein_generator", "epps_pulley_generator", "GaussianMixture.sample_generator")])
def test_cpu_option_with_cuda_points_is_named(option):
    z = torch.randn(7, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    call, message = _cpu_options(z)[option]
    with pytest.raises(ValueError, match=message):
        call()
    for name, call in _drawing_calls(z, torch.Generator("cuda").manual_seed(0)).items():  # still works
        assert torch.isfinite(call()).all(), name


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda, id="cuda")])
def test_constant_cpu_tables_follow_cuda_points(_):
    """Fixed directions and an empirical target table are constants: moved to z's device, same values."""
    z = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    directions = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = gaussreg.targets.Empirical(torch.linspace(0.0, 12.0, 41, dtype=torch.float64))
    calls = {
        "sliced_wasserstein": lambda x: gaussreg.sliced_wasserstein(x, directions=directions),
        "epps_pulley": lambda x: gaussreg.epps_pulley(x, directions=directions),
        "cdf_attraction": lambda x: gaussreg.cdf_attraction(x, distances_target=target),
    }
    for name, call in calls.items():
        assert_close(call(z.cuda()).cpu(), call(z), 1e-10, 1e-12, what=name)


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda, id="cuda")])
def test_cuda_generator_in_the_diagnostics_is_named(_):
    z = torch.randn(50, 3, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="generator is on cuda:0 but draws on cpu"):
        gaussreg.diagnostics.projection_ks(z, 4, generator=torch.Generator("cuda"))
    assert gaussreg.diagnostics.projection_ks(z, 4, generator=torch.Generator().manual_seed(0)).max >= 0


@pytest.mark.parametrize("name", ["cdf_attraction", "mmd", "cw_distance", "sliced_wasserstein", "epps_pulley",
                                  "gaussian_l2_to_normal", "coordinate_cdf_attraction"])
def test_torch_func_transforms_need_the_reference_backend(name):
    """As README says: torch.func.grad refuses the compiled backends' custom ops (torch's
    generated autograd.Function has no setup_context) and works with backend="reference"."""
    loss = getattr(gaussreg, name)
    z = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    if engines.use_native(z.device, "auto", name):
        with pytest.raises(RuntimeError, match="setup_context"):
            torch.func.grad(lambda x: loss(x))(z)
    torch.manual_seed(0)  # the same draws (prior sample, directions) in both calls
    grad = torch.func.grad(lambda x: loss(x, backend="reference"))(z)
    leaf = z.clone().requires_grad_(True)
    torch.manual_seed(0)
    loss(leaf, backend="reference").backward()
    assert_close(grad, leaf.grad, 1e-12, 1e-12, what=f"{name}: torch.func.grad against backward")
