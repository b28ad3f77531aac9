"""The CUDA cdf_attraction backward (csrc/common/cdf_backward.h) checked without a GPU.

tests/host/cdf_backward.cpp runs the very code of the device's signed_differences_kernel on
the CPU, a block's 256 threads as std::threads meeting at a real barrier, and compares the
gradient with a brute-force float64 sum over random bit sets (p = 1, with zero signs) and
residuals (p = 2): n = 2 to 130 (partial tiles, tiles below the diagonal whose weights are
staged by column), D = 1 to 200 (1, 2 or 4 coordinates a lane as the engine chooses, several
chunks of coordinates). Weights of the wrong pair below the diagonal, or a missing barrier,
give errors of order 1 (both were tried). The device itself (vector loads, banks, speed)
waits for a GPU.
"""
import pytest

from _helpers import build_host_program, run_host_program

TOLERANCE = {"float32": 1e-5, "float64": 1e-13}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_host_program(build_host_program(tmp_path_factory.mktemp("host"), "cdf_backward"))


def test_every_case_ran(results):
    assert len(results) == 24
    assert {(r["dtype"], r["p"]) for r in results} == {(t, p) for t in ("float32", "float64") for p in (1, 2)}


def test_gradient_matches_brute_force(results):
    bad = [(r["case"], r["dtype"], r["p"], r["grad_rel"]) for r in results if not r["grad_rel"] <= TOLERANCE[r["dtype"]]]
    assert not bad, bad
