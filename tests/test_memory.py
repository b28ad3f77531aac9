"""Memory (issue 8, item 3), over every loss of the table in _loss_cases.py.

Every entry point estimates its working memory from the sizes before it copies, scans or
allocates anything: a request that cannot fit raises MemoryError naming the bytes (and,
for cdf_attraction, max_sort_bytes when a smaller sort budget fits, or what cannot shrink
when none does). After such an error, and after a real allocator failure, the next call
works, and 100 calls (succeeding or failing) leave no memory behind.
"""
import gc
import os
import time

import pytest
import torch
from _helpers import bytes_in_message, cuda_ok, record_workspace_allocations
from _loss_cases import CASES, points_for, value_and_grads
from test_hostile import _still_works

import gaussreg
from gaussreg import _checks, _native
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.engines import epps_pulley as epps_engine
from gaussreg.engines import pair_sum, segmented
from gaussreg.losses import cdf_attraction as cdf_module

HUGE_CASES = [c for c in CASES if c.huge_rows]


def _huge_inputs(case, position, dtype=torch.float32, d=64, device="cpu"):
    """Valid small inputs with the one at ``position`` (all, where rows must match) replaced by an
    expanded (stride 0) giant, made on ``device`` (moving one there would copy all its rows)."""
    points = [p.to(device=device, dtype=dtype) for p in points_for(case, n=5, d=d, seed=0)]
    for k in range(len(points)):
        if k == position or case.equal_rows:  # the others giant too where rows must match
            points[k] = torch.zeros(1, d, dtype=dtype, device=device).expand(case.huge_rows, d)
    return points


