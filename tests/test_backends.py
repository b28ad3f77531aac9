"""Backend selection, the compiled 1F1, and mean_field_sigma.

``gaussreg.backends()`` reports what was built and what runs; ``backend=`` picks the
compiled kernels ("native"), the plain-PyTorch oracle ("reference") or the first that
runs ("auto"). ``gaussreg._C.hyp1f1_neg`` is checked against mpmath, and
``gaussreg.mean_field_sigma`` against ``gaussreg.reference.mean_field_sigma`` (an
independent implementation) and against a direct mpmath minimization check of SPEC 3's f.
"""
import math

import mpmath
import numpy as np
import pytest
import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.testing import random_points

from _helpers import assert_close, assert_identical, cuda_ok, value_and_grads

# ---------------------------------------------------------------------------
# gaussreg.backends()
# ---------------------------------------------------------------------------


def test_backends_structure():
    info = gaussreg.backends()
    assert set(info) == {"cpu", "cuda"}
    for name, entry in info.items():
        assert set(entry) >= {"built", "available", "detail"}, name
        assert isinstance(entry["built"], bool) and isinstance(entry["available"], bool), name
        assert isinstance(entry["detail"], str) and entry["detail"], name
        assert entry["built"] or not entry["available"], f"{name}: available but not built"
    assert info["cpu"]["built"] and info["cpu"]["available"], info["cpu"]["detail"]
    if not torch.cuda.is_available():
        assert info["cuda"]["available"] is False


def test_backends_is_stable():
    assert gaussreg.backends() == gaussreg.backends()


