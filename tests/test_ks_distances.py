"""ks_distances by key bins (gaussreg/diagnostics.py ``_ks_of_bins``, csrc/cpu/cdf_attraction.cpp
"key ranges"): the KS statistic of the n' half squared distances without sorting them all.

The expected statistics come from scipy's float64 distances ranked by numpy's sort or,
for float32 points, from every key ranked by the engine's full sort (the same keys, bit
for bit, so the two must agree exactly). Inputs are chosen to break a binning shortcut:
ties within and across bins, empty bins between clusters, one repeated value, wide bins
that must be collected, budgets that force several collection passes.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from gaussreg import diagnostics as dg
from gaussreg.diagnostics import _ks
from gaussreg.engines import cdf_attraction as cdf_engine

pytestmark = pytest.mark.skipif(not cdf_engine.distance_bins_supported(torch.device("cpu")),
                                reason="the compiled CPU engine is not built")


def generator(seed):
    return torch.Generator().manual_seed(seed)


def near(n, d, seed=0):  # on the target: the empirical CDF crosses chi2_D everywhere
    return torch.randn(n, d, generator=generator(seed), dtype=torch.float64)


def far(n, d, seed=0):  # every distance far below its target
    return 0.2 * near(n, d, seed)


def clusters(n, d, seed=0):  # two far clusters: a gap of empty bins between two key ranges
    z = near(n, d, seed)
    z[n // 2:, 0] += 40.0
    return z


def duplicated(n, d, seed=0):  # each point four times: a quarter... of the keys are exact zeros
    return near((n + 3) // 4, d, seed).repeat(4, 1)[:n]


def lattice(n, d, seed=0):  # integer points: few distinct keys, heavily tied, across bin edges
    return torch.randint(-2, 3, (n, d), generator=generator(seed)).to(torch.float64)


def one_point(n, d, seed=0):  # every key is 0: one bin, one value
    return torch.ones(n, d, dtype=torch.float64)


SAMPLES = [near, far, clusters, duplicated, lattice, one_point]


def scipy_statistic(z):
    """sup |Fhat - F| of scipy's float64 distances, ranked by numpy's sort. F is the same
    chi2 CDF (torch's regularized gamma) as the code's: at D = 1024 scipy's own CDF differs
    from it by 1e-10, which is not what these tests are about (test_diagnostics holds
    ks_distances to scipy.stats.kstest)."""
    keys = np.sort(pdist(z.numpy(), "sqeuclidean") / 2)
    f = _ks._chi2_cdf(torch.from_numpy(keys), z.shape[1]).numpy()
    m = len(keys)
    rank = np.arange(1, m + 1)
    return max(float(np.max(rank / m - f)), float(np.max(f - (rank - 1) / m)))


def chi2_cdf(d):
    return lambda x: _ks._chi2_cdf(x, d)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bins", [0, 1, 3, 64])
@pytest.mark.parametrize("n,d", [(2, 1), (3, 2), (150, 1), (150, 5), (40, 1024)])
def test_statistic_matches_scipy(sample, bins, n, d):
    z = sample(n, d).contiguous()
    assert _ks._ks_of_bins(z, chi2_cdf(d), bins) == pytest.approx(scipy_statistic(z), abs=1e-12)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bins", [0, 2, 16])
def test_float32_statistic_equals_the_full_sort(sample, bins):
    """Same float32 keys as the engine's full sort: the same supremum, to the last bit."""
    z = sample(700, 6, seed=3).float().contiguous()
    every_key = cdf_engine.sorted_half_sq_distances(z)
    assert _ks._ks_of_bins(z, chi2_cdf(6), bins) == _ks._ks_of_sorted(every_key, chi2_cdf(6))


def test_ks_distances_equals_the_full_sort_path(monkeypatch):
    """The public function: statistic identical, l1 within float64 summation order."""
    for z in (near(900, 16, seed=1), far(900, 16, seed=1), near(900, 16, seed=1).float()):
        by_bins = dg.ks_distances(z)
        monkeypatch.setattr(cdf_engine, "distance_bins_supported", lambda device: False)
        by_sort = dg.ks_distances(z)
        monkeypatch.undo()
        assert by_bins.statistic == by_sort.statistic
        assert by_bins.l1 == pytest.approx(by_sort.l1, rel=1e-6 if z.dtype == torch.float32 else 1e-12)
        assert by_bins.count == by_sort.count


def collected_keys(monkeypatch):
    """Counts the keys the statistic collects (and sorts)."""
    seen = []
    collect = cdf_engine.collect_distance_bins

    def counting(*args, **kwargs):
        keys = collect(*args, **kwargs)
        seen.append(keys.shape[0])
        return keys

    monkeypatch.setattr(cdf_engine, "collect_distance_bins", counting)
    return seen


@pytest.mark.parametrize("sample", [near, far, clusters], ids=lambda f: f.__name__)
def test_sorts_a_small_fraction_of_the_pairs(sample, monkeypatch):
    n = 3000
    z = sample(n, 32, seed=4).float().contiguous()
    seen = collected_keys(monkeypatch)
    statistic = _ks._ks_of_bins(z, chi2_cdf(32))
    every_key = cdf_engine.sorted_half_sq_distances(z)
    assert statistic == _ks._ks_of_sorted(every_key, chi2_cdf(32))
    assert sum(seen) <= cdf_engine.pair_count(n) // 50, seen


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bins", [4, 64])
def test_refined_bins_give_the_same_statistic(sample, bins, monkeypatch):
    """Refinement forced at every level: each finer count covers only the candidates' span,
    the clamp bins carry the ranks of the keys outside it."""
    z = sample(300, 3, seed=8).contiguous()
    monkeypatch.setattr(_ks, "_KS_REFINE_KEYS", 0)
    counts = []
    count = cdf_engine.distance_bins
    monkeypatch.setattr(cdf_engine, "distance_bins", lambda *args: counts.append(args) or count(*args))
    assert _ks._ks_of_bins(z, chi2_cdf(3), bins) == pytest.approx(scipy_statistic(z), abs=1e-12)
    if sample in (near, far, clusters):
        assert len(counts) > 1  # at least one refinement


def test_collection_passes_within_the_budget(monkeypatch):
    """Coarse bins and a small budget: several collection passes, the same statistic; a bin
    larger than the whole budget is a MemoryError naming the count."""
    z = near(400, 3, seed=5).contiguous()
    expected = scipy_statistic(z)
    seen = collected_keys(monkeypatch)
    monkeypatch.setattr(cdf_engine, "default_sort_bytes", lambda device: 16 * 6000)  # 6000 keys and their ranks
    assert _ks._ks_of_bins(z, chi2_cdf(3), bins=64) == pytest.approx(expected, abs=1e-12)
    assert len(seen) > 1 and max(seen) <= 6000, seen
    with pytest.raises(MemoryError, match="share one key bin"):
        _ks._ks_of_bins(z, chi2_cdf(3), bins=1)


def test_same_statistic_for_any_thread_count():
    z = near(600, 8, seed=9).float().contiguous()
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(dg.ks_distances(z))
    finally:
        torch.set_num_threads(threads)
    assert all(r == results[0] for r in results), results


def test_collect_refuses_bins_of_other_points():
    z = near(200, 4, seed=6).contiguous()
    found = cdf_engine.distance_bins(z)
    chosen = torch.nonzero(found.counts).flatten()
    keys = cdf_engine.collect_distance_bins(z, found, chosen)
    assert torch.equal(keys, torch.sort(keys).values) and keys.shape[0] == cdf_engine.pair_count(200)
    other = torch.cat([z[:100], 3 * z[100:]])
    with pytest.raises(ValueError, match="do not match"):
        cdf_engine.collect_distance_bins(other, found, chosen)
    bad = found._replace(layout=torch.tensor([0, 99, 5]))
    with pytest.raises(ValueError, match="bin layout"):
        cdf_engine.collect_distance_bins(z, bad, chosen)


_MEMORY_CHILD = textwrap.dedent("""
    import sys, torch
    from gaussreg import diagnostics as dg
    def peak_kib():
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    z = torch.randn(int(sys.argv[1]), 16, generator=torch.Generator().manual_seed(0))
    dg.ks_distances(z[:300])  # warm
    before = peak_kib()
    dg.ks_distances(z)
    print((peak_kib() - before) * 1024)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (peak resident memory)")
def test_does_not_hold_the_distances():
    """Peak extra resident memory at n = 8192 (n' = 3.4e7): the 2-bit signs of the l1 gap
    (8 MiB) and a few MiB of bins and mixed pairs; the sorted distances alone were 128 MiB."""
    n = 8192
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra = int(out.stdout)
    assert extra <= 48 << 20, extra