def _huge_params():
    return [pytest.param(case, k, dtype, id=f"{case.name}-{arg}-{str(dtype)[6:]}")
            for case in HUGE_CASES for k, arg in enumerate(case.args)
            for dtype in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("case, position, dtype", _huge_params())
def test_impossible_request_is_a_memory_error_before_any_work(case, position, dtype):
    points = _huge_inputs(case, position, dtype)
    start = time.perf_counter()
    with pytest.raises(MemoryError, match="needs [0-9]+ bytes") as info:
        case.call(*points)
    # Before any O(n) copy or scan of the 2^22..2^36 rows (each would take seconds or fail).
    assert time.perf_counter() - start < 2.0
    rows = case.huge_rows
    # At least the gradient of the giant input (kernel sums) or 2 bits per pair (cdf_attraction).
    least = rows * (rows - 1) // 8 if case.ranked and not case.linear_memory else rows * 64 * 4
    assert bytes_in_message(str(info.value)) >= least
    _still_works(case)


def test_estimates_count_every_buffer_kept():
    """Regression: the kernel-sum estimate counted one set of gradient buffers; the two-sample
    losses keep those of three pair sums (2 (n + m) D values), and mmd's drawn prior adds
    its sample (n D)."""
    n, d = 2**36, 64
    huge = torch.zeros(1, d).expand(n, d)
    with pytest.raises(MemoryError) as info:
        gaussreg.mmd(huge)  # y drawn: m = n
    assert bytes_in_message(str(info.value)) >= (2 * (2 * n) * d + n * d) * 4
    with pytest.raises(MemoryError) as info:
        gaussreg.gaussian_l2(huge, torch.zeros(3, d))
    assert bytes_in_message(str(info.value)) >= 2 * (n + 3) * d * 4


# ---------------------------------------------------------------------------
# The engines' plans: what the front checks is what the op allocates
# ---------------------------------------------------------------------------


@pytest.fixture
def workspaces(monkeypatch):
    """The byte sizes of the uint8 workspaces the ops allocate, in order (none kept between calls)."""
    monkeypatch.setattr(_native._cache, "limit", 0)
    return record_workspace_allocations(monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("m", [0, 9])
def test_pair_sum_op_allocates_its_plans_workspace(workspaces, dtype, m):
    x = torch.randn(23, 5, dtype=dtype, requires_grad=True)
    y = torch.randn(m, 5, dtype=dtype) if m else None
    pair_sum.pair_sum("mmd", pair_sum.MMD_IMQ, [1.0], x, y).backward()
    planned = pair_sum.plan("mmd", x.device, dtype, 23, m, 5)
    assert workspaces == [max(planned.workspace_bytes, 1)]
    assert planned.gradient_bytes == (23 + m) * 5 * x.element_size()  # one (n + m, D) gradient set


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_segmented_ops_allocate_their_plans_workspace(workspaces, dtype):
    values = torch.randn(3, 40, dtype=dtype)
    segmented.sorted_gaps_op(values, torch.randn(40, dtype=dtype), False, 2, False)
    segmented.segment_counts_op(values)
    planned = segmented.plan(values.device, dtype, 3, 40)
    assert workspaces == [max(planned.workspace_bytes, 1)] * 2
    slopes = segmented.plan(values.device, dtype, 3, 40, sorted_slope=True)
    assert slopes.need_bytes - planned.need_bytes == values.numel() * values.element_size()  # the kept sorted slope


def test_epps_pulley_plan_counts_the_moments_and_projections():
    u = torch.randn(7, 30, dtype=torch.float32)
    cos_sums, sin_sums = epps_engine.moments(u, 16, 0.2)
    planned = epps_engine.plan(torch.float32, 7, 30, 4, 16)
    outputs = sum(t.numel() * t.element_size() for t in (cos_sums, sin_sums))
    assert planned.moments_bytes == 2 * outputs  # the sums and their gradients
    assert planned.need_bytes - planned.moments_bytes == (2 * u.numel() + 30 * 4) * 4


def test_cdf_op_allocates_its_plans_workspace(workspaces):
    z = torch.randn(40, 3)
    plan = cdf_engine.plan(z.device, z.dtype, 40, gaussreg.targets.Chi2(3), None)
    source = cdf_engine.quantile_source(z, gaussreg.targets.Chi2(3), plan)
    cdf_engine.cdf_pairs(z, 2, plan.capacity, **source)
    assert workspaces == [max(cdf_engine.workspace_bytes(z.device, z.dtype, 40, 3, plan.capacity), 1)]


# ---------------------------------------------------------------------------
# cdf_attraction: the option that lowers the need, or what cannot shrink
# ---------------------------------------------------------------------------


class _Reached(Exception):
    """Raised in place of the engine: the memory check let the call through."""


@pytest.fixture
def device_of_8_gib(monkeypatch):
    """A CPU of 8 GiB for the checks (the same verdicts on any CI machine), the engine
    replaced by a sentinel so that a request that passes does not run for minutes."""
    monkeypatch.setattr(_native, "_device_capacity", lambda device: 8 << 30)

    def reached(*args, **kwargs):
        raise _Reached()

    monkeypatch.setattr(cdf_module.cdf_engine, "rank_distances", reached)


def test_cdf_names_max_sort_bytes_when_a_smaller_budget_fits(device_of_8_gib):
    z = torch.zeros(1, 8).expand(2**16, 8)  # n' = 2.1e9 pairs: 17 GB of sort entries in one pass
    with pytest.raises(MemoryError) as info:
        gaussreg.cdf_attraction(z, max_sort_bytes=1 << 40)
    message = str(info.value)
    assert "max_sort_bytes=" in message and "several passes" in message
    suggested = int(message.split("max_sort_bytes=")[1].split()[0])
    with pytest.raises(_Reached):  # the suggested budget passes the check
        gaussreg.cdf_attraction(z, max_sort_bytes=suggested)


def test_cdf_says_what_cannot_shrink(device_of_8_gib):
    # p = 2 keeps one value per pair for the backward: 2.1e9 doubles (17 GB) whatever the
    # sort budget; p = 1 keeps 2 bits per pair (0.5 GB) and passes.
    z = torch.zeros(1, 8, dtype=torch.float64).expand(2**16, 8)
    pairs = cdf_engine.pair_count(2**16)
    with pytest.raises(MemoryError) as info:
        gaussreg.cdf_attraction(z, p=2, max_sort_bytes=1 << 30)
    message = str(info.value)
    assert "whatever the options" in message and "p = 1 keeps 2 bits" in message
    assert "max_sort_bytes=" not in message  # no option that cannot help
    assert bytes_in_message(message) >= 8 * pairs
    with pytest.raises(_Reached):
        gaussreg.cdf_attraction(z, p=1, max_sort_bytes=1 << 30)
    # A target that needs its table of n' quantiles is counted too.
    class Table:
        def quantiles(self, m, device, dtype):
            return torch.zeros(m, dtype=dtype, device=device)

    with pytest.raises(MemoryError, match="table"):
        gaussreg.cdf_attraction(z, distances_target=Table(), max_sort_bytes=1 << 30)


def test_cdf_memory_check_comes_before_the_copy(device_of_8_gib, monkeypatch):
    """An expanded half-precision z is not converted (a 2^31-row copy) before the check."""
    z = torch.zeros(1, 4, dtype=torch.bfloat16).expand(2**31 - 1, 4)
    with pytest.raises(MemoryError, match="whatever the options"):
        gaussreg.cdf_attraction(z)


# ---------------------------------------------------------------------------
# A real allocator failure, recovery, and no leaks
# ---------------------------------------------------------------------------


# The segmented losses refuse n >= 2^31 by a ValueError before allocating (their limit).
@pytest.mark.parametrize("case", [c for c in HUGE_CASES if not c.ranked and not c.linear_memory and c.compiled],
                         ids=lambda c: c.name)
def test_allocator_failure_is_reported_and_recovered(case, monkeypatch):
    """With the estimate switched off, the allocator itself refuses the workspace: a
    MemoryError (or torch's RuntimeError) that gives the bytes, then the next call works."""
    monkeypatch.setattr(_native, "check_fits", lambda *args, **kwargs: None)
    monkeypatch.setattr(_checks, "finite", lambda *args, **kwargs: None)  # no scan of 2^46 values first
    points = [p.float() for p in points_for(case, n=5, d=64, seed=0)]
    points[0] = torch.zeros(1, 64).expand(2**40, 64)
    with pytest.raises((MemoryError, RuntimeError), match="[0-9]+ bytes"):
        case.call(*points)
    _still_works(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.linear_memory], ids=lambda c: c.name)
def test_segmented_losses_refuse_2_to_the_31_points(case):
    points = [torch.zeros(1, 3).expand(2**31, 3) for _ in case.args]
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        case.call(*points)
    _still_works(case)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory read from /proc")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_leak_over_100_calls(case, one_thread):
    """100 calls that succeed and 100 that fail (memory estimate, then a bad point) leave the
    resident memory and the live tensors where they were. Each call allocates a few
    hundred KiB or more (workspace, gradients, sort entries), so a buffer leaked per call
    shows as tens of MiB."""
    points = points_for(case, n=300, d=16, seed=1)
    huge = _huge_inputs(case, 0) if case.huge_rows else None
    bad = [p.clone() for p in points]
    bad[0][3, 3] = float("nan")

    def one_round():
        value_and_grads(case.call, points)
        if huge is not None:
            with pytest.raises(MemoryError):
                case.call(*huge)
        with pytest.raises(ValueError):
            case.call(*bad)

    for _ in range(5):  # warm caches (quantile tables, allocator pools, Python's)
        one_round()
    gc.collect()
    rss, tensors = _resident_bytes(), _live_tensors()
    for _ in range(100):
        one_round()
    gc.collect()
    grown = _resident_bytes() - rss
    print(f"{case.name}: resident memory {grown / 2**20:+.2f} MiB over 100 rounds")
    assert grown < 16 << 20, f"resident memory grew by {grown / 2**20:.1f} MiB over 100 rounds"
    assert _live_tensors() - tensors <= 2, "tensors left alive by the calls"


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_ok(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_cuda_leak_over_100_calls(case):
    points = [p.cuda() for p in points_for(case, n=600, d=64, seed=1)]
    huge = _huge_inputs(case, 0, device="cuda") if case.huge_rows else None
    value_and_grads(case.call, points)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(100):
        value_and_grads(case.call, points)
        if huge is not None:
            with pytest.raises(MemoryError):
                case.call(*huge)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
