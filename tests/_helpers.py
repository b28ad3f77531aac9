"""Helpers shared by the gaussreg test files (no computation at import time)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, List, Sequence

import torch

import gaussreg

SEEDS = (0, 1, 2)
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float32, torch.float64)

# Tolerances of float64 comparisons against gaussreg.reference: both sides are float64,
# the library sums pairs in another order (and accumulates in blocks), so a few ulps of
# the largest term, amplified by cancellation in the difference of the loss's terms.
F64_RTOL = 1e-9
F64_ATOL = 1e-12


HOST_TESTS = Path(__file__).resolve().parent / "host"


def build_host_program(folder: Path, name: str) -> Path:
    """tests/host/<name>.cpp compiled against csrc/ (the shared CUDA headers run on the
    CPU) into `folder`; the test is skipped where there is no C++ compiler ($CXX or c++)."""
    import pytest

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    exe = folder / name
    subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", "-I", str(HOST_TESTS.parent.parent / "csrc"),
                    str(HOST_TESTS / f"{name}.cpp"), "-o", str(exe)], check=True)
    return exe


def run_host_program(exe: Path) -> List[dict]:
    """The JSON line of each case a host program prints."""
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines()]


def cuda_ok() -> bool:
    """CUDA tests run only where torch sees a GPU and gaussreg._cuda imports."""
    return torch.cuda.is_available() and bool(gaussreg.backends()["cuda"]["available"])


def _fmt_index(flat: int, shape) -> str:
    if len(shape) == 0:
        return "()"
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return str(tuple(reversed(idx)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = "") -> None:
    """|actual - expected| <= atol + rtol |expected| elementwise, with a useful report.

    On failure the message gives the max absolute error and where, the max relative
    error and where, and the worst violation of the tolerance with both values.
    Shapes must match exactly; NaN anywhere fails (a NaN loss is never acceptable); equal
    infinities match.
    """
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual).__name__}"
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    e = expected.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if a.numel() == 0:
        return
    assert not bool(torch.isnan(a).any()), f"{what}: actual contains NaN"
    # Equal values match, equal infinities too (a float32 result beyond float32's range is
    # inf on every engine; inf - inf would be NaN).
    err = torch.where(a == e, torch.zeros_like(a), (a - e).abs())
    rel = err / e.abs().clamp_min(1e-300)
    excess = err - (atol + rtol * e.abs())
    worst = int(torch.argmax(excess))
    if float(excess[worst]) <= 0:
        return
    shape = tuple(actual.shape)
    i_abs, i_rel = int(torch.argmax(err)), int(torch.argmax(rel))
    raise AssertionError(
        f"{what}: not close (rtol={rtol:g}, atol={atol:g}); "
        f"max abs err {float(err[i_abs]):.3e} at {_fmt_index(i_abs, shape)}, "
        f"max rel err {float(rel[i_rel]):.3e} at {_fmt_index(i_rel, shape)}; "
        f"worst at {_fmt_index(worst, shape)}: actual {float(a[worst])!r} vs expected {float(e[worst])!r} "
        f"({int((excess > 0).sum())} of {a.numel()} elements outside tolerance)")


def assert_identical(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bitwise equality (dtype, shape and every bit), with the same report on failure."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if not torch.equal(actual, expected):
        assert_close(actual, expected, 0.0, 0.0, what=f"{what} (bitwise)")
        raise AssertionError(f"{what}: not bitwise identical (differ only in NaN placement or signed zeros)")


def value_and_grads(fn: Callable, inputs: Sequence[torch.Tensor]):
    """fn(*inputs) and the gradients of it w.r.t. each input (fresh leaves, input dtype kept)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), [g.detach() for g in grads]


