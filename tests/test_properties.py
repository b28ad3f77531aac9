"""Property-based tests (issue 8, item 1 and 5): every loss of the table in _loss_cases.py.

Random shapes (n from 2, D from 1, now and then D = 1024), random scales from 1e-6 to 1e6,
duplicated points, points at the origin, lattices (exact ties between different pairs),
rows of wildly different scales, +0.0 mixed with -0.0, rows one ulp apart: each compiled loss matches reference.py in float64 (value
and gradients) or raises its documented error; its float32 result is never NaN or Inf
where the float64 one is finite (and far from float32's range). Sort-based losses rank
ties in any order (SPEC 1): where ties come from duplicated points the gradients are
compared summed over each set of equal points (the sum does not depend on the order of
ties); where other ties exist (lattices) only the value is.

Hypothesis runs derandomized with a fixed number of examples (profile in conftest.py), so
CI is reproducible; ``HYPOTHESIS_PROFILE=thorough`` runs many more examples.
"""
import math
import re

import pytest
import torch
from _helpers import assert_close
from _loss_cases import CASE_IDS, CASES, LossCase, points_for, value_and_grads

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STRUCTURES = ("gaussian", "duplicates", "origin", "lattice", "mixed_scales", "offset", "signed_zeros", "ulp_apart")


@st.composite
def point_sets(draw, case: LossCase):
    """(structure, D, the float64 point tensors of ``case``), built from a drawn seed."""
    structure = draw(st.sampled_from(STRUCTURES))
    huge_d = draw(st.integers(0, 9)) == 0  # one example in ten at D = 1024
    n = draw(st.integers(2, 6)) if huge_d else draw(st.integers(2, 40))
    d = 1024 if huge_d else draw(st.sampled_from((1, 2, 3, 5, 8, 17, 64)))
    exponent = draw(st.floats(-6.0, 6.0))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for k in range(len(case.args)):
        rows = n if k == 0 or case.equal_rows else draw(st.integers(2, 40))
        tensors.append(_structured(structure, rows, d, 10.0 ** exponent, g))
    return structure, d, tensors


