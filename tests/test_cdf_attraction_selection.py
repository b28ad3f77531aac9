"""cdf_attraction's selection engine (SPEC 1, p = 1): histogram every pair, sort only mixed bins.

Every case is checked against a float64 brute force written here with numpy: all n'
distances, a stable argsort (ties ranked by pair index, the engine's documented tie rule),
e = d_(k) - c'_k, the value sum |e| and the gradient sum_j sgn(e_ij)(z_i - z_j). The cases
are chosen to break a binning shortcut: everything mixed, nothing mixed, exact ties
(duplicated points, integer lattices) across bin edges, empty bins between clusters,
D = 1 and 1024, n = 2 and 3, a tiny bin budget (clamp bins and mixed bins everywhere) and
a tiny sort budget (mixed pairs collected over many passes).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats
import torch

import gaussreg
from gaussreg import _native
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.testing import random_points


def brute_force(z: torch.Tensor, targets: np.ndarray):
    """(sum_k |d_(k) - c'_k|, sum_j sgn(e_ij)(z_i - z_j)) in float64, ties in pair-index order."""
    x = z.detach().double().numpy()
    n = x.shape[0]
    i, j = np.triu_indices(n, 1)  # row by row: position = pair index k(i, j)
    d = 0.5 * ((x[i] - x[j]) ** 2).sum(1)
    order = np.argsort(d, kind="stable")
    e = np.empty_like(d)
    e[order] = d[order] - targets
    s = np.sign(e)
    grad = np.zeros_like(x)
    np.add.at(grad, i, s[:, None] * (x[i] - x[j]))
    np.add.at(grad, j, s[:, None] * (x[j] - x[i]))
    return np.abs(e).sum(), grad


def chi2_table(pairs: int, df: int, dtype=torch.float64) -> torch.Tensor:
    k = np.arange(1, pairs + 1)
    return torch.tensor(scipy.stats.chi2.ppf((k - 0.5) / pairs, df), dtype=dtype)


# The CUDA engine ranks by selection only when given bins > 0 (its default still sorts
# every pair until the selection has run on a GPU); these tests then pass 2^16.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
CUDA_BINS = 1 << 16


def engine(z: torch.Tensor, table: torch.Tensor, bins: int = 0, capacity: int = 0, device: str = "cpu"):
    """(value, gradient, stats) of the p = 1 engine with the given target table."""
    z = z.detach().clone().to(device).contiguous().requires_grad_(True)
    if device == "cuda" and bins == 0:
        bins = CUDA_BINS
    pairs = cdf_engine.pair_count(z.shape[0])
    value, stats = cdf_engine.cdf_pairs(z, 1, capacity or pairs, table=table.to(device, z.dtype).contiguous(),
                                        bins=bins, with_stats=True)
    value.backward()
    return float(value.detach()), z.grad.cpu().double().numpy(), stats


def check_against_brute_force(z, table, bins=0, capacity=0, rtol=1e-12, device="cpu"):
    value, grad, stats = engine(z, table, bins, capacity, device)
    expected_value, expected_grad = brute_force(z, table.double().numpy())
    scale = max(1.0, float(np.abs(z.detach().double().numpy()).max())) * z.shape[0]
    assert abs(value - expected_value) <= rtol * max(1.0, abs(expected_value)), (value, expected_value)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=rtol * scale ** 2)
    assert 0 <= stats["sorted_pairs"] <= cdf_engine.pair_count(z.shape[0])
    return stats


# ---------------------------------------------------------------- the brute force itself


def test_brute_force_by_hand():
    """Three points on a line: pairs (0,1), (0,2), (1,2) have d = 0.5, 4.5, 2, ranked 1, 3, 2,
    against targets 1, 1, 5: e = -0.5, -0.5, +1."""
    z = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    value, grad = brute_force(z, np.array([1.0, 1.0, 5.0]))
    assert value == pytest.approx(0.5 + 0.5 + 1.0)
    s01, s02, s12 = -1, -1, 1
    np.testing.assert_allclose(grad[:, 0], [s01 * (0 - 1) + s02 * (0 - 3), s01 * (1 - 0) + s12 * (1 - 3),
                                            s02 * (3 - 0) + s12 * (3 - 1)])


