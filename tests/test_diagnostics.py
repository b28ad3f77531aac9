"""gaussreg.diagnostics (SPEC 8) against independent computations: scipy.stats for KS and
the chi-squared / normal / lognormal tails, direct Python loops for Mardia, BHEP and HZ.

Each statistic is also checked on N(0, I) samples (lands where its null law puts it, over
a few fixed seeds) and on a clearly non-Gaussian sample (rejects).
"""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from scipy.spatial.distance import pdist

import gaussreg
from gaussreg import diagnostics as dg
from gaussreg.diagnostics import _ks, _report
from gaussreg.engines import cdf_attraction as cdf_engine

SEEDS_NULL = (0, 1, 2, 3, 4)


def normal(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def uniform(n, d, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


# ---------------------------------------------------------------------------
# Independent computations (plain Python / numpy loops, scipy)
# ---------------------------------------------------------------------------


def loop_mardia(y):
    n = len(y)
    b1 = sum(float(np.dot(y[i], y[j])) ** 3 for i in range(n) for j in range(n)) / n**2
    b2 = sum(float(np.dot(y[i], y[i])) ** 2 for i in range(n)) / n
    return b1, b2


def whitened(x):
    centered = x - x.mean(0)
    cov = centered.T @ centered / len(x)
    return centered @ np.real(scipy.linalg.inv(scipy.linalg.sqrtm(cov)))


def loop_bhep(y, beta):
    n, d = y.shape
    pair = sum(math.exp(-beta**2 / 2 * float(np.sum((y[i] - y[j]) ** 2))) for i in range(n) for j in range(n)) / n**2
    point = sum(math.exp(-beta**2 * float(np.sum(y[i] ** 2)) / (2 * (1 + beta**2))) for i in range(n)) / n
    return pair - 2 * (1 + beta**2) ** (-d / 2) * point + (1 + 2 * beta**2) ** (-d / 2)


def mvn_hz(x):
    """HZ and its p-value as R's MVN package writes them (no log1p), with scipy's lognormal."""
    n, p = x.shape
    y = whitened(x)
    beta = ((2 * p + 1) * n / 4) ** (1 / (p + 4)) / math.sqrt(2)
    dj = np.array([[np.sum((y[i] - y[j]) ** 2) for j in range(n)] for i in range(n)])
    di = np.array([np.sum(y[i] ** 2) for i in range(n)])
    hz = (np.sum(np.exp(-beta**2 / 2 * dj)) / n
          - 2 * (1 + beta**2) ** (-p / 2) * np.sum(np.exp(-beta**2 / (2 * (1 + beta**2)) * di))
          + n * (1 + 2 * beta**2) ** (-p / 2))
    a = 1 + 2 * beta**2
    mu = 1 - a ** (-p / 2) * (1 + p * beta**2 / a + p * (p + 2) * beta**4 / (2 * a**2))
    wb = (1 + beta**2) * (1 + 3 * beta**2)
    si2 = (2 * (1 + 4 * beta**2) ** (-p / 2)
           + 2 * a ** (-p) * (1 + 2 * p * beta**4 / a**2 + 3 * p * (p + 2) * beta**8 / (4 * a**4))
           - 4 * wb ** (-p / 2) * (1 + 3 * p * beta**4 / (2 * wb) + p * (p + 2) * beta**8 / (2 * wb**2)))
    pmu = math.log(math.sqrt(mu**4 / (si2 + mu**2)))
    psi = math.sqrt(math.log((si2 + mu**2) / mu**2))
    return hz, scipy.stats.lognorm(s=psi, scale=math.exp(pmu)).sf(hz)


# ---------------------------------------------------------------------------
# Mardia
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(9, 2), (14, 3)])
def test_mardia_raw_matches_loop(n, d):
    z = normal(n, d, seed=n)
    b1, b2 = loop_mardia(z.numpy())
    result = dg.mardia(z)
    assert result.skewness == pytest.approx(b1, rel=1e-12)
    assert result.kurtosis == pytest.approx(b2, rel=1e-12)
    assert result.skewness_pvalue is None and result.kurtosis_pvalue is None and not result.standardized


