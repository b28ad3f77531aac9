"""CUDA-graph capture of the losses (``torch.cuda.graph``): forward and backward recorded
once, replayed on new data, equal to eager calls.

While a graph captures, nothing may read device data on the host: the input checks turn
into device-side assertions (``_checks.require``), the memory check reads the device's
cached total (``_native._device_capacity``), and the pair-sum engines pass the incoming
gradient on the device. The losses here are the pair sums with their inputs given
(a drawn prior sample needs a graph-safe generator, and ``cdf_attraction`` on CUDA plans
its passes from counts it reads back: not capturable yet).
"""
import pytest
import torch

import gaussreg
from gaussreg import _checks
from gaussreg.testing import random_points


def test_checks_become_device_assertions_while_capturing(monkeypatch):
    """The capture branch of ``require`` on the CPU: the check still fails a bad input,
    through the assertion op instead of a host read."""
    monkeypatch.setattr(_checks, "capturing", lambda: True)
    calls = []
    real = torch._assert_async

    def spy(condition, message):
        calls.append(message)
        return real(condition, message)

    monkeypatch.setattr(torch, "_assert_async", spy)
    z = random_points(8, 3, seed=1)
    gaussreg.gaussian_l2_to_normal(z)
    assert calls and "NaN" in calls[0]
    z[2, 1] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        gaussreg.gaussian_l2_to_normal(z)


CAPTURED = {
    "gaussian_l2_to_normal": lambda z, y: gaussreg.gaussian_l2_to_normal(z),
    "gaussian_l2_to_normal_mean_field": lambda z, y: gaussreg.gaussian_l2_to_normal(z, sigma="mean_field"),
    "gaussian_l2": lambda z, y: gaussreg.gaussian_l2(z, y),
    "mmd_given_prior": lambda z, y: gaussreg.mmd(z, y),
    "cw_distance": lambda z, y: gaussreg.cw_distance(z),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_capture_forward_and_backward_then_replay(name):
    loss = CAPTURED[name]
    n, d = 300, 16
    z = random_points(n, d, seed=1, device="cuda", dtype=torch.float32).requires_grad_(True)
    y = random_points(n, d, seed=2, device="cuda", dtype=torch.float32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            z.grad = None
            loss(z, y).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    z.grad = None
    with torch.cuda.graph(graph):
        value = loss(z, y)
        value.backward()
    for seed in (3, 4):  # new points into the captured input, then one replay each
        fresh = random_points(n, d, seed=seed, device="cuda", dtype=torch.float32)
        with torch.no_grad():
            z.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        eager_z = fresh.clone().requires_grad_(True)
        eager = loss(eager_z, y)
        eager.backward()
        torch.testing.assert_close(value, eager.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(z.grad, eager_z.grad, rtol=1e-5, atol=1e-7)