# ---------------------------------------------------------------- near, far, everything mixed


SHAPES = ((2, 3), (3, 2), (300, 8), (257, 64), (120, 1), (40, 1024))


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_sample_near_its_target(n, d, device):
    z = random_points(n, d, seed=n + d)
    check_against_brute_force(z, chi2_table(cdf_engine.pair_count(n), d), device=device)


def selection_and_full_sort(z, table, device):
    """(value, signs) of the selection and of the full sort (p = 1 with sorted output) of the
    same engine: the very same keys, ranked two ways."""
    z, table = z.to(device), table.to(device)
    pairs = cdf_engine.pair_count(z.shape[0])
    bins = CUDA_BINS if device == "cuda" else 0
    value_select, signs_select, _, _ = cdf_engine.cdf_pairs_op(z, table, None, None, 1, pairs, bins, False)
    value_sort, signs_sort, _, _ = cdf_engine.cdf_pairs_op(z, table, None, None, 1, pairs, 0, True)
    return value_select, signs_select, value_sort, signs_sort


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_signs_equal_the_full_sort(n, d, device):
    """float32 keys are rounded, so a float64 brute force may disagree on pairs within a
    rounding of their target; the full sort ranks the very same keys, and must give the
    same signs bit for bit."""
    z = random_points(n, d, seed=n + d, dtype=torch.float32)
    pairs = cdf_engine.pair_count(n)
    table = chi2_table(pairs, d, torch.float32)
    value_select, signs_select, value_sort, signs_sort = selection_and_full_sort(z, table, device)
    assert torch.equal(signs_select, signs_sort)
    assert float(value_select) == pytest.approx(float(value_sort), rel=1e-6, abs=1e-6)
    assert float(value_select) == pytest.approx(brute_force(z, table.double().numpy())[0], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("scale", (3.0, 0.2))
@pytest.mark.parametrize("device", DEVICES)
def test_sample_far_from_its_target_sorts_almost_nothing(scale, device):
    n, d = 400, 16
    z = random_points(n, d, seed=5) * scale
    pairs = cdf_engine.pair_count(n)
    stats = check_against_brute_force(z, chi2_table(pairs, d), device=device)
    assert stats["sorted_pairs"] <= pairs // 100, stats  # far: only the clamp bins' few pairs


def own_quantile_targets(n, d, seed):
    """n points and targets placed between neighbouring sorted distances: every rank's sign
    alternates, so nearly every bin is mixed and only exact ranks give the right signs."""
    z = random_points(n, d, seed=seed)
    x = z.double().numpy()
    i, j = np.triu_indices(n, 1)
    keys = np.sort(0.5 * ((x[i] - x[j]) ** 2).sum(1))
    gaps = np.diff(keys, append=keys[-1] + 1.0)
    nudge = np.where(np.arange(keys.size) % 2 == 0, 0.25, -0.25) * np.minimum(gaps, np.diff(keys, prepend=-1.0))
    table = torch.tensor(keys + nudge)
    assert torch.all(table[1:] >= table[:-1])
    return z, table


@pytest.mark.parametrize("device", DEVICES)
def test_sample_on_its_own_quantiles_is_all_mixed(device):
    """Every bin mixed, in bins the caller chose: the selection refines and sorts the mixed
    leaves in their slots."""
    z, table = own_quantile_targets(200, 5, seed=7)
    n = 200
    stats = check_against_brute_force(z, table, bins=1 << 16, device=device)
    # Nearly all mixed: the engine counts the mixed bins again in leaves (one more pass)
    # and sorts the mixed leaves, still most pairs.
    assert stats["refined_bins"] > 0 and stats["passes"] == 3, stats
    assert stats["sorted_pairs"] >= 0.3 * cdf_engine.pair_count(n), stats


def test_with_the_default_bins_a_sample_on_its_own_quantiles_sorts_every_pair():
    """With its default bins the CPU engine gives up the selection when the second level
    still leaves more than half of the pairs mixed, and sorts every pair (no slower than the
    full sort by more than the two histogram passes; ranking the mixed slots took 1.7x the
    time at n = 2048). The same signs and value as the brute force. (n = 800: its 2^16 leaf
    slots are under a quarter of the pairs, so the second level runs; see the next test.)"""
    z, table = own_quantile_targets(800, 5, seed=8)
    stats = check_against_brute_force(z, table)
    pairs = cdf_engine.pair_count(800)
    assert stats["sorted_pairs"] == pairs and stats["refined_bins"] > 0, stats
    assert stats["passes"] >= 4, stats  # the two histogram passes and the sort's two


def test_a_small_call_sorts_every_pair_rather_than_cut_leaves():
    """Below n ~ 725 the second level's 2^16 leaf slots would be more than a quarter of the
    pairs: clearing, merging and classifying them cost more than sorting every pair (N(0, I)
    samples at n = 256 that refined took 2.7 to 4.2 ms, 1.6 to 2.3 ms sorting all). With its
    default bins the engine then sorts every pair after the first histogram pass, and cuts
    no leaves. The same signs and value as the brute force."""
    z, table = own_quantile_targets(300, 5, seed=8)
    stats = check_against_brute_force(z, table)
    assert stats["sorted_pairs"] == cdf_engine.pair_count(300) and stats["refined_bins"] == 0, stats
    assert stats["passes"] == 3, stats  # the selection's histogram pass and the sort's two


# ---------------------------------------------------------------- ties, empty bins, extremes


@pytest.mark.parametrize("bins", (0, 4))
@pytest.mark.parametrize("device", DEVICES)
def test_duplicated_points_and_lattice_ties(bins, device):
    """Integer points: distances are half-integers, tied in large groups (and zero for the
    duplicates), on bin edges of every width; the targets cross the ties."""
    g = torch.Generator().manual_seed(3)
    z = torch.randint(-2, 3, (150, 3), generator=g).double()
    z[100:] = z[:50]  # duplicated rows: d = 0 ties
    pairs = cdf_engine.pair_count(150)
    check_against_brute_force(z, chi2_table(pairs, 3), bins=bins, device=device)


def test_ties_equal_to_their_targets_have_sign_zero():
    z = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)  # d in {0.5, 2, 4.5}
    table = torch.tensor([0.5, 0.5, 0.5, 2.0, 2.0, 4.5], dtype=torch.float64)
    value, grad, _ = engine(z, table)
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize("device", DEVICES)
def test_two_far_clusters_leave_empty_bins_between(device):
    z = torch.cat([random_points(100, 4, seed=1), random_points(80, 4, seed=2) + 1000.0])
    pairs = cdf_engine.pair_count(180)
    check_against_brute_force(z, chi2_table(pairs, 4), device=device)
    far_table = torch.linspace(0.0, 3e6, pairs, dtype=torch.float64)  # targets across the gap
    check_against_brute_force(z, far_table, device=device)