@pytest.mark.parametrize("n,d", [(12, 2), (20, 4)])
def test_mardia_standardized_matches_loop_and_scipy(n, d):
    z = normal(n, d, seed=n) * 3 + 1
    b1, b2 = loop_mardia(whitened(z.numpy()))
    result = dg.mardia(z, standardize=True)
    assert result.skewness == pytest.approx(b1, rel=1e-9)
    assert result.kurtosis == pytest.approx(b2, rel=1e-9)
    df = d * (d + 1) * (d + 2) / 6
    assert result.skewness_pvalue == pytest.approx(scipy.stats.chi2.sf(n * b1 / 6, df), rel=1e-9)
    kurt_z = (b2 - d * (d + 2)) / math.sqrt(8 * d * (d + 2) / n)
    assert result.kurtosis_pvalue == pytest.approx(2 * scipy.stats.norm.sf(abs(kurt_z)), rel=1e-9)


def test_mardia_on_normal_samples_lands_in_null_range():
    n, d = 400, 5
    for seed in SEEDS_NULL:
        z = normal(n, d, seed)
        raw = dg.mardia(z)
        # ||z||^2 ~ chi2_D: E b2 = D(D+2), Var ||z||^4 = D(D+2)(D+4)(D+6) - (D(D+2))^2.
        sd_b2 = math.sqrt((d * (d + 2) * (d + 4) * (d + 6) - (d * (d + 2)) ** 2) / n)
        assert abs(raw.kurtosis - d * (d + 2)) < 4.5 * sd_b2
        # E b1 = E||z||^6 / n = D(D+2)(D+4)/n; b1 >= 0 and its sd is of the same order.
        assert 0 < raw.skewness < 4 * d * (d + 2) * (d + 4) / n
        std = dg.mardia(z, standardize=True)
        assert std.skewness_pvalue > 1e-3 and std.kurtosis_pvalue > 1e-3


def test_mardia_rejects_non_gaussian():
    z = uniform(400, 5)
    assert dg.mardia(z, standardize=True).kurtosis_pvalue < 1e-6  # platykurtic
    skewed = normal(400, 5).exp()
    assert dg.mardia(skewed, standardize=True).skewness_pvalue < 1e-6
    assert dg.mardia(z).kurtosis < 0.2 * 5 * 7  # raw: far too narrow for N(0, I)


def test_mardia_standardized_singular_raises():
    with pytest.raises(ValueError, match="singular"):
        dg.mardia(normal(4, 6), standardize=True)
    z = normal(50, 3)
    with pytest.raises(ValueError, match="singular"):
        dg.mardia(torch.cat([z, z[:, :1]], 1), standardize=True)  # a repeated column


# ---------------------------------------------------------------------------
# KS of radii and distances
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(1, 3), (57, 2), (300, 20)])
def test_ks_radii_matches_scipy(n, d):
    z = normal(n, d, seed=n)
    radii = (z.numpy() ** 2).sum(1)
    result = dg.ks_radii(z)
    assert result.statistic == pytest.approx(scipy.stats.kstest(radii, scipy.stats.chi2(d).cdf).statistic,
                                             abs=1e-12)
    quantiles = scipy.stats.chi2.ppf((np.arange(1, n + 1) - 0.5) / n, d)
    assert result.l1 == pytest.approx(np.abs(np.sort(radii) - quantiles).mean(), rel=1e-8)
    assert result.count == n


def distances_by_scipy(z):
    return pdist(z.double().numpy(), "sqeuclidean") / 2


@pytest.mark.parametrize("path", ["bins", "sort", "torch"])
@pytest.mark.parametrize("n,d", [(2, 3), (41, 5), (400, 8)])
def test_ks_distances_matches_scipy(n, d, path, monkeypatch):
    """The three ways of ranking the pairs: key bins (CPU engine), the full sort (CUDA
    engine), plain torch (no compiled engine)."""
    # n = 400 has 79800 pairs: beyond 65536 the engine interpolates its quantiles per rank.
    if path == "sort":
        monkeypatch.setattr(cdf_engine, "distance_bins_supported", lambda device: False)
    if path == "torch":
        monkeypatch.setattr(cdf_engine, "supported", lambda device: False)
    z = normal(n, d, seed=n)
    values = distances_by_scipy(z)
    m = len(values)
    result = dg.ks_distances(z)
    assert result.count == m
    assert result.statistic == pytest.approx(scipy.stats.kstest(values, scipy.stats.chi2(d).cdf).statistic,
                                             abs=1e-12)
    quantiles = scipy.stats.chi2.ppf((np.arange(1, m + 1) - 0.5) / m, d)
    assert result.l1 == pytest.approx(np.abs(np.sort(values) - quantiles).mean(), rel=1e-7)


