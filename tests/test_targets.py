"""gaussreg.targets (SPEC 1 quantile targets).

Sections: (1) chi2_ppf and chi2_quantiles against scipy, computed here
independently; (2) the Chi2 table cache; (3) Empirical against
gaussreg.reference.EmpiricalTarget; (4) one test per argument error;
(5) CPU/CUDA parity; then the docstring examples.
"""
import doctest

import numpy as np
import pytest
import scipy.stats
import torch

from gaussreg import reference as ref
from gaussreg import targets
from gaussreg.targets import Chi2, Empirical, chi2_anchors, chi2_ppf, chi2_quantiles, clear_cache, hermite_quantiles

from _helpers import assert_close

CPU = torch.device("cpu")
F64 = torch.float64

# SPEC 1's contract range and accuracy.
CHI2_RTOL = 1e-6
CONTRACT_DFS = (1, 2, 2.5, 3, 7.3, 10, 20, 64, 256, 1024)
# Beyond the contract, kept to the same tolerance: tiny and huge df.
EXTRA_DFS = (0.01, 0.3, 1e5)
# The smallest Hazen probability of the pair distances of n = 131072 points
# (n' ~ 8.6e9), then a sweep through both tails to the centre.
SMALLEST_TAIL = 0.5 / 8.6e9
TAIL_PROBABILITIES = (SMALLEST_TAIL, 1e-10, 1e-9, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.4, 0.5)


def scipy_chi2_quantiles(lower, upper, df):
    """scipy's quantile, from whichever of p and 1 - p is the smaller tail.

    ``chi2.ppf(1 - q)`` would see 1 - q rounded to float64, which moves a
    quantile at q = 5.8e-11 by up to ~1e-7 relative; ``chi2.isf(q)`` does not.
    """
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    return np.where(lower <= upper, scipy.stats.chi2.ppf(lower, df), scipy.stats.chi2.isf(upper, df))


def hazen_tails(m):
    k = np.arange(1, m + 1, dtype=np.float64)
    return (k - 0.5) / m, (m - k + 0.5) / m


@pytest.fixture
def empty_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def small_cache(monkeypatch):
    """A private cache of 240 bytes: three float64 tables of m = 10."""
    cache = targets._TableCache(max_bytes=240)
    monkeypatch.setattr(targets, "_TABLES", cache)
    return cache


# ---------------------------------------------------------------------------
# (1) chi-squared quantiles against scipy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("df", CONTRACT_DFS + EXTRA_DFS, ids=lambda df: f"df{df:g}")
def test_chi2_ppf_matches_scipy_in_both_tails(df):
    tails = np.array(TAIL_PROBABILITIES)
    lower = np.concatenate([tails, 1.0 - tails])
    # Each half has its small tail exact and the other side its rounded complement.
    upper = np.concatenate([1.0 - tails, tails])
    x = chi2_ppf(torch.tensor(lower), torch.tensor(upper), df)
    assert x.dtype == F64 and x.shape == (2 * len(tails),)
    expected = torch.tensor(scipy_chi2_quantiles(lower, upper, df))
    assert_close(x, expected, CHI2_RTOL, 0.0, what=f"chi2_ppf df={df}")


@pytest.mark.parametrize("df", (1, 3, 64, 1024))
@pytest.mark.parametrize("m", (1, 2, 7, 1000))
def test_chi2_quantiles_at_hazen_positions(m, df):
    lower, upper = hazen_tails(m)
    table = chi2_quantiles(m, df)
    assert table.dtype == F64 and table.shape == (m,) and table.device == CPU
    assert_close(table, torch.tensor(scipy_chi2_quantiles(lower, upper, df)), CHI2_RTOL, 0.0,
                 what=f"chi2_quantiles m={m} df={df}")


def test_chi2_quantiles_match_the_reference_oracle():
    """gaussreg.reference.chi2_quantiles (scipy's ppf) is the oracle of the loss tests."""
    assert_close(chi2_quantiles(501, 20), ref.chi2_quantiles(501, 20), CHI2_RTOL, 0.0, what="vs reference")


def test_chi2_quantiles_strictly_increasing_for_a_large_table():
    table = chi2_quantiles(100_000, 64)
    assert bool((table[1:] > table[:-1]).all())
    assert bool(torch.isfinite(table).all()) and float(table[0]) > 0


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_chi2_quantiles_cast_from_float64(dtype):
    assert torch.equal(chi2_quantiles(9, 5, dtype=dtype), chi2_quantiles(9, 5).to(dtype))