@pytest.mark.parametrize("bins", (1, 2, 7, 300))
@pytest.mark.parametrize("device", DEVICES)
def test_tiny_bin_budget_falls_back_to_sorting(bins, device):
    """Few in-range bins: most pairs land in clamp or wide mixed bins and are sorted; the
    result is the brute force's all the same."""
    z = random_points(150, 6, seed=9)
    stats = check_against_brute_force(z, chi2_table(cdf_engine.pair_count(150), 6), bins=bins, device=device)
    assert stats["bins"] <= bins + 2


@pytest.mark.parametrize("capacity", (1, 37, 500))
@pytest.mark.parametrize("device", DEVICES)
def test_tiny_sort_budget_collects_mixed_pairs_over_passes(capacity, device):
    z = torch.randint(0, 3, (120, 2), generator=torch.Generator().manual_seed(4)).double() + 0.5
    z[60:] = torch.randn(60, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    table = chi2_table(cdf_engine.pair_count(120), 2)
    try:
        stats = check_against_brute_force(z, table, capacity=capacity, bins=1 << 12, device=device)
    except MemoryError as exc:  # a bin of tied distances larger than the whole budget
        assert "share one bucket" in str(exc) and capacity < 500
        return
    assert stats["passes"] >= 2


@pytest.mark.parametrize("device", DEVICES)
def test_sort_budget_below_the_mixed_pairs_takes_several_passes(device):
    """About 11000 mixed pairs in 4096 bins; the engine refines them into leaves (106 mixed
    pairs are left on the CPU), 30 a pass: several collection passes, each ranking its slots
    from their first ranks; the result is the brute force's."""
    z = random_points(301, 7, seed=0)
    stats = check_against_brute_force(z, chi2_table(cdf_engine.pair_count(301), 7), bins=1 << 12,
                                      capacity=30, device=device)
    assert stats["refined_bins"] > 0 and stats["sorted_pairs"] < 1000, stats
    assert stats["passes"] >= 5, stats  # the histogram, the leaves and at least three collections


def own_distances_scaled(z: torch.Tensor, factor: float) -> torch.Tensor:
    """An Empirical target made of z's own sorted distances times `factor`."""
    x = z.double().numpy()
    i, j = np.triu_indices(x.shape[0], 1)
    return torch.tensor(np.sort(0.5 * ((x[i] - x[j]) ** 2).sum(1)) * factor)


@pytest.mark.parametrize("device", DEVICES)
def test_more_mixed_bins_than_leaf_pairs_still_refines_the_crowded_ones(device):
    """Targets 3e-5 above the sample's own distances: about 63000 of 2^17 bins are mixed,
    more than half the leaf budget, so cutting every one of them would give one bit of
    leaves. The second level cuts the most crowded bins 16 or more ways instead, and their
    leaves are narrower than the 3e-5 gap: with every mixed bin cut in two, 99% of the
    pairs were still sorted; now under 10%."""
    z = random_points(3000, 4, seed=7)
    stats = check_against_brute_force(z, own_distances_scaled(z, 1 + 3e-5), bins=1 << 17, device=device)
    assert stats["refined_bins"] > 0, stats
    assert stats["sorted_pairs"] < 0.1 * cdf_engine.pair_count(3000), stats


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_pairs_that_leaves_cannot_split_do_not_trigger_a_refinement(device):
    """9% of the pairs are zero distances between 120 copies of one point: all in the lower
    clamp bin, which is sorted and which no leaf can cut. With 2^12 bins they come beside one
    small mixed bin; they alone must not buy the second level's extra pass over the pairs
    (it did, for that one bin: 3 passes): the histogram and one collection, 2 passes."""
    z = torch.cat([random_points(280, 3, seed=1).double(), torch.zeros(120, 3, dtype=torch.float64)])
    pairs = cdf_engine.pair_count(400)
    stats = check_against_brute_force(z, chi2_table(pairs, 3), bins=1 << 12, device=device)
    assert stats["sorted_pairs"] > pairs // 16, stats  # the zeros are mixed and sorted
    assert stats["refined_bins"] == 0 and stats["passes"] == 2, stats


@pytest.mark.parametrize("device", DEVICES)
def test_a_small_call_sorts_a_fifth_of_its_pairs_rather_than_pass_over_them_again(device):
    """n = 500 in 2048 bins: 20% of the pairs are mixed. Below a few thousand points sorting
    them costs less than the second level's extra pass (1.7x the time, measured), so the engine
    sorts them: 2 passes. It refined them when the rule was 1/16 of the pairs at any size."""
    z = random_points(500, 8, seed=0).double()
    pairs = cdf_engine.pair_count(500)
    stats = check_against_brute_force(z, chi2_table(pairs, 8), bins=1 << 11, device=device)
    assert stats["refined_bins"] == 0 and stats["passes"] == 2, stats
    assert stats["sorted_pairs"] > pairs // 8, stats


@pytest.mark.parametrize("device", DEVICES)
def test_selection_matches_full_sort_value(device):
    """The same loss through the selection (p = 1) and through the full sort that p = 1 with
    sorted output takes: equal values, identical signs."""
    z = random_points(500, 10, seed=11)
    table = chi2_table(cdf_engine.pair_count(500), 10)
    value_select, signs_select, value_sort, signs_sort = selection_and_full_sort(z, table, device)
    assert torch.equal(signs_select, signs_sort)
    assert float(value_select) == pytest.approx(float(value_sort), rel=1e-13)


def test_anchored_targets_sum_in_closed_form():
    """Beyond 65536 pairs Chi2 targets are anchors whose cubic pieces the decided bins sum in
    closed form; the loss still matches the reference's exact quantiles."""
    z = random_points(400, 12, seed=2)  # n' = 79800
    got = gaussreg.cdf_attraction(z, radii_weight=0.0)
    expected = gaussreg.reference.cdf_attraction(z, radii_weight=0.0)
    assert float(got) == pytest.approx(float(expected), rel=1e-9)


def test_results_do_not_depend_on_bins_beyond_rounding(restore_threads):
    z = random_points(600, 20, seed=6)
    table = chi2_table(cdf_engine.pair_count(600), 20)
    values = [engine(z, table, bins=bins)[0] for bins in (0, 1 << 10, 3)]
    assert values[1] == pytest.approx(values[0], rel=1e-13) and values[2] == pytest.approx(values[0], rel=1e-13)
    torch.set_num_threads(1)
    one = engine(z, table)
    torch.set_num_threads(2)
    two = engine(z, table)
    assert one[0] == two[0] and np.array_equal(one[1], two[1])  # bitwise, any thread count


def test_refined_leaves_are_bitwise_the_same_for_any_thread_count(restore_threads):
    """Three bins: nearly every pair is mixed, so the engine refines; the leaves' histograms,
    offsets and sums must not depend on how many threads counted them."""
    z = random_points(600, 20, seed=6)
    table = chi2_table(cdf_engine.pair_count(600), 20)
    runs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        runs.append(engine(z, table, bins=3))
    assert runs[0][2]["refined_bins"] > 0, runs[0][2]
    for value, grad, stats in runs[1:]:
        assert value == runs[0][0] and np.array_equal(grad, runs[0][1]) and stats == runs[0][2]


def test_many_threads_keep_the_histogram_rows_small_and_the_same_bits(restore_threads):
    """Each virtual thread keeps a histogram row of every bin and leaf: 64 threads would hold
    about 250 MiB of rows at n = 4096. The engine counts with fewer virtual threads where
    the rows would pass 64 MiB (or the 2-bit signs' size), with the same bits as one thread."""
    module = _native.module_for(torch.device("cpu"))
    pairs = cdf_engine.pair_count(4096)
    one, many = (module.cdf_pairs_workspace_bytes(0, 4096, 64, pairs, 0, t) for t in (1, 64))
    assert many - one <= 64 << 20, (one, many)
    ks_one, ks_many = (module.ks_distances_workspace_bytes(0, 4096, 64, 0, t) for t in (1, 64))
    assert ks_many - ks_one <= 64 << 20, (ks_one, ks_many)
    z = random_points(600, 20, seed=6)
    table = chi2_table(cdf_engine.pair_count(600), 20)
    runs = []
    for threads in (1, 64):
        torch.set_num_threads(threads)
        runs.append([engine(z, table), engine(z, table, bins=3)])
    for (value, grad, stats), (value64, grad64, stats64) in zip(*runs):
        assert value64 == value and np.array_equal(grad64, grad) and stats64 == stats


# ---------------------------------------------------------------- memory


_MEMORY_CHILD = textwrap.dedent("""
    import sys, torch, gaussreg
    from gaussreg.losses.cdf_attraction import cdf_pairs_with_stats
    from gaussreg.targets import Chi2
    def peak_kib():
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    torch.manual_seed(0)
    z = torch.randn(int(sys.argv[1]), 64, requires_grad=True)
    gaussreg.cdf_attraction(torch.randn(200, 64, requires_grad=True)).backward()  # warm
    before = peak_kib()
    gaussreg.cdf_attraction(z).backward()
    extra = (peak_kib() - before) * 1024
    _, stats = cdf_pairs_with_stats(z.detach(), Chi2(64))
    print(extra, stats["sorted_pairs"])
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (peak resident memory)")
def test_p1_keeps_two_bits_a_pair_plus_the_mixed_pairs():
    """Peak extra resident memory of one p = 1 forward + backward at n = 8192 (n' = 3.4e7):
    the 2-bit signs (8 MiB) and 8 bytes per mixed pair, plus a few MiB of bins and copies;
    the full sort held 8 bytes for every pair (256 MiB)."""
    n = 8192
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra, sorted_pairs = (int(v) for v in out.stdout.split())
    pairs = cdf_engine.pair_count(n)
    assert extra <= pairs // 4 + 8 * sorted_pairs + (24 << 20), (extra, sorted_pairs)
