"""Physical floors of each benchmarked computation: the fewest FLOPs and bytes it needs.

For a call on n points in D dimensions (item size ``s`` bytes), ``flops`` and ``bytes``
count the arithmetic and device-memory traffic no implementation can avoid; with the
device's ceilings measured in the same run (a large matmul for the rate, a large
device-to-device copy for the bandwidth) the floor time is

    floor = max(flops / matmul rate, bytes / copy bandwidth)

and the bench reports measured / floor. The larger of the two terms says whether the
computation is bound by arithmetic or by memory. Conventions:

* pair sums (formulas §3, 4, 5) count the matmul formulation: a self sum over n points costs
  2 n^2 D forward (the Gram matrix z z^T) and 2 n^2 D more for its gradient (W z); a
  cross sum over n x m points 2 n m D, plus 2 n m D per side with a gradient. Kernel
  evaluations (exp, division) are not counted. Their bytes: each point tensor read once,
  each gradient written once.
* CDF attraction (formulas §1) counts the pair distances from coordinate differences, 3 n' D
  (subtract, multiply, add) forward and 4 n' D backward (each pair adds +-(z_i - z_j) to
  two rows), with n' = n(n-1)/2. Its bytes: the points read once, and each of the n'
  sort keys written and read once (a sort moves at least that); backward reads the
  points and 2 bits per pair and writes the gradient. Sort passes beyond one are not
  counted: the floor of an exact method is above this one, never below.
* The sort yardstick (``torch.sort`` of n' float32 keys with int64 indices) reads the keys
  and writes keys and indices: 16 n' bytes, no FLOPs counted.

A count is a yardstick, not a census: an implementation that skips work the count
includes (e.g. visits each unordered pair once) can land below 1x floor.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple


class Cost(NamedTuple):
    flops: float
    bytes: float


def pairs(n: int) -> float:
    return n * (n - 1) / 2.0


# Pair sums: (forward, forward+backward) multiples of n^2 D FLOPs, and the number of
# (n, D) point tensors read and gradients written.
_PAIR_SUMS = {
    #                      fwd, fb, read, written
    "gaussian_l2_to_normal": (2, 4, 1, 1),
    "gaussian_l2": (6, 14, 2, 2),  # x-x, y-y, x-y; gradients for x and y
    "mmd_imq": (6, 10, 2, 1),  # z-z, y-y, z-y; gradient for z only
    "mmd_rbf": (6, 10, 2, 1),
    "cw_approx": (2, 4, 1, 1),
}


def pair_sum_cost(case: str) -> Callable[[int, int, int, bool], Cost]:
    fwd, fb, read, written = _PAIR_SUMS[case]

    def cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
        flops = float(fb if backward else fwd) * n * n * d
        moved = (read + (written if backward else 0)) * float(n) * d * itemsize
        return Cost(flops, moved)

    return cost


def cdf_attraction_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    m = pairs(n)
    key = itemsize  # keys are distances in the points' dtype
    flops = 3.0 * m * d + (4.0 * m * d if backward else 0.0)
    moved = float(n) * d * itemsize + 2.0 * m * key
    if backward:
        moved += m / 4.0 + 2.0 * n * d * itemsize  # 2 bits per pair; points read, gradient written
    return Cost(flops, moved)


def sort_yardstick_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    return Cost(0.0, 16.0 * pairs(n))


# Segmented losses (formulas §2, 6, 7, 7b). Sorting n values per segment needs at least one read
# of the values and one write of the gradient; projections add their matrix products.
SWAE_PROJECTIONS = 128
EPPS_PULLEY_SLICES = 256
EPPS_PULLEY_KNOTS = 17


def coordinate_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    return Cost(0.0, float(n) * d * itemsize * (2 if backward else 1))


def sliced_wasserstein_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    projections = float(n) * SWAE_PROJECTIONS
    flops = 2.0 * n * d * SWAE_PROJECTIONS * (2 if backward else 1)
    moved = (float(n) * d + projections) * itemsize * (2 if backward else 1)
    return Cost(flops, moved)


def epps_pulley_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    projections = float(n) * EPPS_PULLEY_SLICES
    flops = 2.0 * n * d * EPPS_PULLEY_SLICES * (2 if backward else 1)
    flops += projections * EPPS_PULLEY_KNOTS * (6.0 if backward else 4.0)  # rotations, sums
    moved = (float(n) * d + projections) * itemsize * (2 if backward else 1)
    return Cost(flops, moved)


def gmm_ks_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    return Cost(0.0, float(n) * d * itemsize * (2 if backward else 1))


def sort_columns_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    return Cost(0.0, float(n) * d * (2 * itemsize + 8))  # values read; values and int64 indices written


def projection_cost(n: int, d: int, itemsize: int, backward: bool) -> Cost:
    return Cost(2.0 * n * d * EPPS_PULLEY_SLICES, (float(n) * d + 2.0 * n * EPPS_PULLEY_SLICES) * itemsize)


COSTS: Dict[str, Callable[[int, int, int, bool], Cost]] = {
    **{case: pair_sum_cost(case) for case in _PAIR_SUMS},
    "cdf_p1": cdf_attraction_cost,
    "cdf_p2": cdf_attraction_cost,
    "sort_yardstick": sort_yardstick_cost,
    "coord_normal": coordinate_cost,
    "coord_torus_bits4": coordinate_cost,
    "swae": sliced_wasserstein_cost,
    "epps_pulley": epps_pulley_cost,
    "gmm_ks": gmm_ks_cost,
    "sort_dim0_yardstick": sort_columns_cost,
    "projection_yardstick": projection_cost,
}


def floor_seconds(cost: Cost, flop_rate: float, bandwidth: float) -> float:
    """max(FLOPs / rate, bytes / bandwidth): the time below which no implementation runs."""
    return max(cost.flops / flop_rate if flop_rate else 0.0, cost.bytes / bandwidth if bandwidth else 0.0)


def bound(cost: Cost, flop_rate: float, bandwidth: float) -> str:
    """Which ceiling sets the floor: "compute" or "memory"."""
    compute = cost.flops / flop_rate if flop_rate else 0.0
    memory = cost.bytes / bandwidth if bandwidth else 0.0
    return "compute" if compute >= memory else "memory"
