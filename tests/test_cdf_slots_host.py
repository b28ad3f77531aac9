"""The selection's shared slot code (csrc/common/cdf_select.h) checked without a GPU.

tests/host/cdf_slots.cpp compiles the header for the CPU and checks, over 40 random cases
per dtype, what the CUDA engine's second level rests on: OrderedSlots (refined bins cut
into leaves, numbered in key order, so one sort of a pass finds each slot's keys in one
run: slots never decrease with the key, every key lies in its slot's range, a slot's bin
is found back, leaves of a bin adjoin) and choose_refinement (the refined bins are the K
of most keys, ties to the lower bin, within the leaf budget, with leaf bits that
choose_leaf_bits gives back from K, as the split steps rebuild them). Breaking slot_of's
leaf offset or the tie rule makes these checks fail (both were tried). The CUDA kernels
that use them still wait for a GPU.
"""
import pytest

from _helpers import build_host_program, run_host_program



@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_host_program(build_host_program(tmp_path_factory.mktemp("host"), "cdf_slots"))


def test_every_case_ran_and_exercised_the_leaves(results):
    assert len(results) == 80 and {r["dtype"] for r in results} == {"float32", "float64"}
    assert all(r["refined_bins"] > 0 for r in results)
    assert sum(r["chosen_bins"] > 0 for r in results) >= 40  # most random cases refine something


@pytest.mark.parametrize("check", ["plain", "refined", "choice"])
def test_no_violations(results, check):
    bad = [(r["dtype"], r["seed"], r[check]) for r in results if r[check] != 0]
    assert not bad, bad
