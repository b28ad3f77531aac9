"""cdf_attraction (SPEC 1): the compiled engine against reference.py and SPEC's formulas.

Sections: (1) value and gradient vs the reference in float64, (2) the ranks themselves
(sorted keys, ties, multi-pass), (3) the SPEC p = 1 gradient and gradcheck for p = 2,
(4) pair indexing and the chi-squared header, (5) errors, (6) autograd/compile/threads,
(7) the paper's claim, (8) CUDA parity.
"""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from _helpers import (F64_ATOL, assert_close, assert_identical, check_double_backward_refused,
                      check_thread_independent, compare_with_reference, half_precision_check,
                      value_and_grads)

import gaussreg
from gaussreg import _C, reference
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.targets import Chi2, Empirical
from gaussreg.testing import random_points

SIZES = (2, 3, 5, 64, 257, 1000)
DIMS = (2, 20, 64)


def loss_fn(**options):
    return lambda z: gaussreg.cdf_attraction(z, backend="native", **options)


def reference_fn(**options):
    return lambda z: reference.cdf_attraction(z, **options)


# ---------------------------------------------------------------------------
# (1) value and gradient against reference.py, float64
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", SIZES)
def test_matches_reference(n, d, p):
    # Both sides get the same target object, so the comparison is of the ranking and the
    # sums (the quantile tables are tested against scipy in test_targets.py).
    target = Chi2(d)
    options = dict(p=p, radii_target=target, distances_target=target)
    z = random_points(n, d, seed=n + d)
    compare_with_reference(loss_fn(**options), reference_fn(**options), [z], what=f"n={n} D={d} p={p}")


@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("weights", ((1.0, 2.0), (0.5, 2.0), (0.0, 1.0), (1.0, 0.0), (-0.3, 1.7)))
def test_weights(weights, p):
    rw, dw = weights
    target = Chi2(7)
    options = dict(p=p, radii_weight=rw, distances_weight=dw, radii_target=target, distances_target=target)
    compare_with_reference(loss_fn(**options), reference_fn(**options), [random_points(120, 7, seed=3)],
                           what=f"weights {weights}")


@pytest.mark.parametrize("p", (1, 2))
def test_empirical_targets(p):
    g = torch.Generator().manual_seed(5)
    radii_sample = torch.rand(333, generator=g, dtype=torch.float64) * 30
    distance_sample = torch.randn(1000, generator=g, dtype=torch.float64).abs() * 9
    options = dict(p=p, radii_target=Empirical(radii_sample), distances_target=Empirical(distance_sample))
    ref_options = dict(p=p, radii_target=reference.EmpiricalTarget(radii_sample),
                       distances_target=reference.EmpiricalTarget(distance_sample))
    compare_with_reference(loss_fn(**options), reference_fn(**ref_options), [random_points(150, 9, seed=2)],
                           what="empirical targets")


def test_custom_target_object():
    class Shifted:
        """Chi2(D) quantiles plus one, from a user class with only quantiles()."""

        def quantiles(self, m, device, dtype):
            return Chi2(4).quantiles(m, device, dtype) + 1.0

    options = dict(radii_target=Shifted(), distances_target=Shifted())
    compare_with_reference(loss_fn(**options), reference_fn(**options), [random_points(80, 4, seed=1)],
                           what="custom target")


@pytest.mark.parametrize("p", (1, 2))
def test_default_targets_match_scipy_quantiles(p):
    """The default Chi2(D) tables (torch) against the reference's scipy quantiles."""
    z = random_points(300, 16, seed=4)
    value = gaussreg.cdf_attraction(z, p=p)
    expected = reference.cdf_attraction(z, p=p)
    assert_close(value, expected, 1e-7, 1e-12, what="default targets")


def test_float32_close_to_float64():
    z = random_points(500, 32, seed=6)
    v64, (g64,) = value_and_grads(loss_fn(p=2), [z])
    v32, (g32,) = value_and_grads(loss_fn(p=2), [z.float()])
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    assert_close(v32, v64, 1e-5, 0, what="float32 value")
    assert float((g32.double() - g64).norm() / g64.norm()) < 1e-4