def test_chi2_ppf_limits_and_invalid_probabilities():
    lower = torch.tensor([0.0, 1.0, -0.1, 1.1, float("nan")], dtype=F64)
    upper = torch.tensor([1.0, 0.0, 1.1, -0.1, 0.5], dtype=F64)
    x = chi2_ppf(lower, upper, 3)
    assert float(x[0]) == 0.0 and float(x[1]) == float("inf")
    assert bool(torch.isnan(x[2:]).all())


def test_chi2_ppf_broadcasts_a_tensor_df():
    lower = torch.tensor([[0.1], [0.5]], dtype=F64)
    df = torch.tensor([1.0, 2.5, 64.0], dtype=F64)
    x = chi2_ppf(lower, 1 - lower, df)
    assert x.shape == (2, 3)
    expected = scipy.stats.chi2.ppf(lower.numpy(), df.numpy())
    assert_close(x, torch.tensor(expected), CHI2_RTOL, 0.0, what="broadcast df")
    assert bool(torch.isnan(chi2_ppf(lower, 1 - lower, torch.tensor([-1.0, 0.0]))).all())


def test_chi2_targets_drive_the_reference_loss():
    """SPEC 1 default targets: Chi2(D) plugged into the reference loss gives its scipy value."""
    z = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    with_targets = ref.cdf_attraction(z, p=2, radii_target=Chi2(6), distances_target=Chi2(6))
    assert_close(with_targets, ref.cdf_attraction(z, p=2), 1e-9, 0.0, what="cdf_attraction")


# ---------------------------------------------------------------------------
# (2) the Chi2 table cache
# ---------------------------------------------------------------------------


def test_cache_returns_the_same_table_for_the_same_key(empty_cache):
    first = Chi2(5).quantiles(10, "cpu", F64)
    again = Chi2(5.0).quantiles(10, torch.device("cpu"), F64)
    assert again is first
    assert_close(first, chi2_quantiles(10, 5), 0.0, 0.0, what="cached table")


@pytest.mark.parametrize("other", ((11, 5, F64), (10, 6, F64), (10, 5, torch.float32)),
                         ids=("m", "df", "dtype"))
def test_cache_keeps_keys_apart(empty_cache, other):
    m, df, dtype = other
    first = Chi2(5).quantiles(10, CPU, F64)
    table = Chi2(df).quantiles(m, CPU, dtype)
    assert table is not first
    assert table.dtype == dtype and table.shape == (m,)
    assert torch.equal(table, chi2_quantiles(m, df, dtype=dtype))


def test_clear_cache_drops_tables(empty_cache):
    first = Chi2(5).quantiles(10, CPU, F64)
    assert len(targets._TABLES) == 1
    clear_cache()
    assert len(targets._TABLES) == 0 and targets._TABLES.nbytes == 0
    again = Chi2(5).quantiles(10, CPU, F64)
    assert again is not first and torch.equal(again, first)


def test_cache_bound_evicts_least_recently_used(small_cache):
    tables = {df: Chi2(df).quantiles(10, CPU, F64) for df in (1, 2, 3)}
    assert len(small_cache) == 3 and small_cache.nbytes == 240
    assert Chi2(1).quantiles(10, CPU, F64) is tables[1]  # df=1 is now the most recent
    Chi2(4).quantiles(10, CPU, F64)
    assert len(small_cache) == 3 and small_cache.nbytes <= small_cache.max_bytes
    assert Chi2(1).quantiles(10, CPU, F64) is tables[1]
    assert Chi2(3).quantiles(10, CPU, F64) is tables[3]
    assert Chi2(2).quantiles(10, CPU, F64) is not tables[2]  # evicted, recomputed


def test_table_larger_than_the_bound_is_returned_not_stored(small_cache):
    Chi2(1).quantiles(10, CPU, F64)
    big = Chi2(7).quantiles(31, CPU, F64)  # 248 bytes > 240
    assert torch.equal(big, chi2_quantiles(31, 7))
    assert len(small_cache) == 1 and small_cache.nbytes == 80
    assert Chi2(7).quantiles(31, CPU, F64) is not big


@pytest.mark.parametrize("misuse", ("in_place", "requires_grad"))
def test_callers_cannot_corrupt_the_cache(empty_cache, misuse):
    target = Chi2(4)
    table = target.quantiles(8, CPU, F64)
    expected = table.clone()
    residual = torch.linspace(0, 10, 8, dtype=F64) - table  # what a loss does with it
    assert torch.equal(table, expected) and residual.shape == (8,)
    if misuse == "in_place":
        table.mul_(0.0)
    else:
        table.requires_grad_(True)
    again = target.quantiles(8, CPU, F64)
    assert torch.equal(again, expected) and not again.requires_grad