def _structured(structure: str, n: int, d: int, scale: float, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    if structure == "duplicates":  # exact copies of some rows (all rows when n is small)
        source = torch.randint(0, max(1, n // 2), (n,), generator=g)
        z = z[source]
    elif structure == "origin":  # some rows exactly 0, maybe all
        z[torch.rand(n, generator=g) < 0.5] = 0.0
    elif structure == "lattice":  # integer coordinates: many exactly equal distances
        z = torch.randint(-2, 3, (n, d), generator=g).double()
    elif structure == "mixed_scales":  # rows from 1e-6 to 1e6 in one batch (the drawn scale unused)
        return z * torch.logspace(-6, 6, n, dtype=torch.float64)[torch.randperm(n, generator=g)][:, None]
    elif structure == "offset":  # far from the origin: differences cancel in the coordinates
        z = z + 1e3
        return z * min(scale, 1e3)
    elif structure == "signed_zeros":  # +0.0 and -0.0 (equal, with different bits) among small integers
        z = torch.randint(-1, 2, (n, d), generator=g).double()
        z[z == 0] = torch.where(torch.rand(int((z == 0).sum()), generator=g) < 0.5, 0.0, -0.0).double()
    elif structure == "ulp_apart":  # pairs of rows one unit in the last place apart: near-ties
        z = z * scale
        half = n // 2
        z[half:2 * half] = torch.nextafter(z[:half], torch.full_like(z[:half], math.inf))
        return z
    return z * scale


def _equal_row_groups(points: torch.Tensor) -> torch.Tensor:
    """(groups, n) 0/1 matrix: row g marks the points equal to each other."""
    _, inverse = torch.unique(points, dim=0, return_inverse=True)
    groups = torch.zeros(int(inverse.max()) + 1, points.shape[0], dtype=torch.float64)
    groups[inverse, torch.arange(points.shape[0])] = 1.0
    return groups


def _only_duplicate_ties(structure: str) -> bool:
    """Ranked losses may then order equal values differently from the reference only among equal
    points; lattices and signed zeros tie different pairs, and near-ties (ulp_apart) may be
    rounded into either order."""
    return structure in ("gaussian", "duplicates", "origin", "offset", "mixed_scales")


def _finite(value, grads) -> bool:
    return bool(torch.isfinite(value)) and all(bool(torch.isfinite(g).all()) for g in grads)


def _call_or_documented_error(case: LossCase, points):
    """(value, grads), or None when the call raised one of the case's documented errors."""
    try:
        return value_and_grads(case.call, points)
    except tuple(e for e, _ in case.documented_errors) as exc:
        assert any(isinstance(exc, e) and re.search(m, str(exc)) for e, m in case.documented_errors), exc
        return None


def _check_against_reference(case: LossCase, structure: str, points):
    got = _call_or_documented_error(case, points)
    if got is None:
        return None
    value, grads = got
    ref_value, ref_grads = value_and_grads(case.reference, points)
    note(f"value {float(value)!r} reference {float(ref_value)!r}")
    if not _finite(ref_value, ref_grads):  # the math (or the reference) overflows: nothing to compare
        assert not bool(torch.isnan(value)) or bool(torch.isnan(ref_value)), "NaN where the reference is not"
        return None
    # Phases of trigonometric losses are rounded in proportion to the projections |u| <= ||z_i||
    # (1e6: 1e-10 rad), in the reference as in the engine (test_epps_pulley.py: huge phases).
    phase_rounding = case.term_size * 2.2e-16 * case.phase_scale * max(float(p.norm(dim=1).max()) for p in points)
    assert_close(value, ref_value, 1e-9, 1e-12 * case.term_size + phase_rounding, what=f"{case.name} value")
    if case.ranked and not _only_duplicate_ties(structure):
        assert _finite(value, grads), "non-finite gradient"
        return value
    for k, (g, h) in enumerate(zip(grads, ref_grads)):
        if case.ranked:  # ties among equal points are ranked in any order: compare their sums
            groups = _equal_row_groups(points[k])
            g, h = groups @ g, groups @ h
        assert_close(g, h, 1e-9, 1e-12 * case.term_size + 1e-9 * float(h.abs().max()) + phase_rounding,
                     what=f"{case.name} gradient of {case.args[k]}")
    return value


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(data=st.data())
def test_matches_reference_float64(case, data):
    structure, d, points = data.draw(point_sets(case))
    note(f"structure {structure}, shapes {[tuple(p.shape) for p in points]}, max |z| "
         f"{max(float(p.abs().max()) for p in points):.3g}")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: one block whatever the count; no barrier waits on a busy machine
    try:
        if d < case.min_dim:
            with pytest.raises(ValueError, match=f"D >= {case.min_dim}"):
                case.call(*points)
            return
        value = _check_against_reference(case, structure, points)
        if value is None or not math.isfinite(float(value)) or abs(float(value)) > 1e30:
            return
        # float32: never NaN/Inf where float64 is finite and far inside float32's range.
        if max(float(p.abs().max()) for p in points) ** 2 * d < 1e30:
            got32 = _call_or_documented_error(case, [p.float() for p in points])  # float32 rounding may tie
            if got32 is None:
                return
            v32, g32 = got32
            assert v32.dtype == torch.float32
            _, g64 = value_and_grads(case.call, points)
            if all(float(g.abs().max()) < 1e30 for g in g64):
                assert _finite(v32, g32), f"float32 gave {float(v32)} (float64: {float(value)})"
    finally:
        torch.set_num_threads(prev)


# ---------------------------------------------------------------------------
# Double backward (item 5): supported and right, or refused with an error that says so
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_second_derivative_is_right_or_refused(case, one_thread):
    points = points_for(case, n=6, d=3, seed=4)
    for asks in _grad_patterns(len(points)):
        leaves = [p.clone().requires_grad_(a) for p, a in zip(points, asks)]
        if case.second_order:
            assert torch.autograd.gradgradcheck(case.call, [t for t in leaves], eps=1e-6, atol=1e-6)
            continue
        asked = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(case.call(*leaves), asked, create_graph=True)
        with pytest.raises(RuntimeError, match="second derivatives .* not implemented"):
            torch.autograd.grad(sum((g * g).sum() for g in grads), asked)


def _grad_patterns(count):
    """Which inputs require grad: all, and for two inputs each one alone."""
    if count == 1:
        return [(True,)]
    return [(True, True), (True, False), (False, True)]


def test_first_derivative_under_create_graph_still_right(one_thread):
    """create_graph=True (e.g. a gradient penalty elsewhere in the graph) leaves the first derivative right."""
    for case in CASES:
        points = points_for(case, n=7, d=3, seed=2)
        _, ref_grads = value_and_grads(case.reference, points)
        leaves = [p.clone().requires_grad_(True) for p in points]
        grads = torch.autograd.grad(case.call(*leaves), leaves, create_graph=True)
        for k, (g, h) in enumerate(zip(grads, ref_grads)):
            assert_close(g.detach(), h, 1e-9, 1e-12 * case.term_size, what=f"{case.name} create_graph grad {k}")