def compare_with_reference(fn: Callable, ref_fn: Callable, inputs: Sequence[torch.Tensor], *, rtol: float = F64_RTOL,
                           atol: float = F64_ATOL, grad_atol: float = None, what: str = "") -> None:
    """Value and every gradient of fn against ref_fn on the same float64 inputs.

    Gradients are compared with an absolute tolerance scaled by the largest gradient
    entry (entries far smaller than it are dominated by cancellation in either sum).
    """
    value, grads = value_and_grads(fn, inputs)
    ref_value, ref_grads = value_and_grads(ref_fn, inputs)
    assert value.dim() == 0 and value.dtype == ref_value.dtype, f"{what}: got {value.shape} {value.dtype}"
    assert_close(value, ref_value, rtol, atol, what=f"{what} value")
    for k, (g, h) in enumerate(zip(grads, ref_grads)):
        scale = float(h.abs().max()) if h.numel() else 0.0
        ga = grad_atol if grad_atol is not None else atol
        assert_close(g, h, rtol, ga + rtol * scale, what=f"{what} grad of input {k}")


def record_workspace_allocations(monkeypatch) -> list:
    """The byte sizes of the uint8 buffers (the engines' workspaces) allocated from now on, in order."""
    from gaussreg import _native

    sizes = []
    real_empty = _native.empty

    def recording_empty(shape, dtype, device, what):
        if dtype == torch.uint8:
            sizes.append(shape[0])
        return real_empty(shape, dtype, device, what)

    monkeypatch.setattr(_native, "empty", recording_empty)
    return sizes


def bytes_in_message(message: str) -> int:
    """The integer byte count in a MemoryError message ("... 12345 bytes ...")."""
    found = re.findall(r"(\d+)\s*bytes", message)
    assert found, f"no byte count in the MemoryError message: {message!r}"
    return max(int(f) for f in found)


def half_precision_check(fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
    """Half inputs: float32 value equal to the float32 computation on the upcast inputs,
    gradients in the input dtype equal to the float32 gradients rounded to it."""
    halves = [t.to(dtype) for t in inputs]
    value, grads = value_and_grads(fn, halves)
    assert value.dtype == torch.float32, f"{dtype} input returned {value.dtype}, expected float32"
    up_value, up_grads = value_and_grads(fn, [h.float() for h in halves])
    assert_identical(value, up_value, what=f"{dtype} value vs float32 of the upcast input")
    for k, (g, h) in enumerate(zip(grads, up_grads)):
        assert g.dtype == dtype, f"gradient of input {k} came back as {g.dtype}, expected {dtype}"
        assert_identical(g, h.to(dtype), what=f"{dtype} gradient of input {k}")


# ---------------------------------------------------------------------------
# Checks shared by the per-loss test files. Each takes fn(*points) -> 0-dim loss and the
# float64 CPU point tensors it differentiates.
# ---------------------------------------------------------------------------


def check_layout(fn: Callable, inputs: Sequence[torch.Tensor], layout: str) -> None:
    """Every point tensor in ``layout`` gives the value and gradients of contiguous inputs.

    Not bitwise: torch's own O(n) reductions (e.g. the radii ||z_i||^2) sum in an order
    that depends on the strides; a few ulps is the most that may change.
    """
    from gaussreg.testing import with_layout

    v0, g0 = value_and_grads(fn, inputs)
    leaves = [with_layout(t, layout).detach().requires_grad_(True) for t in inputs]
    if layout != "contiguous":
        assert not any(t.is_contiguous() for t in leaves), "the layout helper returned a contiguous tensor"
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves)
    assert value.dtype == v0.dtype
    assert_close(value.detach(), v0, 1e-14, 1e-15, what=f"{layout} value")
    for k, (g, h) in enumerate(zip(grads, g0)):
        assert g.dtype == h.dtype and g.shape == h.shape
        assert_close(g, h, 1e-13, 1e-13 * float(h.abs().max()), what=f"{layout} gradient of input {k}")


def rel_value_err(a, b, floor: float) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), floor)


def rel_grad_err(gs, hs) -> float:
    """Normwise relative error ||g32 - g64|| / ||g64|| over all gradient tensors together."""
    num = sum(float((g.double() - h).pow(2).sum()) for g, h in zip(gs, hs))
    den = sum(float(h.pow(2).sum()) for h in hs)
    return (num / den) ** 0.5


