"""The CPU workspace kept between engine calls (gaussreg.set_workspace_cache).

A kept buffer holds whatever the previous call left in it, where a fresh allocation of the
same size is usually zero pages: every loss must give the same bits either way. The
buffer is reused, grown, bypassed (too large a request, or in use by another thread) and
freed as documented.
"""
import pytest
import torch
from _helpers import assert_identical, record_workspace_allocations
from _loss_cases import CASES, points_for, run_case

import gaussreg
from gaussreg import _native
from gaussreg.diagnostics import ks_distances


@pytest.fixture
def cache_limit():
    """Restores the limit and drops the kept buffer afterwards."""
    before = gaussreg.set_workspace_cache(1 << 30)
    yield
    gaussreg.set_workspace_cache(before)
    gaussreg.release_workspace()


@pytest.fixture
def allocations(monkeypatch):
    """The byte sizes of the uint8 buffers allocated for workspaces, in order."""
    return record_workspace_allocations(monkeypatch)


def _spoil_kept_buffer(nbytes, byte):
    """Keep a buffer of ``nbytes`` filled with ``byte`` (0xFF: every float a NaN)."""
    gaussreg.release_workspace()
    with _native.workspace(nbytes, torch.device("cpu"), "test") as buffer:
        buffer.fill_(byte)


@pytest.mark.parametrize("byte", [0xFF, 0x7F])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_dirty_kept_buffer_gives_the_bits_of_a_fresh_one(case, byte, cache_limit):
    points = points_for(case, n=300, d=7, seed=3)
    gaussreg.set_workspace_cache(0)
    fresh_value, fresh_grads = run_case(case.name, points)
    gaussreg.set_workspace_cache(1 << 30)
    _spoil_kept_buffer(64 << 20, byte)
    value, grads = run_case(case.name, points)
    assert_identical(value, fresh_value, what=f"{case.name} value")
    for g, h in zip(grads, fresh_grads):
        assert_identical(g, h, what=f"{case.name} gradient")


@pytest.mark.parametrize("p", [1, 2])
def test_cdf_attraction_reuses_the_kept_buffer(p, cache_limit, allocations):
    gaussreg.release_workspace()
    z = torch.randn(500, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    values = []
    for _ in range(3):
        value = gaussreg.cdf_attraction(z, p=p)
        value.backward()
        values.append(value.detach())
    assert len(allocations) == 1, f"workspaces allocated: {allocations}"
    assert gaussreg.release_workspace() == allocations[0]
    assert gaussreg.release_workspace() == 0
    assert values[0] == values[1] == values[2]


def test_the_kept_buffer_grows_to_the_largest_request(cache_limit, allocations):
    gaussreg.release_workspace()
    small, large = torch.randn(200, 8), torch.randn(900, 8)
    for z in (small, large, small, large):
        gaussreg.cdf_attraction(z, p=2)
    assert len(allocations) == 2 and allocations[1] > allocations[0]
    assert gaussreg.release_workspace() == allocations[1]


def test_a_request_over_the_limit_is_allocated_per_call(cache_limit, allocations):
    gaussreg.release_workspace()
    z = torch.randn(900, 8)
    gaussreg.set_workspace_cache(1000)
    first = gaussreg.cdf_attraction(z, p=2)
    second = gaussreg.cdf_attraction(z, p=2)
    assert len(allocations) == 2 and allocations[0] > 1000
    assert gaussreg.release_workspace() == 0  # nothing was kept
    assert first == second


def test_a_buffer_in_use_is_not_shared(cache_limit, allocations):
    """While one thread's engine holds the kept buffer, another call allocates its own."""
    z = torch.randn(300, 8)
    expected = gaussreg.cdf_attraction(z, p=2)
    with _native.workspace(1 << 20, torch.device("cpu"), "test") as held:
        held.fill_(0xFF)
        allocations.clear()
        got = gaussreg.cdf_attraction(z, p=2)
        assert len(allocations) == 1
        assert bool((held == 0xFF).all()), "the held buffer was written by another call"
    assert_identical(got, expected, what="value")


def test_lowering_the_limit_frees_a_larger_buffer(cache_limit):
    gaussreg.release_workspace()
    gaussreg.cdf_attraction(torch.randn(600, 8), p=2)
    kept = _native._cache.buffer.numel()
    assert gaussreg.set_workspace_cache(kept) == 1 << 30  # returns the previous limit
    assert _native._cache.buffer is not None  # still within the limit
    gaussreg.set_workspace_cache(kept - 1)
    assert gaussreg.release_workspace() == 0


def test_ks_distances_uses_the_kept_buffer(cache_limit, allocations):
    gaussreg.release_workspace()
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(2))
    first = ks_distances(z)
    assert allocations, "the first call allocates"
    allocated = len(allocations)
    second = ks_distances(z)
    assert len(allocations) == allocated, "the second call allocated a workspace"
    assert first == second


@pytest.mark.parametrize("bad", [-1, 1.5, "1", None, True])
def test_bad_limits_are_refused(bad, cache_limit):
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        gaussreg.set_workspace_cache(bad)


@pytest.mark.parametrize("text, expected", [("0", 0), ("12345", 12345)])
def test_the_limit_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("GAUSSREG_WORKSPACE_CACHE", text)
    assert _native._default_cache_limit() == expected


@pytest.mark.parametrize("text", ["-5", "lots", "1e9"])
def test_a_bad_limit_in_the_environment_warns_and_keeps_the_default(monkeypatch, text):
    monkeypatch.delenv("GAUSSREG_WORKSPACE_CACHE", raising=False)
    default = _native._default_cache_limit()
    monkeypatch.setenv("GAUSSREG_WORKSPACE_CACHE", text)
    with pytest.warns(RuntimeWarning, match="GAUSSREG_WORKSPACE_CACHE"):
        assert _native._default_cache_limit() == default
    assert 0 < default <= 1 << 30
