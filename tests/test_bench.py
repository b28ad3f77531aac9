"""The benchmark tooling runs, at tiny sizes, on the CPU (the GPU runs it at full size).

A benchmark script that rots unnoticed costs a GPU lease to find out; these tests run
each family's full pipeline (correctness gate, timing, JSON/CSV output) in seconds, the
kernel smoke cases that compute-sanitizer runs on a GPU, the GPU check script's
argument handling, and ``gaussreg bench`` of a package installed as a user installs it.
"""
import json
import os
import re
import signal
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gaussreg.bench import cdf_attraction as bench_cdf
from gaussreg.bench import floors, kernel_smoke, kernel_sums

ROOT = Path(__file__).resolve().parent.parent

TINY = ["--repeats", "1", "--min-repeats", "1", "--warmup", "0", "--rotate", "1", "--no-memory", "--no-plot",
        "--check-n", "33", "--peak-size", "256"]


def _run_family(main, out: Path, extra):
    rows = main(["--n", "32", "48", "--out", str(out)] + TINY + extra)
    family = main.__module__.split(".")[-1]
    record = json.loads((out / f"{family}.json").read_text())
    return rows, record


@pytest.mark.parametrize("main, extra, dims", [
    (bench_cdf.main, ["--ref-max-n", "48", "--dim", "3", "5"], {3, 5}),
    (kernel_sums.main, ["--ref-max-n", "48", "--cdist-max-n", "48"], {64}),
], ids=["cdf_attraction", "kernel_sums"])
def test_family_runs_and_writes_its_schema(tmp_path, main, extra, dims):
    rows, record = _run_family(main, tmp_path, extra)
    meta = record["meta"]
    for key in ("family", "date", "device", "torch", "gaussreg", "git_commit", "threads", "sizes", "dim", "dtype",
                "matmul_rate_flops", "copy_bandwidth_bytes_per_s"):
        assert key in meta, f"metadata lacks {key}"
    assert meta["sizes"] == [32, 48] and meta["matmul_rate_flops"] > 0 and meta["copy_bandwidth_bytes_per_s"] > 0
    assert {r["d"] for r in rows} == dims
    assert record["rows"] == json.loads(json.dumps(rows, default=str))
    timed = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in timed} >= {"native", "reference"}
    for r in timed:
        assert r["fb_median_s"] > 0 and r["repeats"] >= 1, r
        assert r["fb_floor_s"] > 0 and r["fb_x_floor"] > 0 and r["fb_bound"] in ("compute", "memory"), r
        assert r["fwd_median_s"] > 0 and r["bwd_est_s"] >= 0, r
        if r["impl"] == "native":
            # The gate compared it with the reference in float64 before timing it.
            assert r["check"].startswith("f64 n=33"), r["check"]
            assert r["val_err"] is not None and r["val_err"] < 1e-4, r
    csv_lines = (tmp_path / f"{meta['family']}.csv").read_text().splitlines()
    assert csv_lines[0].startswith("# family:") and any(line.startswith("case,impl,n,") for line in csv_lines)


def test_floors_by_hand():
    # gaussian_l2_to_normal, n = 10, D = 3, float32: 4 n^2 D FLOPs; z read and its gradient written.
    assert floors.COSTS["gaussian_l2_to_normal"](10, 3, 4, True) == (1200.0, 240.0)
    assert floors.COSTS["gaussian_l2_to_normal"](10, 3, 4, False) == (600.0, 120.0)
    # mmd with a given prior sample, float64: 10 n^2 D; z and y read, z's gradient written.
    assert floors.COSTS["mmd_imq"](10, 3, 8, True) == (3000.0, 720.0)
    # gaussian_l2: 14 n^2 D; x and y read, both gradients written.
    assert floors.COSTS["gaussian_l2"](2, 5, 4, True) == (280.0, 160.0)
    # cdf_attraction, n = 4 (n' = 6), D = 2, float32. Forward: 3 n' D = 36 FLOPs; the points
    # (32 bytes) and each key written and read (2 * 6 * 4 = 48). Backward adds 4 n' D = 48
    # FLOPs, 2 bits per pair (1.5 bytes), the points read again and the gradient written (64).
    assert floors.cdf_attraction_cost(4, 2, 4, False) == (36.0, 80.0)
    assert floors.cdf_attraction_cost(4, 2, 4, True) == (84.0, 145.5)
    assert floors.sort_yardstick_cost(4, 99, 4, True) == (0.0, 96.0)
    cost = floors.Cost(1e9, 1e9)
    assert floors.floor_seconds(cost, 1e12, 1e10) == pytest.approx(0.1)
    assert floors.bound(cost, 1e12, 1e10) == "memory"
    assert floors.bound(floors.Cost(1e12, 1.0), 1e12, 1e10) == "compute"