def test_half_inputs_computed_in_float32(half_dtype):
    half_precision_check(loss_fn(), [random_points(60, 5, seed=2)], half_dtype)


# ---------------------------------------------------------------------------
# (2) ranks: sorted keys, ties, multi-pass
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", (2, 3, 100, 777))
def test_sorted_keys_equal_torch_sort(n, dtype):
    z = random_points(n, 11, seed=n, dtype=dtype)
    keys = cdf_engine.sorted_half_sq_distances(z)
    expected = torch.sort(reference._half_sq_distances_of_pairs(z)).values
    rtol = 1e-14 if dtype == torch.float64 else 1e-6
    assert keys.dtype == dtype
    assert_close(keys, expected, rtol, 0, what="sorted keys")
    assert bool((keys[1:] >= keys[:-1]).all())


@pytest.mark.parametrize("p", (1, 2))
def test_ties_from_duplicated_points(p):
    base = random_points(40, 6, seed=8)
    z = torch.cat([base, base, base[:10]])  # many d = 0 pairs and every distance repeated
    value, (grad,) = value_and_grads(loss_fn(p=p), [z])
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    # The value does not depend on how ties are ranked; the reference ranks them otherwise.
    assert_close(value, reference.cdf_attraction(z, p=p, radii_target=Chi2(6), distances_target=Chi2(6)),
                 1e-6, 0, what="value with ties")
    # All points identical: every distance 0, every pair below its target.
    same = torch.ones(30, 3, dtype=torch.float64)
    value, (grad,) = value_and_grads(loss_fn(p=p), [same])
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


def _tied_integer_points(n, dtype):
    """(z, its half squared distances in pair-index order, a table of targets crossing them,
    the residuals of a stable argsort's ranks): small integer coordinates make every distance
    exact and most of them tied."""
    z = torch.randint(-2, 3, (n, 3), generator=torch.Generator().manual_seed(4)).to(dtype)
    pairs = cdf_engine.pair_count(n)
    i, j = torch.triu_indices(n, n, 1)  # pair-index order
    keys = 0.5 * ((z[i] - z[j]) ** 2).sum(1)  # exact
    table = torch.linspace(0.0, 12.0, pairs, dtype=dtype)  # crosses the tied keys
    ranks = torch.empty(pairs, dtype=torch.int64)
    ranks[torch.argsort(keys, stable=True)] = torch.arange(pairs)
    return z, keys, table, keys - table[ranks]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n, passes", ((60, "one pass"), (300, "one pass"), (60, "several passes")))