def check_float32(fn: Callable, ref_fn: Callable, inputs: Sequence[torch.Tensor], *, value_floor: float,
                  run_reference: bool, record_property, label: str, log_value: bool = False) -> None:
    """float32 against float64 on the same (float32-rounded) points.

    Value: relative error <= 1e-5, relative to max(|value|, value_floor), the floor being the
    size of the terms whose difference the loss is (an unbiased MMD may be ~0). For a
    log loss the absolute error of the log (the relative error of its argument).
    Gradient: normwise relative error <= 1e-5, or twice the reference's own float32 error
    where that is larger (each gradient entry is a sum over the other points that cancels,
    so the float32 floor grows with n and D), measured where the reference fits.
    The reference's own float32 error is reported next to the library's.
    """
    inputs32 = [t.float() for t in inputs]
    inputs64 = [t.double() for t in inputs32]
    v64, g64 = value_and_grads(fn, inputs64)
    v32, g32 = value_and_grads(fn, inputs32)
    assert v32.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g32)

    def verr(a):
        return abs(float(a) - float(v64)) if log_value else rel_value_err(a, v64, value_floor)

    lib_v, lib_g = verr(v32), rel_grad_err(g32, g64)
    report = f"{label}: gaussreg float32 rel err value {lib_v:.1e} grad {lib_g:.1e}"
    ref_g = 0.0
    if run_reference:
        r32, h32 = value_and_grads(ref_fn, inputs32)
        ref_v, ref_g = verr(r32), rel_grad_err(h32, g64)
        report += f" | reference float32 value {ref_v:.1e} grad {ref_g:.1e}"
    else:
        report += " | reference float32: not run (O(n^2 D) memory)"
    record_property("float32_error", report)
    assert lib_v <= 1e-5, report
    assert lib_g <= max(1e-5, 2 * ref_g), report


def check_double_backward_refused(fn: Callable, inputs: Sequence[torch.Tensor]) -> None:
    import pytest

    leaves = [t.clone().requires_grad_(True) for t in inputs]
    with pytest.raises(RuntimeError, match="second derivative"):
        grads = torch.autograd.grad(fn(*leaves), leaves, create_graph=True)
        torch.autograd.grad(sum(g.sum() for g in grads), leaves)


def check_backward_twice(fn: Callable, inputs: Sequence[torch.Tensor]) -> None:
    """A second backward without retain_graph is refused; with it the gradient doubles exactly."""
    import pytest

    leaves = [t.clone().requires_grad_(True) for t in inputs]
    loss = fn(*leaves)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    loss = fn(*leaves)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in leaves]
    loss.backward()
    for t, g in zip(leaves, first):
        assert_identical(t.grad, 2 * g, what="gradient after two backward passes")


def check_repeatable(fn: Callable, inputs: Sequence[torch.Tensor]) -> None:
    v1, g1 = value_and_grads(fn, inputs)
    v2, g2 = value_and_grads(fn, inputs)
    assert_identical(v2, v1, what="value of a repeated call")
    for a, b in zip(g2, g1):
        assert_identical(a, b, what="gradient of a repeated call")


def check_thread_independent(fn: Callable, inputs: Sequence[torch.Tensor]) -> None:
    """torch.set_num_threads(1) and (2) give bitwise-identical values and gradients.
    The caller restores the thread count (fixture ``restore_threads``)."""
    torch.set_num_threads(1)
    v1, g1 = value_and_grads(fn, inputs)
    torch.set_num_threads(2)
    v2, g2 = value_and_grads(fn, inputs)
    assert_identical(v2, v1, what="value, 2 threads vs 1")
    for a, b in zip(g2, g1):
        assert_identical(a, b, what="gradient, 2 threads vs 1")


def check_cuda_parity(fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype, value_floor: float) -> None:
    """The same inputs on CUDA and on the CPU: values and gradients, in ``dtype``."""
    cpu = [t.to(dtype) for t in inputs]
    v_cpu, g_cpu = value_and_grads(fn, cpu)
    v_gpu, g_gpu = value_and_grads(fn, [t.cuda() for t in cpu])
    assert v_gpu.device.type == "cuda" and v_gpu.dtype == dtype
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    assert_close(v_gpu, v_cpu, rtol, rtol * value_floor, what="value, CUDA vs CPU")
    for k, (g, h) in enumerate(zip(g_gpu, g_cpu)):
        assert g.device.type == "cuda" and g.dtype == dtype
        assert_close(g, h, rtol, 5 * rtol * float(h.abs().max()), what=f"gradient of input {k}, CUDA vs CPU")