def test_kernel_smoke_cases_run_on_cpu(capsys):
    assert kernel_smoke.main(["--device", "cpu", "--dtypes", "float64"]) == 0
    out = capsys.readouterr().out
    assert "0 failure(s)" in out and "FAIL" not in out
    assert out.count("ok   torch.float64") == len(kernel_smoke._cases())


def test_run_budget_predicts_a_row_from_the_previous_one_and_the_cost_model():
    from gaussreg.bench import _harness

    case = _harness.Case("cubic", lambda *a: (), [], cost=lambda n, d, itemsize, backward: floors.Cost(n ** 3, 0.0))
    ctx = _harness._Ctx(args=SimpleNamespace(run_budget=100.0), device=None, dtype=torch.float32, dim=4, rate=None)
    now = _harness.time.perf_counter()
    deadline = now + 10.0
    # Previous row: n = 100 in 1 s; n = 200 costs 8 times the FLOPs: 8 s fits in the 10 s left, 10 s would not.
    assert _harness._over_budget(case, 200, ctx, (100, 1.0), deadline) is None
    reason = _harness._over_budget(case, 200, ctx, (100, 1.25), deadline)
    assert reason is not None and reason.startswith("predicted 10 s > the ") and reason.endswith(
        " s left of this case's share of --run-budget 100 s"), reason
    # Without a cost model, (n / n0)^2: 4 x 2 s = 8 s fits.
    square = _harness.Case("square", lambda *a: (), [])
    assert _harness._over_budget(square, 200, ctx, (100, 2.0), deadline) is None
    assert _harness._over_budget(square, 200, ctx, (100, 2.6), deadline) is not None
    # A first row is started while any time is left; none is once the budget is spent.
    assert _harness._over_budget(case, 200, ctx, None, deadline) is None
    assert _harness._over_budget(case, 200, ctx, None, now - 1.0) == "past --run-budget 100 s"
    assert _harness._over_budget(case, 10 ** 6, ctx, (1, 1e9), None) is None
    # Shares: the next of 4 equal parts of the 10 s left ends 2.5 s from now; nothing is left past the end.
    assert _harness._share_of_budget(deadline, 4) - now == pytest.approx(2.5, abs=0.1)
    assert _harness._share_of_budget(now - 5.0, 3) <= _harness.time.perf_counter()
    assert _harness._share_of_budget(None, 3) is None


def test_a_spent_run_budget_skips_the_rest_and_still_saves(tmp_path):
    # A microsecond is spent before the first case (measuring the floor's matmul takes longer):
    # every row is there, skipped with the reason, and the results are written.
    rows = bench_cdf.main(["--n", "24", "32", "--out", str(tmp_path), "--ref-max-n", "32", "--run-budget", "1e-6"]
                          + TINY)
    record = json.loads((tmp_path / "cdf_attraction.json").read_text())
    assert record["rows"] == json.loads(json.dumps(rows, default=str))
    timed = [r for r in rows if r["n"] is not None]
    assert timed and all(r["status"] == "skipped" and r["note"] == "past --run-budget 1e-06 s" for r in timed), timed
    with pytest.raises(SystemExit):
        bench_cdf.main(["--run-budget", "0", "--no-save"])


