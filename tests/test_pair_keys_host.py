"""The CUDA cdf_attraction engine's key generation (csrc/common/pair_keys.h) checked without a GPU.

tests/host/pair_keys.cpp runs the very code of the device's pair_keys_kernel on the CPU, a
block's 256 threads as std::threads meeting at a real barrier and the blocks of a launch
striding over the tiles as the kernel's do, and records every key it emits. Over n = 2 to
384 (one tile, several row blocks, n a multiple of 128), D = 1 to 40 (the staging's last
slab partly filled), duplicated points and 1 to 5 blocks: every pair i < j is emitted
exactly once at its pair index, nothing beyond the n' pairs, and each key is the same bits
as 0.5 * (a fused multiply-add chain over coordinates 0..D-1). Then the keys of the same
points from the CPU engine (its sorted distances) against the emulated device's: the same
bits, which README's "CPU and CUDA" section says they should be. What it cannot check is
the device itself: the emitters' warp votes and atomics, speed, wait for a GPU.
"""
import subprocess

import numpy as np
import pytest
import torch

from _helpers import build_host_program, run_host_program
from gaussreg.engines.cdf_attraction import sorted_half_sq_distances



@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return build_host_program(tmp_path_factory.mktemp("host"), "pair_keys")


@pytest.fixture(scope="module")
def results(program):
    return run_host_program(program)


def test_every_case_ran(results):
    assert len(results) == 14 and {r["dtype"] for r in results} == {"float32", "float64"}
    assert sum(r["pairs"] for r in results) > 400_000


@pytest.mark.parametrize("field", ["never", "more_than_once", "outside", "wrong_bits"])
def test_every_pair_once_with_its_key(results, field):
    bad = [(r["case"], r["dtype"], r[field]) for r in results if r[field] != 0]
    assert not bad, bad


def _unfused_keys(z):
    """0.5 * sum over coordinates of diff * diff, each product and sum rounded (no FMA)."""
    n = z.shape[0]
    i, j = np.triu_indices(n, 1)
    acc = np.zeros(len(i), dtype=z.dtype)
    for c in range(z.shape[1]):
        diff = z[i, c] - z[j, c]
        acc = acc + diff * diff
    return z.dtype.type(0.5) * acc


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n, d", [(200, 9), (300, 64)])
def test_cpu_engine_keys_are_the_emulated_device_keys(program, tmp_path, dtype, n, d):
    rng = np.random.default_rng(n + d)
    z = rng.standard_normal((n, d)).astype(dtype)
    z[5] = z[4]  # a zero key
    source, sink = tmp_path / "z.bin", tmp_path / "keys.bin"
    z.tofile(source)
    subprocess.run([str(program), str(source), str(sink), str(n), str(d), str(z.itemsize)], check=True, timeout=300)
    device = np.sort(np.fromfile(sink, dtype=dtype))
    cpu = sorted_half_sq_distances(torch.from_numpy(z)).numpy()
    assert device.shape == cpu.shape == (n * (n - 1) // 2,)
    if np.array_equal(device.view(np.uint8), cpu.view(np.uint8)):
        return
    # A CPU build that does not contract a * b + c into an FMA (README: GAUSSREG_NATIVE=0 on
    # a target without FMA) may differ; anything else is a bug.
    unfused = np.sort(_unfused_keys(z))
    if np.array_equal(unfused.view(np.uint8), cpu.view(np.uint8)):
        pytest.skip("this CPU build sums squared differences without FMA; README says the keys need not agree")
    different = int(np.count_nonzero(device != cpu))
    raise AssertionError(f"{different} of {len(cpu)} sorted keys differ between the CPU engine and the device code")