def test_the_full_sort_ranks_p1_ties_by_pair_index(n, passes, dtype):
    """With p = 1 the full sort (small n, the selection's fallbacks, sorted values asked for)
    ranks equal distances by pair index k(i, j), as the selection and the CUDA sort do: its signs
    equal those of a stable argsort of the keys in pair order. n = 60 sorts its 1770 pairs as
    one bucket, n = 300 its 44850 in buckets between splitters."""
    z, keys, table, expected = _tied_integer_points(n, dtype)
    pairs = cdf_engine.pair_count(n)
    capacity = pairs // 5 if passes == "several passes" else pairs
    _, signs, sorted_keys, _ = cdf_engine.cdf_pairs_op(z, table, None, None, 1, capacity, 0, True)
    assert torch.equal(sorted_keys, keys.sort().values)
    bits = torch.arange(pairs)
    positive = (signs[0][bits // 64] >> (bits % 64)) & 1
    negative = (signs[1][bits // 64] >> (bits % 64)) & 1
    assert torch.equal(positive.bool(), expected > 0) and torch.equal(negative.bool(), expected < 0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n, passes", ((2, "one pass"), (3, "one pass"), (60, "one pass"), (256, "one pass"),
                                       (300, "one pass"), (1000, "one pass"), (1000, "several passes")))
def test_p2_ranks_ties_by_pair_index(n, passes, dtype):
    """p = 2 ranks equal distances by pair index too, as p = 1 and CUDA do: each pair's
    residual is exactly its key minus the target of its rank in a stable argsort of the keys
    in pair order. Up to 2^15 pairs (n <= 256) the keys are sorted as one bucket (one pass);
    beyond, in buckets between splitters, in one pass or in several within a smaller budget."""
    z, keys, table, expected = _tied_integer_points(n, dtype)
    pairs = keys.numel()
    capacity = pairs // 3 if passes == "several passes" else pairs
    value, residuals, sorted_keys, stats = cdf_engine.cdf_pairs_op(z, table, None, None, 2, capacity, 0, True)
    assert torch.equal(sorted_keys, keys.sort().values)
    assert torch.equal(residuals, expected)
    assert float(value) == pytest.approx(float((expected.double() ** 2).sum()), rel=1e-12)
    if n <= 256:
        assert stats.tolist()[:3] == [pairs, 1, 1]  # every pair sorted, one pass, one bucket
    else:
        assert stats.tolist()[0] == pairs and stats.tolist()[2] > 1
        assert (stats.tolist()[1] > 2) == (passes == "several passes")  # the count pass, then collections


def _entries_for(z, entries):
    return entries * cdf_engine.entry_bytes(z.device, z.dtype, z.shape[0])


@pytest.mark.parametrize("target", ("chi2", "empirical"))
@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_multi_pass_equals_single_pass(dtype, p, target):
    z = random_points(400, 10, seed=9, dtype=dtype)  # n' = 79800: Chi2 from anchors
    distances_target = Chi2(10) if target == "chi2" else Empirical(torch.linspace(0, 40, 101))
    one = dict(p=p, distances_target=distances_target)
    # A budget of ~5000 entries: the sort runs in about twenty passes.
    few = dict(one, max_sort_bytes=_entries_for(z, 5000))
    v1, (g1,) = value_and_grads(loss_fn(**one), [z])
    vk, (gk,) = value_and_grads(loss_fn(**few), [z])
    # The same anchors or Empirical sample both times: the same residuals. The value's partial
    # sums are grouped by bucket, and the buckets depend on the budget.
    assert_close(vk, v1, 1e-14 if dtype == torch.float64 else 1e-6, 0, what="multi-pass value")
    assert_identical(gk, g1, what="multi-pass gradient")


def test_multi_pass_sorted_keys_identical():
    z = random_points(400, 5, seed=10)
    pairs = cdf_engine.pair_count(400)
    single = cdf_engine.sorted_half_sq_distances(z)
    for capacity in (pairs // 3, 7000, 2500):
        assert_identical(cdf_engine.sorted_half_sq_distances(z, capacity=capacity), single,
                         what=f"sorted keys with capacity {capacity}")


@pytest.mark.parametrize("levels", (2, 3, 7))
def test_sorted_keys_with_many_splitters_in_one_cell(levels):
    """Integer coordinates from `levels` values: the half squared distances take a few exact
    values, so many of the full sort's splitters are equal and share a cell of key bits (more
    than the four it counts without a branch, or four and fewer). Every bucket must still
    hold the right keys: the sorted keys are exactly numpy's."""
    n, d = 1200, 2
    g = torch.Generator().manual_seed(levels)
    z = torch.randint(0, levels, (n, d), generator=g).to(torch.float32)
    x = z.double().numpy()
    i, j = np.triu_indices(n, 1)
    expected = np.sort(0.5 * ((x[i] - x[j]) ** 2).sum(1))
    got = cdf_engine.sorted_half_sq_distances(z)
    np.testing.assert_array_equal(got.double().numpy(), expected)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_sorted_keys_far_below_and_above_the_splitters(dtype):
    """Two tight clusters far apart, and 50 points tighter still: their 1225 keys (0.17% of
    the pairs, under one bucket's share) lie some 20 binades below the first splitter, where
    the full sort clamps them to its table's empty lower cell. The keys come out in order (a
    key in a wrong bucket breaks it) and equal to numpy's to rounding."""
    n = 1200
    z = random_points(n, 4, seed=11, dtype=dtype) * 1e-3
    z[n // 2:] += 100.0
    z[:50] *= 1e-3  # a few even tighter: keys far below the rest
    got = cdf_engine.sorted_half_sq_distances(z).double().numpy()
    assert np.all(np.diff(got) >= 0)
    x = z.double().numpy()
    i, j = np.triu_indices(n, 1)
    expected = np.sort(0.5 * ((x[i] - x[j]) ** 2).sum(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def test_bucket_overflow_is_a_memory_error():
    z = torch.zeros(200, 3, dtype=torch.float64)  # all 19900 distances tied in one bucket
    with pytest.raises(MemoryError, match="share one bucket"):
        gaussreg.cdf_attraction(z, max_sort_bytes=_entries_for(z, 1000))


# ---------------------------------------------------------------------------
# (3) SPEC's gradient formula (p = 1) and gradcheck (p = 2)
# ---------------------------------------------------------------------------


def spec_p1_gradient(z, rw, dw, radii_q, dist_q):
    """dL/dz_i = rw (2/n) sgn(e_i) z_i + dw (1/n') sum_{j != i} sgn(e_ij) (z_i - z_j), SPEC 1."""
    n = z.shape[0]
    radii = (z * z).sum(1)
    e_r = torch.empty(n, dtype=z.dtype)
    e_r[torch.argsort(radii)] = torch.sort(radii).values - radii_q
    i, j = torch.triu_indices(n, n, offset=1)
    d = (z[i] - z[j]).pow(2).sum(1) / 2
    pairs = d.shape[0]
    e_d = torch.empty(pairs, dtype=z.dtype)
    e_d[torch.argsort(d)] = torch.sort(d).values - dist_q
    grad = rw * (2.0 / n) * torch.sign(e_r)[:, None] * z
    sign = torch.zeros(n, n, dtype=z.dtype)
    sign[i, j] = torch.sign(e_d)
    sign[j, i] = torch.sign(e_d)
    grad += dw / pairs * (sign.sum(1)[:, None] * z - sign @ z)
    return grad


@pytest.mark.parametrize("n", (2, 17, 200))
def test_p1_gradient_is_spec_formula(n):
    z = random_points(n, 5, seed=n)
    target = Chi2(5)
    _, (grad,) = value_and_grads(loss_fn(radii_weight=0.7, distances_weight=1.3, radii_target=target,
                                         distances_target=target), [z])
    pairs = n * (n - 1) // 2
    expected = spec_p1_gradient(z, 0.7, 1.3, target.quantiles(n, "cpu", z.dtype),
                                target.quantiles(pairs, "cpu", z.dtype))
    assert_close(grad, expected, 1e-12, 1e-14, what="p = 1 gradient")


def test_gradcheck_p2():
    z = random_points(12, 3, seed=1, requires_grad=True)
    assert torch.autograd.gradcheck(loss_fn(p=2), (z,), eps=1e-7, atol=1e-7)


# ---------------------------------------------------------------------------
# (4) pair indexing and the chi-squared quantile header
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", (2, 3, 1000, 46341, 46342, 65536, 65537, 92682, 92683, 2**20))
def test_pair_index_mapping(n):
    pairs = n * (n - 1) // 2
    rng = np.random.default_rng(n)
    rows = np.unique(np.concatenate([[0, n - 2], rng.integers(0, n - 1, 200)]))
    starts = rows * (2 * n - rows - 1) // 2
    ks = np.unique(np.concatenate([[0, pairs - 1], starts, np.maximum(starts - 1, 0),
                                   rng.integers(0, pairs, 2000, dtype=np.uint64)]).astype(np.uint64))
    ij = _C.pair_of(n, ks)
    i, j = ij[:, 0].astype(object), ij[:, 1].astype(object)
    k = ks.astype(object)
    # Exact integer arithmetic on Python ints: the row start of i and the pair's offset in it.
    assert all(0 <= a < b < n for a, b in zip(i, j))
    assert all(a * (2 * n - a - 1) // 2 + (b - a - 1) == kk for a, b, kk in zip(i, j, k))
    assert _C.pair_index(n, int(i[-1]), int(j[-1])) == int(k[-1])
    if pairs > 2**32:
        assert int(k.max()) > 2**32  # the sample reaches past 32-bit indices


@pytest.mark.parametrize("df", (1, 20, 1024))
def test_engine_anchor_interpolation_matches_scipy(df):
    """Beyond 65536 pairs the engine interpolates Chi2 quantiles from anchors (C++ header):
    its residuals e = d_(k) - c'_k, recovered from p = 2, give c' within 1e-8 of scipy."""
    z = random_points(400, 3, seed=1)  # n' = 79800
    target = Chi2(df)
    _, residual, keys, _ = cdf_engine.cdf_pairs_op(z, None, None, cdf_engine.pack_anchors(
        gaussreg.targets.chi2_anchors(79800, df)), 2, 79800, 0, True)
    pairs = 79800
    k = np.arange(1, pairs + 1)
    expected = np.where(k - 0.5 <= pairs / 2, scipy.stats.chi2.ppf((k - 0.5) / pairs, df),
                        scipy.stats.chi2.isf((pairs - k + 0.5) / pairs, df))
    # The residual is stored at each pair's index; the sorted keys give each rank's d.
    d = reference._half_sq_distances_of_pairs(z)
    order = torch.argsort(d, stable=True)
    c = (keys - residual[order]).numpy()
    assert np.max(np.abs(c / expected - 1)) < 1e-8
    assert_close(gaussreg.cdf_attraction(z, distances_target=target, p=2),
                 reference.cdf_attraction(z, p=2, distances_target=reference.Chi2Target(df)), 1e-8, 0,
                 what="anchored loss vs scipy quantiles")


# ---------------------------------------------------------------------------
# (5) errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(p=3), ValueError, "p must be 1 or 2"),
    (dict(p=True), ValueError, "p must be 1 or 2"),
    (dict(radii_weight=float("nan")), ValueError, "radii_weight"),
    (dict(distances_weight="1"), TypeError, "distances_weight"),
    (dict(radii_target=20), TypeError, "radii_target"),
    (dict(distances_target=object()), TypeError, "distances_target"),
    (dict(max_sort_bytes=0), ValueError, "max_sort_bytes"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussreg.cdf_attraction(random_points(10, 3), **kwargs)


def test_integral_options_of_other_types():
    """Regressions: p=2.0 passed the check (2.0 == 2) and then failed inside the custom op
    with a schema RuntimeError; a numpy integer max_sort_bytes was refused."""
    z = random_points(30, 3, seed=2)
    for p in (1, 2):
        assert_identical(gaussreg.cdf_attraction(z, p=float(p)), gaussreg.cdf_attraction(z, p=p), what=f"p={p}.0")
        assert_identical(gaussreg.cdf_attraction(z, p=np.int64(p)), gaussreg.cdf_attraction(z, p=p), what="np p")
    budget = _entries_for(z, 100)
    assert_identical(gaussreg.cdf_attraction(z, max_sort_bytes=np.int64(budget)),
                     gaussreg.cdf_attraction(z, max_sort_bytes=budget), what="numpy max_sort_bytes")


def test_bad_target_output():
    class WrongLength:
        def quantiles(self, m, device, dtype):
            return torch.zeros(m + 1, dtype=dtype, device=device)

    class NaNs:
        def quantiles(self, m, device, dtype):
            return torch.full((m,), float("nan"), dtype=dtype, device=device)

    with pytest.raises(ValueError, match="shape"):
        gaussreg.cdf_attraction(random_points(10, 3), distances_target=WrongLength())
    with pytest.raises(ValueError, match="NaN"):
        gaussreg.cdf_attraction(random_points(10, 3), radii_target=NaNs())
    with pytest.raises(ValueError, match="distances_target.quantiles returned NaN"):
        gaussreg.cdf_attraction(random_points(10, 3), distances_target=NaNs())

    class Chi2WithNaNs(Chi2):  # only Chi2 itself is trusted to check its tables
        def quantiles(self, m, device, dtype):
            return NaNs().quantiles(m, device, dtype)

    with pytest.raises(ValueError, match="radii_target.quantiles returned NaN"):
        gaussreg.cdf_attraction(random_points(10, 3), radii_target=Chi2WithNaNs(3))


def test_a_cached_chi2_table_spoiled_in_place_is_not_used():
    """Chi2's tables are checked when computed, not per call: one modified in place must be recomputed."""
    z = random_points(12, 3, dtype=torch.float64)
    expected = gaussreg.cdf_attraction(z)
    for m in (12, cdf_engine.pair_count(12)):
        Chi2(3).quantiles(m, z.device, z.dtype)[0] = float("nan")
        assert_identical(gaussreg.cdf_attraction(z), expected, what=f"after spoiling the table of {m}")


@pytest.mark.parametrize("z, error, match", [
    (torch.zeros(1, 3), ValueError, "at least 2 points"),
    (torch.zeros(5), ValueError, "2-D"),
    (torch.zeros(5, 3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), ValueError, "NaN or Inf"),
    (torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), ValueError, "NaN or Inf"),
    ([[0.0, 1.0], [1.0, 0.0]], TypeError, "torch.Tensor"),
])
def test_bad_points(z, error, match):
    with pytest.raises(error, match=match):
        gaussreg.cdf_attraction(z)


def test_op_contract_for_direct_callers():
    z = random_points(5, 2)
    with pytest.raises(ValueError, match="contiguous"):
        cdf_engine.cdf_pairs_op(z.t().contiguous().t(), torch.zeros(10, dtype=z.dtype), None, None, 1, 10, 0, False)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        cdf_engine.cdf_pairs_op(z, torch.zeros(10, dtype=z.dtype), None, None, 3, 10, 0, False)
    with pytest.raises(ValueError, match="table"):
        cdf_engine.cdf_pairs_op(z, torch.zeros(3, dtype=z.dtype), None, None, 1, 10, 0, False)
    with pytest.raises(ValueError, match="exactly one"):
        cdf_engine.cdf_pairs_op(z, None, None, None, 1, 10, 0, False)


# ---------------------------------------------------------------------------
# (6) autograd, layouts, compile, threads
# ---------------------------------------------------------------------------


def test_strided_input(layout):
    z = random_points(50, 6, seed=3)
    from gaussreg.testing import with_layout

    v0, (g0,) = value_and_grads(loss_fn(p=2), [z])
    v1, (g1,) = value_and_grads(loss_fn(p=2), [with_layout(z, layout)])
    assert_close(v1, v0, 1e-14, 0, what="value")
    assert_close(g1, g0, 1e-13, 1e-15, what="gradient")


@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("offset", (0.0, 1e2, 1e4))
def test_float32_gradient_of_points_far_from_the_origin(offset, p):
    """The backward forms (sum_j w_ij) z_i - sum_j w_ij z_j; far from the origin (spread 1) that
    cancelled (relative error 2e-5 at offset 100, 4e-3 at 1e4) until the points were centered."""
    z = (random_points(300, 8, seed=5, dtype=torch.float64) + offset).float()
    target = Chi2(8)
    plan = cdf_engine.plan(z.device, z.dtype, 300, target, None)
    _, signs = cdf_engine.rank_distances(z, p, plan.capacity, **cdf_engine.quantile_source(z, target, plan))
    one = torch.tensor(1.0, dtype=torch.float64)
    got = cdf_engine.distances_gradient(z, signs, p, one).double()
    exact = cdf_engine.distances_gradient(z.double(), signs if p == 1 else signs.double(), p, one)
    assert float((got - exact).norm() / exact.norm()) < 3e-7


def test_second_derivative_refused():
    check_double_backward_refused(loss_fn(p=2), [random_points(20, 3, seed=1)])


def test_thread_count_does_not_change_results(restore_threads):
    check_thread_independent(loss_fn(p=1), [random_points(300, 8, seed=2)])
    check_thread_independent(loss_fn(p=2), [random_points(301, 8, seed=3, dtype=torch.float32)])


def test_compile_fullgraph():
    torch._dynamo.reset()
    target = Chi2(4)
    z = random_points(40, 4, seed=2)

    def f(z):
        return gaussreg.cdf_attraction(z, p=2, radii_target=target, distances_target=target)

    eager_v, (eager_g,) = value_and_grads(f, [z])
    compiled_v, (compiled_g,) = value_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), [z])
    assert_close(compiled_v, eager_v, 1e-13, 1e-15)
    assert_close(compiled_g, eager_g, 1e-13, 1e-15)


def test_reference_backend_option():
    z = random_points(30, 3, seed=1)
    assert_close(gaussreg.cdf_attraction(z, backend="reference"), reference.cdf_attraction(z), 1e-15, F64_ATOL)


# ---------------------------------------------------------------------------
# (7) the paper's claim: attraction alone makes a uniform sample look Gaussian
# ---------------------------------------------------------------------------


def ks_statistics(z):
    """KS distance of the radii and of all pair distances (||.||^2 / 2) to chi2_D."""
    cdf = scipy.stats.chi2(z.shape[1]).cdf
    radii = (z * z).sum(1).numpy()
    distances = cdf_engine.sorted_half_sq_distances(z).numpy()
    return scipy.stats.kstest(radii, cdf).statistic, scipy.stats.kstest(distances, cdf).statistic


def test_descent_from_uniform_reaches_gaussian_ks_range():
    """Duda's Fig. 1 claim: from uniform [-1, 1]^20 (n = 200), descending cdf_attraction alone
    (Adam, p = 1) brings both KS statistics below the 95th percentile of true N(0, I) samples."""
    g = torch.Generator().manual_seed(0)
    null = np.array([ks_statistics(torch.randn(200, 20, generator=g, dtype=torch.float64)) for _ in range(50)])
    radii_95, distances_95 = np.percentile(null, 95, axis=0)
    z = (torch.rand(200, 20, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    start = ks_statistics(z.detach())
    assert start[0] > radii_95 and start[1] > distances_95  # the uniform sample is clearly not Gaussian
    optimizer = torch.optim.Adam([z], lr=0.03)
    for _ in range(150):
        optimizer.zero_grad()
        gaussreg.cdf_attraction(z).backward()
        optimizer.step()
    radii_ks, distances_ks = ks_statistics(z.detach())
    assert radii_ks < radii_95, (radii_ks, radii_95)
    assert distances_ks < distances_95, (distances_ks, distances_95)


# ---------------------------------------------------------------------------
# (8) CUDA parity
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", (2, 3, 257, 1000))
def test_cuda_matches_cpu(n, dtype, p):
    z = random_points(n, 20, seed=n, dtype=dtype)
    target = Chi2(20)
    fn = loss_fn(p=p, radii_target=target, distances_target=target)
    v_cpu, (g_cpu,) = value_and_grads(fn, [z])
    v_gpu, (g_gpu,) = value_and_grads(fn, [z.cuda()])
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert v_gpu.device.type == "cuda" and v_gpu.dtype == dtype
    assert_close(v_gpu, v_cpu, rtol, 0, what="value, CUDA vs CPU")
    assert_close(g_gpu, g_cpu, rtol, rtol * float(g_cpu.abs().max()), what="gradient, CUDA vs CPU")


@pytest.mark.cuda
def test_cuda_sorted_keys_and_multi_pass():
    z = random_points(700, 9, seed=2, dtype=torch.float32)
    expected = cdf_engine.sorted_half_sq_distances(z)
    zc = z.cuda()
    assert_close(cdf_engine.sorted_half_sq_distances(zc).cpu(), expected, 1e-6, 0, what="CUDA sorted keys")
    pairs = cdf_engine.pair_count(700)
    assert_close(cdf_engine.sorted_half_sq_distances(zc, capacity=pairs // 5).cpu(), expected, 1e-6, 0,
                 what="CUDA multi-pass sorted keys")
    one = gaussreg.cdf_attraction(zc)
    few = gaussreg.cdf_attraction(zc, max_sort_bytes=_entries_for(zc, pairs // 6))
    assert_close(few, one, 1e-5, 0, what="CUDA multi-pass value")



def test_huge_finite_points_never_give_nan():
    # Squares of such points overflow float32 to inf (an honest inf loss); nothing may
    # turn that, or a sum over the points, into NaN.
    z = random_points(50, 4, seed=1, dtype=torch.float32) * 1e37
    for weights in ((1.0, 1.0), (0.0, 0.0), (0.0, 1.0)):
        value = gaussreg.cdf_attraction(z, radii_weight=weights[0], distances_weight=weights[1])
        assert not torch.isnan(value), weights
    assert float(gaussreg.cdf_attraction(z, radii_weight=0.0, distances_weight=0.0)) == 0.0


def test_zero_weights_give_zero_and_a_zero_gradient():
    z = random_points(10, 3, seed=1, requires_grad=True)
    value = gaussreg.cdf_attraction(z, radii_weight=0.0, distances_weight=0.0)
    value.backward()
    assert float(value) == 0.0 and bool((z.grad == 0).all())