def test_tables_built_under_inference_mode_are_cacheable(empty_cache):
    with torch.inference_mode():
        table = Chi2(3).quantiles(6, CPU, F64)
        assert Chi2(3).quantiles(6, CPU, F64) is table
    assert not table.is_inference()
    assert Chi2(3).quantiles(6, CPU, F64) is table


def test_chi2_identity():
    assert Chi2(3) == Chi2(3.0) and Chi2(3) != Chi2(4) and Chi2(3) != "Chi2(3)"
    assert len({Chi2(3), Chi2(3.0), Chi2(np.float64(3)), Chi2(4)}) == 2
    assert isinstance(Chi2(3).df, float) and Chi2(3).df == 3.0
    assert (repr(Chi2(20)), repr(Chi2(7.3))) == ("Chi2(df=20)", "Chi2(df=7.3)")


# ---------------------------------------------------------------------------
# (3) Empirical against gaussreg.reference.EmpiricalTarget
# ---------------------------------------------------------------------------


def _sample(kind, count, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        return torch.randint(0, 4, (count,), generator=g).to(F64)
    return torch.randn(count, generator=g, dtype=F64) * 3.0 + 1.0


@pytest.mark.parametrize("kind,count,m", [
    ("random", 1, 1), ("random", 1, 6), ("random", 5, 3), ("random", 5, 12),
    ("random", 100, 37), ("random", 100, 1000), ("ties", 9, 4), ("ties", 9, 50),
])
def test_empirical_matches_reference(kind, count, m):
    values = _sample(kind, count, seed=count + m)
    table = Empirical(values).quantiles(m, CPU, F64)
    expected = ref.EmpiricalTarget(values).quantiles(m, CPU, F64)
    scale = float(values.abs().max()) or 1.0
    assert table.shape == (m,) and table.dtype == F64
    assert_close(table, expected, 1e-15, 1e-15 * scale, what=f"{kind} N={count} m={m}")
    assert bool((table[1:] >= table[:-1]).all())


def test_empirical_is_constant_beyond_the_end_positions():
    values = torch.tensor([4.0, -1.0, 2.5, 0.5], dtype=F64)
    m = 1000
    table = Empirical(values).quantiles(m, CPU, F64)
    probability = (torch.arange(1, m + 1, dtype=F64) - 0.5) / m
    below, above = probability <= 0.5 / 4, probability >= 3.5 / 4
    assert bool((table[below] == -1.0).all()) and bool((table[above] == 4.0).all())
    inside = table[~below & ~above]
    assert bool((inside > -1.0).all()) and bool((inside < 4.0).all())


def test_empirical_interpolates_linearly_between_hazen_positions():
    # N = 2: values at probabilities 1/4 and 3/4; m = 4 asks for 1/8, 3/8, 5/8, 7/8.
    table = Empirical([10.0, 20.0]).quantiles(4, CPU, F64)
    assert_close(table, torch.tensor([10.0, 12.5, 17.5, 20.0], dtype=F64), 1e-15, 0.0, what="N=2")


def test_empirical_copies_detaches_flattens_and_sorts():
    source = torch.tensor([[3.0, -2.0], [1.0, 0.0]], requires_grad=True)
    target = Empirical(source)
    assert target.sorted_values.dtype == F64 and not target.sorted_values.requires_grad
    assert target.sorted_values.tolist() == [-2.0, 0.0, 1.0, 3.0]
    with torch.no_grad():
        source.zero_()
    assert target.sorted_values.tolist() == [-2.0, 0.0, 1.0, 3.0]
    assert Empirical(np.array([2, 1])).sorted_values.tolist() == [1.0, 2.0]
    assert repr(target) == "Empirical(N=4)"


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_empirical_casts_from_float64(dtype):
    target = Empirical(_sample("random", 20, seed=1))
    assert torch.equal(target.quantiles(13, CPU, dtype), target.quantiles(13, CPU, F64).to(dtype))


# ---------------------------------------------------------------------------
# (4) argument errors name the argument
# ---------------------------------------------------------------------------


def test_chi2_tables_beyond_the_dtype_range_raise():
    with pytest.raises(ValueError, match="beyond the range of torch.float16"):
        Chi2(1e5).quantiles(4, CPU, torch.float16)  # about 1e5 > 65504


@pytest.mark.parametrize("df,error", [
    (0, ValueError), (-1.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (1e16, ValueError), (True, TypeError), ("3", TypeError), (None, TypeError), ([3], TypeError),
])
def test_bad_df(df, error):
    with pytest.raises(error, match="df"):
        Chi2(df)
    with pytest.raises(error, match="df"):
        chi2_quantiles(4, df)


def _quantile_calls():
    return {
        "chi2_quantiles": lambda m: chi2_quantiles(m, 3),
        "Chi2.quantiles": lambda m: Chi2(3).quantiles(m, CPU, F64),
        "Empirical.quantiles": lambda m: Empirical([1.0, 2.0]).quantiles(m, CPU, F64),
    }


@pytest.mark.parametrize("call", ("chi2_quantiles", "Chi2.quantiles", "Empirical.quantiles"))
@pytest.mark.parametrize("m,error", [
    (0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError), ("3", TypeError), (None, TypeError),
])
def test_bad_m(call, m, error):
    with pytest.raises(error, match=r"\bm\b"):
        _quantile_calls()[call](m)


@pytest.mark.parametrize("dtype", (torch.int64, torch.bool, "float64"), ids=str)
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        Chi2(3).quantiles(4, CPU, dtype)
    with pytest.raises(TypeError, match="dtype"):
        Empirical([1.0]).quantiles(4, CPU, dtype)


@pytest.mark.parametrize("values,error", [
    ([], ValueError), (torch.empty(0, 3), ValueError), ([1.0, float("nan")], ValueError),
    ([float("inf"), 1.0], ValueError), (torch.tensor([1 + 1j]), TypeError), (torch.tensor([True]), TypeError),
])
def test_bad_empirical_values(values, error):
    with pytest.raises(error, match="values"):
        Empirical(values)


# ---------------------------------------------------------------------------
# (5) CPU/CUDA parity
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("df", (1, 2.5, 64, 1024))
def test_chi2_quantiles_cuda_matches_cpu(df):
    table = Chi2(df).quantiles(4097, "cuda", F64)
    assert table.device.type == "cuda"
    assert_close(table, chi2_quantiles(4097, df), 1e-12, 0.0, what=f"CUDA vs CPU df={df}")
    lower, upper = hazen_tails(4097)
    assert_close(table, torch.tensor(scipy_chi2_quantiles(lower, upper, df)), CHI2_RTOL, 0.0, what="CUDA vs scipy")


@pytest.mark.cuda
def test_empirical_cuda_matches_cpu():
    target = Empirical(_sample("random", 50, seed=2).cuda())
    table = target.quantiles(333, "cuda", torch.float32)
    assert table.device.type == "cuda" and table.dtype == torch.float32
    assert torch.equal(table.cpu(), Empirical(target.sorted_values.cpu()).quantiles(333, CPU, torch.float32))


# ---------------------------------------------------------------------------
# Docstring examples
# ---------------------------------------------------------------------------


def test_docstring_examples_run(empty_cache):
    result = doctest.testmod(targets, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("df", (1, 2.5, 20, 64, 1024))
def test_long_tables_interpolate_within_1e_9(df):
    """Beyond 65536 quantiles the table interpolates between exact anchors: checked
    against scipy at every rank of m = 200003 and at both ends and random ranks of
    m = 8.6e9 (n' at n = 131072), where the tails reach 5.8e-11."""
    m = 200_003
    k = np.arange(1, m + 1)
    expected = np.where(k - 0.5 <= m / 2, scipy.stats.chi2.ppf((k - 0.5) / m, df),
                        scipy.stats.chi2.isf((m - k + 0.5) / m, df))
    table = chi2_quantiles(m, df).numpy()
    assert np.max(np.abs(table / expected - 1)) < 1e-8
    m = 131072 * 131071 // 2
    rng = np.random.default_rng(7)
    ranks = np.unique(np.concatenate([np.arange(3000), m - 1 - np.arange(3000), rng.integers(0, m, 5000)]))
    got = hermite_quantiles(chi2_anchors(m, df), torch.as_tensor(ranks)).numpy()
    p, q = (ranks + 0.5) / m, (m - ranks - 0.5) / m
    expected = np.where(p <= 0.5, scipy.stats.chi2.ppf(p, df), scipy.stats.chi2.isf(q, df))
    assert np.max(np.abs(got / expected - 1)) < 1e-8
