"""The CUDA cdf_attraction rank pass (csrc/common/cdf_rank.h) checked without a GPU.

tests/host/cdf_rank.cpp runs the very code of the device's rank_kernel on the CPU, a
block's 256 threads as std::threads (their block sum at a real barrier), over sorted keys
with ties and random pair indices against table targets (some equal to their key: e = 0,
no sign bit): every sign bit (p = 1), residual (p = 2) and sorted value is the one a direct
loop over the ranks gives, the value matches, and cutting the ranks into passes (at chunk
edges, inside chunks, three times inside one chunk) gives the same bits as one pass, with
no read outside a pass's own entries. Forcing every chunk closed, or ranking again the
terms an earlier pass carried, fails it (both were tried). The atomics and the speed on
the device wait for a GPU.
"""
import pytest

from _helpers import build_host_program, run_host_program



@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_host_program(build_host_program(tmp_path_factory.mktemp("host"), "cdf_rank"))


def test_every_case_ran(results):
    assert len(results) == 16
    assert {(r["dtype"], r["p"]) for r in results} == {(t, p) for t in ("float32", "float64") for p in (1, 2)}
    assert all(r["zero_signs"] > 0 for r in results if r["p"] == 1)  # ties with the target were exercised


def test_ranks_match_a_direct_loop(results):
    bad = [(r["case"], r["dtype"], r["p"], r["wrong"], r["outside"]) for r in results if r["wrong"] or r["outside"]]
    assert not bad, bad


def test_passes_give_the_bits_of_one_pass(results):
    assert all(r["passes_same_bits"] for r in results), [r["case"] for r in results if not r["passes_same_bits"]]


def test_value_matches(results):
    bad = [(r["case"], r["dtype"], r["value_rel"]) for r in results if not r["value_rel"] <= 1e-13]
    assert not bad, bad