def test_a_run_stopped_by_sigterm_saves_the_rows_measured(tmp_path):
    # A time limit (timeout) sends SIGTERM: the run stops as on Ctrl-C, saves what it measured
    # (marked) and exits 130. Many slow rows, so that it is far from done at the first one.
    sizes = ["24", "32", "48", "64", "96", "128", "192", "256", "384", "512"]
    args = [sys.executable, "-m", "gaussreg.bench.cdf_attraction", "--n", *sizes, "--cases", "cdf_p1", "--impls",
            "native", "--repeats", "40", "--min-repeats", "40", "--row-budget", "100", "--warmup", "0", "--rotate",
            "1", "--no-memory", "--no-plot", "--no-floor", "--no-size-check", "--check-n", "33", "--quiet",
            "--out", str(tmp_path)]
    import gaussreg  # the subprocess imports the gaussreg under test, wherever the installed one is

    env = dict(os.environ, PYTHONPATH=str(Path(gaussreg.__file__).resolve().parent.parent), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        for line in proc.stdout:
            if "native" in line and "n=24" in line and "fb " in line:
                proc.send_signal(signal.SIGTERM)
                break
        output = proc.stdout.read()
        assert proc.wait(timeout=120) == 130, output
    finally:
        proc.kill()
    record = json.loads((tmp_path / "cdf_attraction.json").read_text())
    assert any(w.startswith("interrupted after") for w in record["meta"]["warnings"]), record["meta"]["warnings"]
    measured = [r["n"] for r in record["rows"] if r["status"] == "ok"]
    assert 24 in measured and len(measured) < len(sizes), measured


def test_gpu_check_script_parses_and_refuses_unknown_stages(tmp_path):
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = subprocess.run(["bash", str(script), "no-such-stage"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(tmp_path)), timeout=120)
    assert result.returncode == 2
    assert "unknown stage no-such-stage" in (tmp_path / "summary.txt").read_text()
    # The time budget: a stage with less than 20 s left is not started (the build would run for minutes).
    skipped = tmp_path / "skipped"
    result = subprocess.run(["bash", str(script), "build", "test"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(skipped), GPU_CHECK_BUDGET="15"), timeout=120)
    summary = (skipped / "summary.txt").read_text()
    assert result.returncode == 3, summary
    assert re.search(r"^build: skipped, \d+ s left of the 15 s budget$", summary, re.M), summary
    assert re.search(r"^test: skipped, \d+ s left", summary, re.M), summary
    assert not (skipped / "build.log").exists()


def test_gaussreg_bench_command_runs_a_family(tmp_path, capsys):
    from gaussreg import cli

    args = ["bench", "cdf_attraction", "--n", "24", "--ref-max-n", "24", "--out", str(tmp_path)] + TINY + ["--no-floor"]
    assert cli.main(args) == 0
    record = json.loads((tmp_path / "cdf_attraction.json").read_text())
    assert {r["impl"] for r in record["rows"] if r["status"] == "ok"} == {"native", "plain_torch", "reference",
                                                                          "torch_sort"}
    # The engine's counters ride along in the native p = 1 rows, near the target and far: 276
    # pairs are few enough to be sorted all in one pass (one bucket, no selection).
    for case in ("cdf_p1", "cdf_p1_far"):
        (row,) = [r for r in record["rows"] if r["case"] == case and r["impl"] == "native"]
        assert row["details"]["pairs"] == 24 * 23 // 2
        assert row["details"]["sorted_fraction"] == 1.0 and row["details"]["passes"] == 1
    assert cli.main(["bench", "no_such_family"]) == 2
    assert "known: kernel_sums, cdf_attraction" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2


def test_distributed_bench_times_both_sides_and_counts_the_bytes(tmp_path):
    from gaussreg import cli

    args = ["bench", "distributed", "--n", "64", "--dim", "4", "--repeats", "1", "--results-dir", str(tmp_path),
            "--losses", "gaussian_l2_to_normal", "cdf_attraction"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/distributed-w2-gloo.json")
    record = json.loads(path.read_text())
    rows = {r["loss"]: r for r in record["rows"]}
    assert set(rows) == {"gaussian_l2_to_normal", "cdf_attraction"}
    for row in rows.values():
        assert len(row["one_process_s"]) == len(row["split_s"]) == 1 and row["speedup"] > 0
    # Rank 0's collectives in one gaussian_l2_to_normal step, by hand (float32, 32 x 4 points a rank):
    # check status 8 + sizes 24 + its points 512 (all-gathers); its pair share 8 forward and 8 backward,
    # and the gathered gradient 64 x 4 x 4 = 1024 (all-reduces).
    assert rows["gaussian_l2_to_normal"]["payload_bytes"] == 8 + 24 + 512 + 8 + 8 + 1024
    from gaussreg.bench import report
    assert "| gaussian_l2_to_normal |" in report.distributed_table(record, "x.json")


def test_family_help_names_the_command_users_type(capsys):
    from gaussreg import cli

    with pytest.raises(SystemExit):
        cli.main(["bench", "segmented", "--help"])
    assert capsys.readouterr().out.startswith("usage: gaussreg bench segmented")


def _row(case, impl, n, seconds, **extra):
    row = {"case": case, "impl": impl, "n": n, "d": 8, "status": "ok", "fb_median_s": seconds,
           "peak_mem_bytes": None, "fb_x_floor": None}
    row.update(extra)
    return row


def test_report_table_by_hand():
    from gaussreg.bench import report

    record = {"meta": {"family": "demo", "device": "Box", "threads": 2, "dtype": "float32", "torch": "2.x",
                       "git_commit": "abcdef0123", "date": "2026-11-21T00:00:00"},
              "rows": [_row("loss", "native", 64, 0.010, peak_mem_bytes=2**20, fb_x_floor=2.5),
                       _row("loss", "reference", 64, 0.300, peak_mem_bytes=3 * 2**30),
                       _row("loss", "native", 128, 0.040),
                       dict(_row("loss", "reference", 128, None), status="skipped"),
                       _row("sort", "torch_sort", 64, 0.020)]}
    table = report.family_table(record, "x.json").splitlines()
    assert table[2] == ("| case | n | D | compiled | reference / compiled | sort / compiled | compiled / floor | "
                        "extra memory: compiled / reference |")
    # n = 64 is the largest n where the reference ran too: 0.3 / 0.01 = 30x, the sort 2x.
    assert table[4] == "| loss | 64 | 8 | 10 ms | 30x | 2x | 2.5 | 1 MiB / 3.0 GiB |"


def test_readme_tables_are_generated_from_the_committed_results():
    from gaussreg.bench import report

    readme = (ROOT / "README.md").read_text()
    assert report.replace_block(readme, report.render(ROOT)) == readme, (
        "README.md's performance tables differ from bench/results: run python -m gaussreg.bench.report --write-readme")


_PROBE = """
import importlib.util, shutil
for name in ("pip", "setuptools", "pybind11", "cmake", "ninja"):
    if importlib.util.find_spec(name) is None and (name not in ("cmake", "ninja") or shutil.which(name) is None):
        print(name)
        break
"""


def _missing_build_tools():
    """Why this checkout cannot be built here without a network (None when it can).

    Probed in a subprocess: looking pip up in this one makes setuptools' distutils shim
    step aside for the rest of the session (pypa/pip#8761), and a later torch.compile test
    then imports the standard library's distutils and fails.
    """
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode:
        return f"the probe for build tools failed: {probe.stderr.strip()[-300:]}"
    missing = probe.stdout.strip()
    return f"{missing} is not installed (the build runs offline, without build isolation)" if missing else None


def _checkout_head():
    """HEAD of this checkout when it is a git work tree's root (what a build records), else None."""
    try:
        top = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=20)
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if top.returncode or head.returncode or Path(top.stdout.strip()).resolve() != ROOT:
        return None
    return head.stdout.strip()


def _results_in_checkout():
    """Every result file of the checkout, committed or from a local run, with its mtime."""
    return {p: p.stat().st_mtime_ns for folder in ("bench/results", "gaussreg-bench-results")
            for p in (ROOT / folder).rglob("*")}


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory):
    """This checkout installed as a user installs it: ``pip install .``, not editable.

    Into a temporary target, CPU only, without build isolation or dependencies (offline).
    pip builds in the checkout's build/ folder, so only the first run compiles everything
    (about a minute on 2 cores); later runs recompile only what changed.
    """
    missing = _missing_build_tools()
    if missing:
        pytest.skip(f"cannot build gaussreg here: {missing}")
    target = tmp_path_factory.mktemp("site") / "target"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
         "--no-input", "--disable-pip-version-check", "--target", str(target), str(ROOT)],
        env=dict(os.environ, GAUSSREG_NO_CUDA="1"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return target


def test_installed_package_benches_from_any_directory(tmp_path, installed_package):
    # The wheel holds the benchmarks; run from a directory outside the checkout, they time
    # the installed build (memory worker included), write there, and name the build's commit.
    target = installed_package
    assert (target / "gaussreg" / "bench" / "_harness.py").is_file() and list((target / "gaussreg").glob("_C*"))
    in_checkout = _results_in_checkout()
    work = tmp_path / "elsewhere"
    work.mkdir()
    args = ["bench", "kernel_sums", "--n", "256", "--cases", "gaussian_l2_to_normal", "mmd_imq",
            "--impls", "native", "blocked", "--repeats", "1", "--min-repeats", "1", "--warmup", "0", "--rotate", "1",
            "--no-plot", "--check-n", "33", "--peak-size", "256"]
    result = subprocess.run([sys.executable, str(target / "bin" / "gaussreg"), *args], cwd=work,
                            env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "No module named" not in output, output[-4000:]
    (json_path,) = work.glob("gaussreg-bench-results/*/kernel_sums.json")
    assert f"wrote {json_path}" in result.stdout
    record = json.loads(json_path.read_text())
    meta = record["meta"]
    assert Path(meta["gaussreg_path"]) == (target / "gaussreg").resolve()
    assert meta["gaussreg_backends"]["cpu"]["available"], meta["gaussreg_backends"]
    # The commit recorded when the package was built (from this checkout), not the current
    # directory's: outside any repository here. '+dirty' when the tree had local changes.
    head = _checkout_head()
    assert meta["git_commit"].split("+")[0] == (head or "unknown"), (meta["git_commit"], head)
    assert meta["source_git_commit"] is None  # an installed copy, not a checkout
    native = [r for r in record["rows"] if r["impl"] == "native"]
    assert {r["case"] for r in native} == {"gaussian_l2_to_normal", "mmd_imq"}
    for row in native:
        assert row["status"] == "ok" and row["fb_median_s"] > 0, row
        assert row["peak_mem_bytes"] is not None and "memory run" not in row["note"], row
    assert _results_in_checkout() == in_checkout
