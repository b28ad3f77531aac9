"""``gaussreg demo`` and ``gaussreg train`` at tiny sizes: their printed tables, files and JSON.

Losses that have not landed yet must show as "not available yet"; where one is missing,
a stand-in built from ``gaussreg.reference`` (SPEC signature) checks the wiring too, so
these tests pass with and without them.
"""
import io
import json
import numpy as np
import pytest
import torch

import gaussreg
from gaussreg import cli, demo, reference, train
from gaussreg._progress import Progress

pytest.importorskip("matplotlib")

TINY_DEMO = ["--dim", "4", "--n", "24", "--runs", "2", "--steps", "5"]
TINY_TRAIN = ["--epochs", "1", "--latent-dim", "2", "--batch-size", "64"]


def row_of(text, label):
    lines = [line for line in text.splitlines() if line.startswith(label)]
    assert len(lines) == 1, (label, text)
    return lines[0]


# ---------------------------------------------------------------------------
# Stand-ins for losses another branch lands (used only where the real one is absent)
# ---------------------------------------------------------------------------


class StandInMixture:
    """The SPEC 7 interface of gaussreg.GaussianMixture: means, stds, weights, sample."""

    def __init__(self, means, stds, weights):
        self.means, self.stds, self.weights = means, stds, weights

    def sample(self, n, generator=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, device=self.means.device)
        return self.means[k] + self.stds[k] * noise


def stand_in_gmm_ks(z, prior):
    return reference.gmm_ks_loss(z, prior.means, prior.stds, prior.weights)


def stand_in_gmm_cov(z, prior):
    return reference.gmm_cov_loss(z, prior.means, prior.stds, prior.weights)


def stand_in_gmm_weights(prior, n, num_batches=10, generator=None):
    draws = [prior.sample(n, generator=generator) for _ in range(num_batches)]
    ks = sum(float(stand_in_gmm_ks(x, prior)) for x in draws) / num_batches
    cov = sum(float(stand_in_gmm_cov(x, prior)) for x in draws) / num_batches
    return 1.0 / ks, 1.0 / cov


STAND_INS = {
    "sliced_wasserstein": reference.sliced_wasserstein,
    "coordinate_cdf_attraction": reference.coordinate_cdf_attraction,
    "epps_pulley": reference.epps_pulley,
    "GaussianMixture": StandInMixture,
    "gmm_ks_loss": stand_in_gmm_ks,
    "gmm_cov_loss": stand_in_gmm_cov,
    "gmm_loss_weights": stand_in_gmm_weights,
}


