"""The benchmark tooling runs, at tiny sizes, on the CPU (the GPU runs it at full size).

A benchmark script that rots unnoticed costs a GPU lease to find out; these tests run
each family's full pipeline (correctness gate, timing, JSON/CSV output) in seconds, the
kernel smoke cases that compute-sanitizer runs on a GPU, and the GPU check script's
argument handling.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cdf_attraction as bench_cdf  # noqa: E402
from bench import kernel_smoke, kernel_sums  # noqa: E402

TINY = ["--repeats", "1", "--min-repeats", "1", "--warmup", "0", "--rotate", "1", "--no-memory", "--no-plot",
        "--check-n", "33", "--peak-size", "256"]


def _run_family(main, out: Path, extra):
    rows = main(["--n", "32", "48", "--out", str(out)] + TINY + extra)
    family = main.__module__.split(".")[-1]
    record = json.loads((out / f"{family}.json").read_text())
    return rows, record


@pytest.mark.parametrize("main, extra", [
    (bench_cdf.main, ["--ref-max-n", "48"]),
    (kernel_sums.main, ["--ref-max-n", "48", "--cdist-max-n", "48"]),
], ids=["cdf_attraction", "kernel_sums"])
def test_family_runs_and_writes_its_schema(tmp_path, main, extra):
    rows, record = _run_family(main, tmp_path, extra)
    meta = record["meta"]
    for key in ("family", "date", "device", "torch", "gaussreg", "git_commit", "threads", "sizes", "dim", "dtype",
                "matmul_rate_flops"):
        assert key in meta, f"metadata lacks {key}"
    assert meta["sizes"] == [32, 48] and meta["matmul_rate_flops"] > 0
    assert record["rows"] == json.loads(json.dumps(rows, default=str))
    timed = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in timed} >= {"native", "reference"}
    for r in timed:
        assert r["fb_median_s"] > 0 and r["repeats"] >= 1, r
        if r["impl"] == "native":
            # The gate compared it with the reference in float64 before timing it.
            assert r["check"].startswith("f64 n=33"), r["check"]
            assert r["val_err"] is not None and r["val_err"] < 1e-4, r
    csv_lines = (tmp_path / f"{meta['family']}.csv").read_text().splitlines()
    assert csv_lines[0].startswith("# family:") and any(line.startswith("case,impl,n,") for line in csv_lines)


def test_kernel_smoke_cases_run_on_cpu(capsys):
    assert kernel_smoke.main(["--device", "cpu", "--dtypes", "float64"]) == 0
    out = capsys.readouterr().out
    assert "0 failure(s)" in out and "FAIL" not in out
    assert out.count("ok   torch.float64") == len(kernel_smoke._cases())


def test_gpu_check_script_parses_and_refuses_unknown_stages(tmp_path):
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = subprocess.run(["bash", str(script), "no-such-stage"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(tmp_path)), timeout=120)
    assert result.returncode == 2
    assert "unknown stage no-such-stage" in (tmp_path / "summary.txt").read_text()