def test_ks_distances_sorted_in_several_passes(monkeypatch):
    """A sort budget below n' entries: the engine sorts in passes, same statistic and gap."""
    z = normal(300, 5, seed=2)
    expected = dg.ks_distances(z)
    monkeypatch.setattr(cdf_engine, "default_sort_bytes", lambda device: 100_000)
    result = dg.ks_distances(z)
    assert result.statistic == expected.statistic and result.l1 == pytest.approx(expected.l1, rel=1e-12)


def test_ks_bracketing_blocks_is_exact(monkeypatch):
    """The block bounds of long inputs prune but never change the supremum."""
    monkeypatch.setattr(_ks, "_KS_DIRECT_MAX", 50)
    monkeypatch.setattr(_ks, "_KS_BLOCK", 16)
    for seed, z in enumerate([normal(150, 4, 7), uniform(150, 4, 8) * 2, normal(150, 4, 9) * 1.05]):
        values = distances_by_scipy(z)
        expected = scipy.stats.kstest(values, scipy.stats.chi2(4).cdf).statistic
        assert dg.ks_distances(z).statistic == pytest.approx(expected, abs=1e-12), seed


def test_ks_float32_input_close_to_float64():
    z = normal(200, 10)
    assert dg.ks_distances(z.float()).statistic == pytest.approx(dg.ks_distances(z).statistic, abs=1e-5)


def test_ks_on_normal_samples_lands_in_null_range():
    n, d = 500, 10
    for seed in SEEDS_NULL:
        z = normal(n, d, seed)
        # The radii are i.i.d. chi2_D: their KS statistic follows Kolmogorov's law exactly.
        assert scipy.stats.kstwo.sf(dg.ks_radii(z).statistic, n) > 1e-3
        # Distances share points (no exact law); in the null they stay of order 1/sqrt(n).
        assert dg.ks_distances(z).statistic < 2.0 / math.sqrt(n)


def test_ks_rejects_non_gaussian():
    z = uniform(500, 10)  # Duda's starting point: far too narrow for N(0, I)
    assert dg.ks_radii(z).statistic > 0.5 and dg.ks_distances(z).statistic > 0.5
    # Unit variance per coordinate, but the radii are too concentrated for chi2_D.
    assert scipy.stats.kstwo.sf(dg.ks_radii(z * math.sqrt(3)).statistic, 500) < 1e-6


# ---------------------------------------------------------------------------
# BHEP and Henze-Zirkler
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 1.3])
def test_bhep_matches_loop(beta):
    z = normal(13, 3, seed=3) + 0.2
    assert dg.bhep(z, beta).statistic == pytest.approx(loop_bhep(z.numpy(), beta), rel=1e-10)


def test_bhep_small_on_normal_samples_large_otherwise():
    # E bhep under N(0, I) is O(1/n) (n * bhep has a limit law); shifted or uniform samples keep a gap.
    null = [dg.bhep(normal(200, 3, seed), 1.0).statistic for seed in SEEDS_NULL]
    assert max(null) < 0.02
    assert dg.bhep(normal(200, 3) + 1.0, 1.0).statistic > 0.1
    assert dg.bhep(uniform(200, 3), 1.0).statistic > 0.05


@pytest.mark.parametrize("n,d", [(15, 2), (25, 3), (30, 1)])
def test_henze_zirkler_matches_mvn_formulas(n, d):
    z = normal(n, d, seed=n) * 2 - 0.5
    hz, pvalue = mvn_hz(z.numpy())
    result = dg.henze_zirkler(z)
    assert result.statistic == pytest.approx(hz, rel=1e-9)
    assert result.pvalue == pytest.approx(pvalue, rel=1e-7, abs=1e-14)
    assert result.beta == pytest.approx(((2 * d + 1) * n / 4) ** (1 / (d + 4)) / math.sqrt(2))