def brute_pair_sum(x, y, px, py, kernel: Callable):
    """Float64 brute force of torch.ops.gaussreg.pair_sum's contract.

    value = sum_{i<j} k(t_ij, p_i, p_j) for a self sum (y None), sum_{i,j} for a cross sum,
    t_ij = ||x_i - y_j||^2; G_i = sum_j k'(t_ij) (x_i - y_j) and H_j = sum_i k'(t_ij) (y_j - x_i),
    i.e. half the autograd gradient of the sum (dt/dx = 2 (x - y)).
    """
    xs = x.detach().double().requires_grad_(True)
    ys = xs if y is None else y.detach().double().requires_grad_(True)
    pa = None if px is None else px.detach().double()
    pb = pa if py is None else py.detach().double()
    t = (xs[:, None, :] - ys[None, :, :]).pow(2).sum(-1)
    k = kernel(t, None if pa is None else pa[:, None], None if pb is None else pb[None, :])
    if y is None:
        k = torch.triu(k, diagonal=1)
    value = k.sum()
    leaves = (xs,) if y is None else (xs, ys)
    grads = torch.autograd.grad(value, leaves)
    gx = grads[0] / 2
    gy = None if y is None else grads[1] / 2
    return value.detach(), gx, gy


def check_pair_sum_contract(args, kernel: Callable) -> None:
    """The op's (value, grad_x, grad_y) against brute_pair_sum in float64."""
    x, y, px, py, stem, kind, params, want_x, want_y = args
    value, grad_x, grad_y = torch.ops.gaussreg.pair_sum(*args)
    v, gx, gy = brute_pair_sum(x, y, px, py, kernel)
    assert value.dtype == torch.float64 and value.dim() == 0
    rtol = 1e-12 if x.dtype == torch.float64 else 2e-6
    assert_close(value, v, rtol, 0, what=f"{stem} kind {kind} value")
    if not (want_x or want_y):
        assert grad_x.numel() == 0 and grad_y.numel() == 0
        return
    assert grad_x.dtype == x.dtype and grad_x.shape == x.shape
    assert_close(grad_x, gx, rtol, rtol * float(gx.abs().max()), what="grad_x")
    if y is None or not want_y:
        assert grad_y.numel() == 0
    else:
        assert grad_y.dtype == y.dtype and grad_y.shape == y.shape
        assert_close(grad_y, gy, rtol, rtol * float(gy.abs().max()), what="grad_y")


def run_opcheck(args) -> None:
    """torch.library.opcheck on pair_sum; inputs require grad when the op computes gradients."""
    args = list(args)
    if args[-2]:
        args[0] = args[0].clone().requires_grad_(True)
    if args[-1] and args[1] is not None:
        args[1] = args[1].clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.gaussreg.pair_sum.default, tuple(args))


def op_inputs(dtype, n=13, m=9, d=5, seed=3):
    """x (n, d), y (m, d), positive per-point parameters px (n), py (m) in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype)
    px = (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    py = (0.5 + torch.rand(m, generator=g, dtype=torch.float64)).to(dtype)
    return x, y, px, py


def check_compiled_matches_eager(fn: Callable, z: torch.Tensor, rtol: float = 1e-6) -> None:
    """torch.compile(fn, fullgraph=True) gives eager's value and gradient on z."""
    eager_z, compiled_z = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    eager, got = fn(eager_z), torch.compile(fn, fullgraph=True)(compiled_z)
    eager.backward()
    got.backward()
    assert_close(got, eager, rtol, rtol * 1e-3, what="compiled value")
    assert_close(compiled_z.grad, eager_z.grad, rtol, rtol * 1e-3, what="compiled gradient")
