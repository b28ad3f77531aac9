"""The CUDA cdf_attraction emitters' warp-aggregated writes checked without a GPU.

tests/host/warp_collect.cpp runs csrc/common/warp_collect.h's append_kept and
set_bit_aggregated (the code the collect and selection passes run) with each warp's 32
lanes as std::threads: ballot, match_any, reduce_or and broadcast exchange values at a real
barrier, and several warps share one cursor and one bit array through real atomics. Every
kept entry is written once, a warp's in lane order and consecutive, none past the
capacity nor below the cursor left unwritten, and the cursor counts all of them; exactly
the wanted bits are set, with one atomic per 64-bit word a warp touches; every reduce_or is
called by all the lanes of its group with that group. Counting the own lane in a lane's
offset, grouping lanes without a bit with those that have one, or letting lane 0 instead of
the first keeping lane take the cursor fails it (all tried). Warp scheduling, divergence
and the atomics' speed on the device wait for a GPU.
"""
import pytest

from _helpers import build_host_program, run_host_program


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return {r["case"]: r for r in run_host_program(build_host_program(tmp_path_factory.mktemp("host"), "warp_collect"))}


def test_every_case_ran(results):
    assert set(results) == {"append_half", "append_sparse", "append_all", "append_none", "append_past_capacity",
                            "bits_rows", "bits_rows_all", "bits_scattered", "bits_none"}
    assert results["append_half"]["expected"] > 1000 and results["bits_scattered"]["bits_set"] > 1000


@pytest.mark.parametrize("case", ["append_half", "append_sparse", "append_all", "append_none",
                                  "append_past_capacity"])
def test_append_kept_writes_each_entry_once_in_lane_order(results, case):
    r = results[case]
    assert r["cursor"] == r["expected"], r
    assert r["written"] == min(r["expected"], r["capacity"]), r
    assert r["wrong"] == r["holes"] == r["out_of_order"] == r["guard_touched"] == r["bad_groups"] == 0, r
    assert r["atomics"] == r["calls_with_any"], r  # one per warp call that keeps anything


@pytest.mark.parametrize("case", ["bits_rows", "bits_rows_all", "bits_scattered", "bits_none"])
def test_set_bit_aggregated_sets_exactly_the_wanted_bits(results, case):
    r = results[case]
    assert r["wrong_words"] == 0 and r["bad_groups"] == 0, r
    assert r["atomics"] == r["expected_atomics"], r  # one per word each warp call touches