def test_henze_zirkler_is_n_bhep_of_the_standardized_sample():
    z = normal(60, 4, seed=5) * 1.7 + 3
    result = dg.henze_zirkler(z)
    y = torch.from_numpy(whitened(z.numpy()))
    assert result.statistic == pytest.approx(60 * dg.bhep(y, result.beta).statistic, rel=1e-10)


def test_henze_zirkler_singular_covariance():
    result = dg.henze_zirkler(normal(5, 8))
    assert (result.statistic, result.pvalue, result.singular) == (20.0, 0.0, True)


def test_henze_zirkler_null_and_alternative():
    for seed in SEEDS_NULL:
        assert dg.henze_zirkler(normal(300, 4, seed)).pvalue > 1e-3
    assert dg.henze_zirkler(uniform(300, 4)).pvalue < 1e-6
    assert dg.henze_zirkler(normal(300, 4).pow(3)).pvalue < 1e-6


def test_henze_zirkler_pvalue_defined_at_large_dimension():
    """At D = 64 HZ - 1 is tiny; without log1p the lognormal p-value is 0/0."""
    pvalues = [dg.henze_zirkler(normal(400, 64, seed)).pvalue for seed in (0, 1, 2)]
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in pvalues)
    assert max(pvalues) > 1e-3


# ---------------------------------------------------------------------------
# Projections and Cramer-Wold
# ---------------------------------------------------------------------------