@pytest.fixture
def with_stand_ins(monkeypatch):
    """Every loss of SPEC 2, 6, 7, 7b present: the real one if landed, else a reference stand-in."""
    for name, function in STAND_INS.items():
        if getattr(gaussreg, name, None) is None:
            monkeypatch.setattr(gaussreg, name, function, raising=False)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def test_demo_tiny_writes_table_figures_and_json(tmp_path, capsys):
    assert demo.main(TINY_DEMO + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for method in demo.METHODS:
        row = row_of(out, method.label)
        if method.loss_name is not None and getattr(gaussreg, method.loss_name, None) is None:
            assert "not available yet" in row
        else:
            assert "not available yet" not in row and len(row.split()) >= 6
    for name in ("fig1.png", "fig2.png"):
        assert (tmp_path / name).stat().st_size > 5000
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["settings"]["dim"] == 4
    cdf = summary["methods"]["cdf"]
    assert cdf["status"] == "ok" and len(cdf["runs"]) == 2 and 0 <= cdf["mean"]["ks_radii"] <= 1


def test_demo_reports_a_missing_loss_and_runs_a_landed_one(tmp_path, capsys, monkeypatch, with_stand_ins):
    monkeypatch.delattr(gaussreg, "cw_distance")
    args = TINY_DEMO + ["--out", str(tmp_path), "--methods", "cwae,swae,coord,epps_pulley", "--no-plots"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "not available yet" in row_of(out, "CWAE")
    for label in ("SWAE", "coordinate CDF", "Epps-Pulley"):
        assert "not available yet" not in row_of(out, label)
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["methods"]["cwae"] == {"status": "not available yet", "loss": "gaussreg.cw_distance",
                                          "label": "CWAE (log cw_distance)"}
    assert not (tmp_path / "fig1.png").exists()


def test_demo_cdf_attraction_reaches_the_normal_row(tmp_path, capsys):
    """Minimizing CDF attraction alone from uniform [-1, 1]^D ends as close to chi2_D as an
    i.i.d. N(0, I) sample, while the start is far (KS about 0.9)."""
    args = ["--dim", "6", "--n", "80", "--runs", "2", "--steps", "150", "--methods", "normal,cdf",
            "--out", str(tmp_path), "--no-plots"]
    assert demo.main(args) == 0
    methods = json.loads((tmp_path / "demo.json").read_text())["methods"]
    start = demo.statistics(torch.rand(80, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert start["ks_radii"] > 0.5
    assert methods["cdf"]["mean"]["ks_radii"] < 0.05 and methods["cdf"]["mean"]["ks_distances"] < 0.05
    assert methods["normal"]["mean"]["ks_radii"] < 0.25


def test_demo_bad_options_name_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--n", "1"])
    assert "--n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--methods", "nope"])
    assert "unknown nope" in capsys.readouterr().err


def test_console_entry_runs_demo(tmp_path, capsys):
    """``gaussreg demo`` / ``python -m gaussreg demo`` dispatch (cli.main), with the progress lines."""
    assert cli.main(["demo", *TINY_DEMO, "--methods", "normal,cdf", "--out", str(tmp_path), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "CDF attraction" in captured.out and "4/4" in captured.err
    assert (tmp_path / "demo.json").exists()


def test_demo_quiet_prints_no_progress(tmp_path, capsys):
    assert cli.main(["demo", *TINY_DEMO, "--methods", "normal", "--out", str(tmp_path), "--no-plots", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "N(0, I)" in captured.out and captured.err == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere(capsys):
    """A terminal gets tqdm's bar (counts and an ETA); a log gets one line per finished block;
    quiet gets nothing; result lines reach stdout in every case."""
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    bar = Progress(4, "bench", stream=terminal)
    assert bar.live
    for k in range(4):
        bar.write(f"row {k}")
        bar.step(f"case {k}")
    bar.close()
    drawn = terminal.getvalue()
    assert "bench" in drawn and "4/4" in drawn and "case 3" in drawn and "<" in drawn  # tqdm's elapsed<remaining

    log = io.StringIO()
    lines = Progress(4, "train", stream=log)
    assert not lines.live
    for k in range(4):
        lines.step(f"epoch {k + 1}", finished_block=k == 1)
    assert log.getvalue().splitlines()[0].startswith("train: 2/4") and len(log.getvalue().splitlines()) == 2

    silent = io.StringIO()
    quiet = Progress(4, stream=silent, quiet=True)
    quiet.step("x", finished_block=True)
    quiet.write("result")
    assert silent.getvalue() == "" and not quiet.live
    assert capsys.readouterr().out.split() == ["row", "0", "row", "1", "row", "2", "row", "3", "result"]


def test_cli_usage_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert "demo" in usage and "train" in usage and "bench" in usage


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reg", sorted(train.REGS))
def test_train_tiny_every_reg(reg, tmp_path, capsys):
    pytest.importorskip("sklearn")
    plots = [] if reg == "cdf" else ["--no-plots"]  # the PNGs once: drawing them is most of the time
    code = train.main(TINY_TRAIN + ["--reg", reg, "--gmm-components", "4", "--out", str(tmp_path)] + plots)
    out = capsys.readouterr().out
    if train.missing(reg):
        assert code == 2 and "not available yet" in out
        return
    assert code == 0
    mse = float(out.split("held-out reconstruction MSE:")[1].split()[0])
    assert 0 < mse < 0.2
    assert "Henze-Zirkler" in out and "KS radii" in out
    for name in ("train_samples.png", "train_cdfs.png"):
        assert (tmp_path / name).exists() == (reg == "cdf")
        assert reg != "cdf" or (tmp_path / name).stat().st_size > 5000


def test_train_rejects_more_components_than_the_latent_space_holds(capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(TINY_TRAIN + ["--reg", "gmm", "--gmm-components", "5"])
    assert stop.value.code == 2 and "needs --latent-dim >= 3" in capsys.readouterr().err


@pytest.mark.parametrize("reg", ["swae", "coord", "gmm"])
def test_train_with_the_spec_interfaces(reg, tmp_path, capsys, with_stand_ins):
    pytest.importorskip("sklearn")
    args = TINY_TRAIN + ["--reg", reg, "--gmm-components", "4", "--out", str(tmp_path), "--no-plots"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "held-out reconstruction MSE" in out and "Henze-Zirkler" in out


def test_train_learns_on_digits(tmp_path, capsys):
    """A few epochs already beat predicting the mean image by a wide margin."""
    pytest.importorskip("sklearn")
    assert train.main(["--epochs", "8", "--latent-dim", "4", "--reg", "cdf", "--no-plots"]) == 0
    out = capsys.readouterr().out
    mse = float(out.split("held-out reconstruction MSE:")[1].split()[0])
    mean_guess = float(out.split("predicting the training mean:")[1].split(";")[0])
    assert mse < 0.8 * mean_guess


def test_train_on_a_npy_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 7))  # 7 features: drawn as a pixel matrix
    np.save(tmp_path / "mine.npy", data.astype(np.float32))
    args = TINY_TRAIN + ["--data", str(tmp_path / "mine.npy"), "--batch-size", "16", "--out", str(tmp_path)]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "mine.npy (60 rows of 7 features)" in out and "48 training / 12 held-out" in out
    assert (tmp_path / "train_samples.png").exists() and (tmp_path / "train_cdfs.png").exists()


def test_train_rejects_bad_data(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(50))
    with pytest.raises(SystemExit, match="2-D numeric array"):
        train.main(TINY_TRAIN + ["--data", str(tmp_path / "flat.npy")])
    with pytest.raises(SystemExit, match="cannot read"):
        train.main(TINY_TRAIN + ["--data", str(tmp_path / "missing.npy")])
    bad = np.ones((20, 3))
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(SystemExit, match="NaN"):
        train.main(TINY_TRAIN + ["--data", str(tmp_path / "nan.npy")])


def _report_stub(n, ks_radii, ks_distances, hz_pvalue):
    from types import SimpleNamespace

    stub = {"ks_radii": SimpleNamespace(statistic=ks_radii), "ks_distances": SimpleNamespace(statistic=ks_distances),
            "henze_zirkler": SimpleNamespace(pvalue=hz_pvalue)}
    report = type("Report", (dict,), {})(stub)
    report.n = n
    return report


def test_train_reads_a_report_whose_joint_tests_reject():
    """Fitted statistics like an N(0, I) sample's (0.87/sqrt(359) = 0.046) and HZ rejecting:
    the output says what that means; otherwise it says nothing."""
    assert "joint tests" in train.read_report(_report_stub(359, 0.05, 0.035, 1e-200))
    assert train.read_report(_report_stub(359, 0.05, 0.035, 0.3)) == ""    # HZ does not reject
    assert train.read_report(_report_stub(359, 0.15, 0.035, 1e-200)) == ""  # radii not fitted either
    assert train.read_report(_report_stub(359, 0.05, 0.12, 1e-200)) == ""   # distances not fitted
