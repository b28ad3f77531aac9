"""The CUDA pair sums' two sweeps (csrc/common/pair_tiles.h) checked without a GPU.

tests/host/pair_tiles.cpp runs the very code of the device sweeps on the CPU, a block's
threads as std::threads meeting at a real barrier, and compares value and gradient with a
brute-force float64 sum: self and cross sums, a partner count below one tile and beyond
one, D = 1 to 130 (chunks padded past D) on the chunked sweep and D = 16, 32, 64 on the
register sweep, a column-major x, per-point parameters, 32 or 128 threads a block, and
sweeps split into partner ranges with their gradient slabs added as the device adds them.
A missing barrier, a wrong pad, a lost diagonal or a range's diagonal left unshifted shows
as an error of order 1e-3 or more (each was tried). What it cannot check is the device itself: launch bounds,
shared-memory banks and speed wait for a GPU.
"""
import pytest

from _helpers import build_host_program, run_host_program

TOLERANCE = {"float32": 1e-5, "float64": 1e-13}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_host_program(build_host_program(tmp_path_factory.mktemp("host"), "pair_tiles"))


def test_every_case_ran(results):
    assert len(results) == 34 and {r["dtype"] for r in results} == {"float32", "float64"}


@pytest.mark.parametrize("key", ["value_rel", "value_only_rel", "grad_rel"])
def test_sweep_matches_brute_force(results, key):
    bad = [(r["case"], r["dtype"], r[key]) for r in results if not r[key] <= TOLERANCE[r["dtype"]]]
    assert not bad, bad


def test_gradient_alone_is_the_same_bits(results):
    assert all(r["grad_only_diff"] == 0 for r in results), results