def test_projection_ks_matches_scipy():
    z = normal(80, 5, seed=1)
    result = dg.projection_ks(z, 6, generator=torch.Generator().manual_seed(11))
    # The documented draw: normalized standard normal vectors from the generator, on the CPU.
    directions = torch.randn(6, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    expected = [scipy.stats.kstest(z.numpy() @ theta, "norm").statistic for theta in directions]
    assert result.statistics == pytest.approx(expected, abs=1e-12)
    assert result.statistic == pytest.approx(np.mean(expected)) and result.max == pytest.approx(max(expected))


def test_projection_ks_null_and_alternative():
    g = torch.Generator().manual_seed(0)
    n = 500
    for seed in SEEDS_NULL:
        assert scipy.stats.kstwo.sf(dg.projection_ks(normal(n, 6, seed), 16, generator=g).max, n) > 1e-3 / 16
    assert dg.projection_ks(normal(n, 6) * 2, 16, generator=g).statistic > 0.15


def test_cramer_wold_index_is_normalized_cw_distance():
    for d, kernel in [(3, "exact"), (24, "approx")]:
        z = normal(50, d, seed=d)
        gamma = (4 / (3 * 50)) ** 0.4
        expected = 2 * math.sqrt(math.pi * (1 + gamma)) * float(gaussreg.reference.cw_distance(z, kernel=kernel))
        result = dg.cramer_wold_index(z)
        assert result.kernel == kernel and result.statistic == pytest.approx(expected, rel=1e-9)
    assert dg.cramer_wold_index(normal(300, 20)).statistic < 0.2 * dg.cramer_wold_index(uniform(300, 20)).statistic


# ---------------------------------------------------------------------------
# Report, results, errors, plots
# ---------------------------------------------------------------------------


def test_report_holds_every_statistic_and_prints_a_table():
    z = normal(120, 4).float()
    rep = dg.report(z, num_projections=4, generator=torch.Generator().manual_seed(0))
    assert set(rep) == {"mardia", "mardia_standardized", "ks_radii", "ks_distances", "henze_zirkler",
                        "projection_ks", "cramer_wold"}
    assert rep["ks_radii"] == dg.ks_radii(z)
    text = str(rep)
    assert "Henze-Zirkler" in text and "KS distances" in text and "n = 120, D = 4" in text
    data = json.loads(rep.to_json())
    assert data["henze_zirkler"]["pvalue"] == pytest.approx(rep["henze_zirkler"].pvalue)
    assert data["projection_ks"]["statistics"] == list(rep["projection_ks"].statistics)


def test_report_prints_how_far_henze_zirkler_is_from_one():
    """At D = 32 HZ is 1 - 9e-06 for a Gaussian sample and 1 + 0.0012 for Student t_3
    (p = 0): four significant digits printed both as "1"."""
    rows = dict((row[0], row[1]) for row in dg.report(normal(500, 32), num_projections=2).rows())
    torch.manual_seed(3)
    t3 = torch.distributions.StudentT(3.0).sample((500, 32)).double()
    rows_t3 = dict((row[0], row[1]) for row in dg.report(t3, num_projections=2).rows())
    assert rows["Henze-Zirkler"].startswith("1 - ") and rows_t3["Henze-Zirkler"].startswith("1 + ")
    assert float(rows_t3["Henze-Zirkler"][4:]) == pytest.approx(dg.henze_zirkler(t3).statistic - 1, rel=1e-2)
    assert _report._near_one(0.5) == "0.5" and _report._near_one(1.0) == "1"


def test_report_on_a_singular_sample():
    rep = dg.report(normal(6, 9))
    assert rep["mardia_standardized"] is None and rep["henze_zirkler"].pvalue == 0.0
    assert "singular covariance" in str(rep)


def test_results_convert_to_dict():
    result = dg.mardia(normal(30, 2), standardize=True)
    assert result.to_dict()["kurtosis_pvalue"] == result.kurtosis_pvalue
    assert json.loads(dg.ks_radii(normal(10, 2)).to_json())["count"] == 10


def test_numpy_input_is_accepted():
    z = normal(40, 3)
    assert dg.henze_zirkler(z.numpy()) == dg.henze_zirkler(z)


@pytest.mark.parametrize("fn", [dg.mardia, dg.ks_radii, dg.ks_distances, dg.henze_zirkler, dg.projection_ks,
                                dg.cramer_wold_index, dg.report])
def test_bad_inputs_name_the_argument(fn):
    z = normal(10, 3)
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.cat([z, torch.full((1, 3), float("nan"))]))
    with pytest.raises(ValueError, match="z must be a 2-D"):
        fn(z[:, 0])
    with pytest.raises(TypeError, match="z must be a floating-point"):
        fn(torch.ones(10, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        fn([[1.0, 2.0], [3.0, 4.0]])


def test_bad_options():
    z = normal(10, 3)
    with pytest.raises(ValueError, match="beta"):
        dg.bhep(z, 0.0)
    with pytest.raises(ValueError, match="beta"):
        dg.henze_zirkler(z, beta=-1.0)
    with pytest.raises(TypeError, match="standardize"):
        dg.mardia(z, standardize=1)
    with pytest.raises(ValueError, match="num_projections"):
        dg.projection_ks(z, 0)
    with pytest.raises(TypeError, match="generator"):
        dg.projection_ks(z, 2, generator=0)
    with pytest.raises(ValueError, match="at least 2 points"):
        dg.ks_distances(z[:1])


def test_plots_draw_and_save(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [normal(60, 5, seed) for seed in range(3)]
    fig, axes = dg.plot_cdfs(runs, title="N(0, I)")
    assert len(axes) == 2 and len(axes[0].lines) == 4  # 3 runs + the chi2 CDF
    fig.savefig(tmp_path / "cdfs.png")
    assert (tmp_path / "cdfs.png").stat().st_size > 1000
    from matplotlib.figure import Figure

    grid = Figure().subplots(1, 3)
    g = torch.Generator().manual_seed(0)
    for plot, ax in zip((dg.plot_projections, dg.plot_scalar_products, dg.plot_angles), grid):
        fig2, returned = plot(runs[0], ax=ax, generator=g)
        assert returned is ax and fig2 is ax.figure and len(ax.lines) >= 2
        # The dashed curve is named in a legend, and the y axis says what it shows.
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "sample" in labels and len(labels) == 2 and ax.get_ylabel()
    assert "angle" in grid[2].get_title()
    with pytest.raises(ValueError, match="ax must hold 2"):
        dg.plot_cdfs(runs[0], ax=[grid[0]])