def test_every_module_the_build_made_is_installed():
    """An editable install used to leave gaussreg._cuda behind in the build folder (setuptools
    copied only the registered gaussreg._C): every module the build made must import, the
    CUDA one without a GPU too; a module the build skipped is reported with the build's
    reason (GAUSSREG_NO_CUDA=1, no nvcc, no GPU visible)."""
    info = pytest.importorskip("gaussreg._build_info", reason="not built by setup.py")
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("gaussreg._C") is not None
    found = importlib.util.find_spec("gaussreg._cuda") is not None
    if info.CUDA_BUILD:
        assert found, "the build compiled gaussreg._cuda but it is not installed"
        # In a child: loading the CUDA runtime may not be undone (see _native._preload).
        out = subprocess.run([sys.executable, "-c", "import gaussreg._cuda"], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
    elif not found:
        assert gaussreg.backends()["cuda"]["detail"] == info.CUDA_REASON


@pytest.mark.cuda
def test_backends_cuda_available():
    info = gaussreg.backends()["cuda"]
    assert info["built"] and info["available"], info["detail"]
    assert cuda_ok()


# ---------------------------------------------------------------------------
# backend= on every loss
# ---------------------------------------------------------------------------


def _losses():
    """name -> (fn(*points, backend), reference fn(*points), float64 inputs)."""
    z = random_points(40, 6, seed=1, scale=0.7)
    y = random_points(30, 6, seed=2)
    sigma = 0.4 + torch.rand(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return {
        "gaussian_l2_to_normal": (lambda z, backend="auto": gaussreg.gaussian_l2_to_normal(z, 0.8, backend=backend),
                                  lambda z: ref.gaussian_l2_to_normal(z, 0.8), [z]),
        "gaussian_l2_to_normal_per_point": (
            lambda z, backend="auto": gaussreg.gaussian_l2_to_normal(z, sigma, backend=backend),
            lambda z: ref.gaussian_l2_to_normal(z, sigma), [z]),
        "gaussian_l2_to_normal_mean_field": (
            lambda z, backend="auto": gaussreg.gaussian_l2_to_normal(z, "mean_field", backend=backend),
            lambda z: ref.gaussian_l2_to_normal(z, "mean_field"), [z]),
        "gaussian_l2": (lambda x, y, backend="auto": gaussreg.gaussian_l2(x, y, 0.6, backend=backend),
                        lambda x, y: ref.gaussian_l2(x, y, 0.6), [z, y]),
        "mmd_imq": (lambda z, y, backend="auto": gaussreg.mmd(z, y, backend=backend),
                    lambda z, y: ref.mmd(z, y), [z, y]),
        "mmd_rbf_analytic": (lambda z, backend="auto": gaussreg.mmd(z, "analytic", kernel="rbf", backend=backend),
                             lambda z: ref.mmd(z, "analytic", kernel="rbf"), [z]),
        "mmd_drawn": (
            lambda z, backend="auto": gaussreg.mmd(z, generator=torch.Generator().manual_seed(5), backend=backend),
            lambda z: ref.mmd(z, generator=torch.Generator().manual_seed(5)), [z]),
        "cw_approx": (lambda z, backend="auto": gaussreg.cw_distance(z, backend=backend),
                      lambda z: ref.cw_distance(z), [z]),
        "cw_exact_log": (lambda z, backend="auto": gaussreg.cw_distance(z[:12], kernel="exact", log=True,
                                                                        backend=backend),
                         lambda z: ref.cw_distance(z[:12], kernel="exact", log=True), [z]),
    }


LOSSES = sorted(_losses())


@pytest.mark.parametrize("name", LOSSES)
def test_native_matches_auto_on_cpu(name):
    fn, _, inputs = _losses()[name]
    v_native, g_native = value_and_grads(lambda *t: fn(*t, backend="native"), inputs)
    v_auto, g_auto = value_and_grads(fn, inputs)
    assert_identical(v_native, v_auto, what="value")
    for a, b in zip(g_native, g_auto):
        assert_identical(a, b, what="gradient")


@pytest.mark.parametrize("name", LOSSES)
def test_reference_backend_is_the_reference(name):
    fn, ref_fn, inputs = _losses()[name]
    v, g = value_and_grads(lambda *t: fn(*t, backend="reference"), inputs)
    v_ref, g_ref = value_and_grads(ref_fn, inputs)
    assert_close(v, v_ref, 1e-15, 1e-16, what="value")
    for a, b in zip(g, g_ref):
        assert_close(a, b, 1e-14, 1e-16, what="gradient")


@pytest.mark.parametrize("name", LOSSES)
def test_native_matches_reference(name):
    fn, ref_fn, inputs = _losses()[name]
    v, g = value_and_grads(lambda *t: fn(*t, backend="native"), inputs)
    v_ref, g_ref = value_and_grads(ref_fn, inputs)
    assert_close(v, v_ref, 1e-10, 1e-13, what="value")
    for a, b in zip(g, g_ref):
        assert_close(a, b, 1e-9, 1e-9 * float(b.abs().max()), what="gradient")


@pytest.mark.parametrize("backend", ["bogus", "", "cuda", "Native", None])
@pytest.mark.parametrize("name", LOSSES)
def test_bad_backend_raises(name, backend):
    fn, _, inputs = _losses()[name]
    with pytest.raises(ValueError, match="backend"):
        fn(*inputs, backend=backend)


@pytest.mark.parametrize("name", ["gaussian_l2_to_normal", "mmd_imq", "cw_approx"])
def test_native_on_unsupported_device_names_it(name):
    fn, _, inputs = _losses()[name]
    meta = [t.to("meta") for t in inputs]
    with pytest.raises(ValueError, match="meta"):
        fn(*meta, backend="native")


# ---------------------------------------------------------------------------
# gaussreg._C.hyp1f1_neg against mpmath
# ---------------------------------------------------------------------------

HYP_DIMS = (1, 2, 3, 20, 64, 128)
# (a, b) as the exact Cramer-Wold kernel uses them (phi_D and its derivative) and the
# other combinations with a <= b (for a > b, 1F1(a; b; -s) changes sign: no relative error).
HYP_CASES = [(d, a, b) for d in HYP_DIMS for a in (0.5, 1.5) for b in (d / 2, d / 2 + 1) if a <= b]


def _hyp_arguments(b):
    s = np.concatenate([[0.0, 1e-300, 5e-324], np.logspace(-12, 4, 90),
                        [1e4, 0.5, 1.0, 39.999, 40.0, 40.001, b * 0.999, b, b * 1.001, b + 40.0]])
    return np.sort(s)


@pytest.mark.parametrize("d, a, b", HYP_CASES, ids=[f"D{d}-a{a}-b{b:g}" for d, a, b in HYP_CASES])
def test_hyp1f1_neg_matches_mpmath(d, a, b):
    import gaussreg._C as C

    s = _hyp_arguments(b)
    got = np.asarray(C.hyp1f1_neg(a, b, s))
    assert got.shape == s.shape and got.dtype == np.float64
    worst, where = 0.0, None
    with mpmath.workdps(40):
        for x, g in zip(s, got):
            exact = mpmath.hyp1f1(a, b, -mpmath.mpf(float(x)))
            if abs(exact) < mpmath.mpf("1e-300"):  # below double range: must underflow to ~0, not blow up
                assert abs(g) < 1e-290, f"1F1({a}; {b}; -{x}) = {exact} but got {g}"
                continue
            err = float(abs((mpmath.mpf(float(g)) - exact) / exact))
            if err > worst:
                worst, where = err, x
    assert worst <= 1e-12, f"max rel err {worst:.2e} at s = {where!r} for a={a}, b={b}"


def test_hyp1f1_neg_special_values():
    import gaussreg._C as C

    s = np.array([0.0, 0.3, 2.0, 50.0, 700.0])
    # 1F1(a; a; -s) = exp(-s)
    np.testing.assert_allclose(C.hyp1f1_neg(1.5, 1.5, s), np.exp(-s), rtol=1e-14, atol=0)
    # 1F1(1/2; 3/2; -s) = sqrt(pi) erf(sqrt(s)) / (2 sqrt(s)), and 1 at s = 0
    expected = [1.0] + [math.sqrt(math.pi) * math.erf(math.sqrt(v)) / (2 * math.sqrt(v)) for v in s[1:]]
    np.testing.assert_allclose(C.hyp1f1_neg(0.5, 1.5, s), expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------
# mean_field_sigma
# ---------------------------------------------------------------------------

MF_DIMS = (1, 2, 3, 20, 64, 128, 1024)


def _radii(d):
    sd = math.sqrt(d)
    return torch.tensor([0.0, 1e-3, 0.1, 0.5, 1.0, 0.5 * sd, sd, 1.5 * sd, 2 * sd, sd + 10, 50.0, 300.0],
                        dtype=torch.float64)


@pytest.mark.parametrize("d", MF_DIMS)
def test_mean_field_sigma_matches_reference(d):
    r = _radii(d)
    got = gaussreg.mean_field_sigma(r, d)
    expected = ref.mean_field_sigma(r, d)
    assert got.dtype == torch.float64 and got.shape == r.shape
    assert_close(got, expected, 1e-10, 0, what=f"mean_field_sigma D={d}")


@pytest.mark.parametrize("d", MF_DIMS)
def test_mean_field_sigma_at_zero_is_one(d):
    got = gaussreg.mean_field_sigma(torch.zeros(3, dtype=torch.float64), d)
    assert_close(got, torch.ones(3, dtype=torch.float64), 1e-12, 0, what=f"sigma(0), D={d}")


def _f(sigma, r, d):
    """SPEC 3's f(sigma) in mpmath, less its constant term (4 pi)^(-D/2), which does not move
    the minimizer but at large r and D dwarfs the rest beyond any working precision."""
    s2 = mpmath.mpf(sigma) ** 2
    r2 = mpmath.mpf(r) ** 2
    return ((4 * mpmath.pi * s2) ** (-mpmath.mpf(d) / 2)
            - 2 * mpmath.exp(-r2 / (2 * (1 + s2))) * (2 * mpmath.pi * (1 + s2)) ** (-mpmath.mpf(d) / 2))


@pytest.mark.parametrize("d", (1, 3, 20, 128))
def test_mean_field_sigma_minimizes_f(d):
    """Independent of both implementations: f(sigma) is below f at sigma (1 +- 1e-4)."""
    r = _radii(d)
    sigma = gaussreg.mean_field_sigma(r, d)
    with mpmath.workdps(60):
        for ri, si in zip(r.tolist(), sigma.tolist()):
            at = _f(si, ri, d)
            for step in (1 - 1e-4, 1 + 1e-4):
                assert _f(si * step, ri, d) > at, f"D={d}, r={ri}: sigma={si} is not the minimizer"


def test_mean_field_sigma_grows_with_r():
    r = torch.linspace(0, 20, 50, dtype=torch.float64)
    sigma = gaussreg.mean_field_sigma(r, 8)
    assert bool((sigma[1:] > sigma[:-1]).all())


@pytest.mark.parametrize("d", MF_DIMS)
def test_mean_field_sigma_approx_formula(d):
    r = _radii(d)
    got = gaussreg.mean_field_sigma(r, d, approx=True)
    expected = torch.tensor([1.0 + v * v / (2.0 * d) for v in r.tolist()], dtype=torch.float64)
    assert_close(got, expected, 1e-15, 0, what="eq. (12)")


def test_mean_field_sigma_dtypes_and_shapes():
    r32 = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float32)
    out = gaussreg.mean_field_sigma(r32, 4)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    assert_close(out, ref.mean_field_sigma(r32.double(), 4), 1e-6, 0)
    r = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert not gaussreg.mean_field_sigma(r, 3).requires_grad  # a bandwidth choice: no gradient


@pytest.mark.parametrize("call, exc", [
    (lambda: gaussreg.mean_field_sigma(torch.tensor([-1.0]), 3), ValueError),
    (lambda: gaussreg.mean_field_sigma(torch.tensor([float("nan")]), 3), ValueError),
    (lambda: gaussreg.mean_field_sigma(torch.tensor([float("inf")]), 3), ValueError),
    (lambda: gaussreg.mean_field_sigma(torch.tensor([1.0]), 0), ValueError),
    (lambda: gaussreg.mean_field_sigma(torch.tensor([1.0]), True), ValueError),
    (lambda: gaussreg.mean_field_sigma(torch.tensor([1.0]), 2.5), ValueError),
    (lambda: gaussreg.mean_field_sigma([1.0, 2.0], 3), TypeError),
    (lambda: gaussreg.mean_field_sigma(torch.ones(2, dtype=torch.complex64), 3), TypeError),
    (lambda: gaussreg.mean_field_sigma(torch.ones(2, dtype=torch.bool), 3), TypeError),
], ids=["negative", "nan", "inf", "dim0", "dim_bool", "dim_float", "list", "complex", "bool"])
def test_mean_field_sigma_errors(call, exc):
    with pytest.raises(exc):
        call()


def test_mean_field_sigma_empty_and_huge_radii():
    """Regressions: an empty r gave amax's RuntimeError; r beyond ~1e77 (D = 3) gave inf,
    the bracket's upper end (1 + r^2/D)^2 overflowing although sigma ~ r / sqrt(D) is finite."""
    assert gaussreg.mean_field_sigma(torch.ones(0, dtype=torch.float64), 3).shape == (0,)
    r = torch.tensor([1e6, 1e100, 1e150, 1e153], dtype=torch.float64)
    for d in (1, 3, 1024):
        assert_close(gaussreg.mean_field_sigma(r, d), ref.mean_field_sigma(r, d), 1e-10, 0, what=f"D={d}")


# ---------------------------------------------------------------------------
# a missing compiled module: import works, calls fall back or name the fix
# ---------------------------------------------------------------------------

def test_missing_cpu_module_falls_back_or_names_the_fix(monkeypatch):
    from gaussreg import _native

    monkeypatch.setitem(_native._modules, "_C", None)
    monkeypatch.setattr(_native, "_load", lambda name: None)
    monkeypatch.setattr(_native, "_warned_fallback", set())
    z = random_points(30, 3, seed=5)
    with pytest.warns(RuntimeWarning, match="falling back"):
        fallback = gaussreg.gaussian_l2_to_normal(z)
    assert_close(fallback, gaussreg.reference.gaussian_l2_to_normal(z), 0, 0)
    with pytest.raises(RuntimeError, match="reinstall"):
        gaussreg.gaussian_l2_to_normal(z, backend="native")


def test_a_module_without_a_newer_engine_is_reported():
    """A module built from older sources lacks newer entry points: native names the fix,
    auto falls back to the reference with a warning."""
    import warnings

    from gaussreg import _native

    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError, match="no no_such_engine .*older sources"):
        _native.use_native(cpu, "native", "demo_loss", entry="no_such_engine")
    _native._warned_fallback.discard(("cpu", "demo_loss"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.use_native(cpu, "auto", "demo_loss", entry="no_such_engine") is False
    assert any("no_such_engine" in str(w.message) for w in caught)
    assert _native.use_native(cpu, "native", "demo_loss", entry="cdf_pairs_forward") is True
