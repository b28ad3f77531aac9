"""Scale and indexing (issue 8, item 4): the int32 cliffs without huge memory.

n(n-1) passes 2^31 at n = 46342 and n(n-1)/2 at n = 65537. The pair-index math is tested
at n up to 2^20 on sampled indices in test_cdf_attraction.py (test_pair_index_mapping,
which now includes both cliffs); here: the Python-side sizes at the cliffs, a kernel sum
over n(n-1)/2 > 2^30 pairs (n(n-1) > 2^31) whose value and gradient are known in closed
form, and the multi-pass sort with tiny buckets against a brute force that does not depend
on ranks. (One run at n' > 2^31, n = 65537, was done by hand through the multi-pass mode:
README, Guarantees.)
"""
import math

import pytest
import torch
from _helpers import assert_close

import gaussreg
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.targets import Empirical

CLIFFS = (46341, 46342, 65536, 65537, 65538, 92681, 92682, 92683, 2**20)


@pytest.mark.parametrize("n", CLIFFS)
def test_sizes_at_the_cliffs(n):
    pairs = n * (n - 1) // 2
    assert cdf_engine.pair_count(n) == pairs
    words = -(-pairs // 64)
    assert cdf_engine._signs_shape(n, 1) == (2, words) and cdf_engine._signs_shape(n, 2) == (pairs,)
    assert cdf_engine.signs_bytes(n, 1, torch.float32) == 16 * words
    assert cdf_engine.signs_bytes(n, 2, torch.float64) == 8 * pairs
    # The engine's sort entries pack the pair index with the key while it fits: 8 bytes for
    # float32 below 2^32 pairs, 16 above; its workspace for n' entries grows accordingly.
    entry = cdf_engine.entry_bytes(torch.device("cpu"), torch.float32, n)
    assert entry == (8 if pairs < 2**32 else 16)
    work = cdf_engine.workspace_bytes(torch.device("cpu"), torch.float32, n, 3, pairs)
    assert work >= pairs * entry


def test_kernel_sum_past_n_times_n_minus_1_above_2_31():
    """mmd with n = 46342 equal points (n(n-1) = 2147580622 > 2^31 ordered pairs) and two
    equal prior points at distance delta: every pair's kernel is known, so the value and
    the gradient are closed forms; a pair count or index wrapped at 2^31 would show."""
    n, delta = 46342, 0.75
    z = torch.zeros(1, 1, dtype=torch.float64).expand(n, 1).requires_grad_(False)
    leaf = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    y = torch.full((2, 1), delta, dtype=torch.float64)
    value = gaussreg.mmd(leaf.expand(n, 1), y, kernel="imq", scales=(1.0,))
    (grad,) = torch.autograd.grad(value, leaf)
    c = 2.0  # C = 2 D s
    k_delta = c / (c + delta**2)
    assert_close(value, torch.tensor(2.0 - 2.0 * k_delta, dtype=torch.float64), 1e-12, 0, what="value")
    # d/dz of -2/(nm) sum_ij k(|z_i - y_j|^2), summed over the n equal points (the expand):
    # -2 k'(delta^2) 2 (0 - delta) with k'(t) = -c / (c + t)^2.
    expected = -2.0 * (-c / (c + delta**2) ** 2) * 2.0 * (0.0 - delta)
    assert_close(grad, torch.tensor([[expected]], dtype=torch.float64), 1e-9, 0, what="gradient")
    assert z.shape[0] * (z.shape[0] - 1) > 2**31


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_multi_pass_tiny_buckets_against_a_rank_free_brute_force(dtype, one_thread):
    """A constant target c (Empirical([c])) makes the loss mean |d_ij - c| and the gradient
    (1/n') sum_j sgn(d_ij - c)(z_i - z_j): independent of ranks, so a brute force checks
    that every pair is generated once and its sign stored at its own index, over ~90 passes."""
    n, c = 1200, 2.0 * math.log(2.0)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    leaf = z.clone().requires_grad_(True)
    budget = cdf_engine.entry_bytes(z.device, z.dtype, z.shape[0]) * 8000  # n' = 719400: about 90 passes
    loss = gaussreg.cdf_attraction(leaf, radii_weight=0.0, max_sort_bytes=budget,
                                   distances_target=Empirical(torch.tensor([c], dtype=torch.float64)))
    loss.backward()
    z64 = z.double()
    i, j = torch.triu_indices(n, n, offset=1)
    d = 0.5 * (z64[i] - z64[j]).pow(2).sum(1)
    pairs = d.shape[0]
    sign = torch.zeros(n, n, dtype=torch.float64)
    sign[i, j] = torch.sign(d - c)
    sign[j, i] = sign[i, j]
    grad = (sign.sum(1)[:, None] * z64 - sign @ z64) / pairs
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(loss.double(), (d - c).abs().mean(), rtol, 0, what="value")
    # float32: a distance within rounding of c may take the other sign (2 |z_i - z_j| / n' each)
    atol = 0.0 if dtype == torch.float64 else 20 * 2 * 6.0 / pairs
    assert_close(leaf.grad.double(), grad, rtol, atol, what="gradient")
