"""Segmented-sort losses (formulas §2, 6, 7) and sliced Epps-Pulley (formulas §7b): time and memory vs n.

Cases (D = ``--dim``; z ~ N(0, I)):

====================  ===================================================================
coord_normal          ``coordinate_cdf_attraction(z)``: normal marginal, p = 2
coord_torus_bits4     ``coordinate_cdf_attraction(z, marginal="torus", bits=4)``
swae                  ``sliced_wasserstein(z)`` with 128 seeded directions, N(0, 1) targets
epps_pulley           ``epps_pulley(z)`` with 256 (``--slices``) seeded slices, 17 knots
gmm_ks                ``gmm_ks_loss(z, prior)``, prior ``GaussianMixture.separated(min(8, D), D)``
sort_dim0_yardstick   ``torch.sort(z, dim=0)``: values and indices of every column, no
                      gradient -- what the coordinate losses are measured against
projection_yardstick  the (S, D) x (D, n) product that makes Epps-Pulley's projections,
                      plus one read of them (no gradient)
====================  ===================================================================

Implementations: ``native`` (the compiled engines, ``backend="native"``) and ``reference``
(``gaussreg.reference``: argsort twice, (K, n, S) tensors, (n, K, D) mixtures; not run
above ``--ref-max-n``).

Example:
    python -m gaussreg.bench.segmented --n 4096 16384 65536 --dim 64
    python -m gaussreg.bench.segmented --device cuda --n 65536 --dim 128 512
"""
from __future__ import annotations

import argparse
from typing import List

import torch

import gaussreg
from gaussreg.testing import random_points

from . import _harness, floors
from ._harness import Case, Impl


def _points(n, d, dtype, device, seed):
    return (random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True),)


def _plain(n, d, dtype, device, seed):
    return (random_points(n, d, seed=seed, dtype=dtype, device=device),)


def _directions(z, count):
    """Seeded directions drawn in float64 on the CPU: the same for every dtype and device,
    so the float64 accuracy check compares the same statistic."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, z.shape[1], generator=g, dtype=torch.float64).to(z)


def _sort_columns(z):
    values, indices = torch.sort(z, dim=0)
    return values[-1, 0] + indices[-1, 0].to(values.dtype) * 0  # both outputs consumed


def _projections_read_once(z):
    return (_directions(z, floors.EPPS_PULLEY_SLICES) @ z.t()).sum()


def _mixture(z):
    d = z.shape[1]
    return gaussreg.GaussianMixture.separated(min(8, d), d, distance=4.0, dtype=z.dtype, device=z.device)


def _loss_cases():
    """name -> (description, loss(z, backend))."""
    return {
        "coord_normal": ("coordinate_cdf_attraction(z), normal marginal, p = 2",
                         lambda z, b: gaussreg.coordinate_cdf_attraction(z, backend=b)),
        "coord_torus_bits4": ("coordinate_cdf_attraction(z, marginal='torus', bits=4)",
                              lambda z, b: gaussreg.coordinate_cdf_attraction(z, marginal="torus", bits=4, backend=b)),
        "swae": (f"sliced_wasserstein(z), {floors.SWAE_PROJECTIONS} directions",
                 lambda z, b: gaussreg.sliced_wasserstein(
                     z, directions=_directions(z, floors.SWAE_PROJECTIONS), backend=b)),
        "epps_pulley": (f"epps_pulley(z), S slices (--slices), {floors.EPPS_PULLEY_KNOTS} knots",
                        lambda z, b: gaussreg.epps_pulley(z, num_points=floors.EPPS_PULLEY_KNOTS,
                                                          directions=_directions(z, floors.EPPS_PULLEY_SLICES),
                                                          backend=b)),
        "gmm_ks": ("gmm_ks_loss(z, GaussianMixture.separated(min(8, D), D))",
                   lambda z, b: gaussreg.gmm_ks_loss(z, _mixture(z), backend=b)),
    }


def build_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    floors.EPPS_PULLEY_SLICES = args.slices  # the floors and the yardstick count the same slices
    ref_max_n = args.ref_max_n if args.ref_max_n is not None else 65536
    ref_note = f"n > --ref-max-n {ref_max_n}"
    cases = []
    for name, (description, loss) in _loss_cases().items():
        impls = [Impl("native", lambda z, loss=loss: loss(z, "native")),
                 Impl("reference", lambda z, loss=loss: loss(z, "reference"), max_n=ref_max_n,
                      max_n_note=ref_note)]
        cases.append(Case(name=name, make_inputs=_points, impls=impls, oracle="reference",
                          cost=floors.COSTS[name], size_oracles=("reference",), gate_rtol=1e-9,
                          description=description))
    cases.append(Case(name="sort_dim0_yardstick", make_inputs=_plain, impls=[Impl("torch_sort", _sort_columns)],
                      oracle="torch_sort", cost=floors.COSTS["sort_dim0_yardstick"], size_oracles=(),
                      description="torch.sort(z, dim=0): values and indices (no gradient)"))
    cases.append(Case(name="projection_yardstick", make_inputs=_plain,
                      impls=[Impl("matmul", _projections_read_once)], oracle="matmul",
                      cost=floors.COSTS["projection_yardstick"], size_oracles=(),
                      description=f"({floors.EPPS_PULLEY_SLICES}, D) @ (D, n) and one read of the product"))
    return cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=floors.EPPS_PULLEY_SLICES,
                        help="Epps-Pulley slices S (default %(default)s; the projection yardstick uses the same)")
    parser.add_argument("--ref-max-n", type=int, default=None,
                        help="largest n at which the reference runs (default 65536; its Epps-Pulley holds a "
                             "(17, n, 256) tensor: 1.1 GiB in float32 at n = 65536)")


def main(argv=None):
    return _harness.main(
        "segmented", "gaussreg.bench.segmented", build_cases, description=__doc__.split("\n\n")[0],
        default_n={"cpu": [1024, 4096, 16384, 65536], "cuda": [4096, 16384, 65536, 262144]},
        add_arguments=add_arguments, argv=argv,
        notes=["native = compiled engines (one radix sort per segment, residual and slope in the same pass; "
               "Epps-Pulley: one sincos per projection); reference = gaussreg.reference; yardsticks: "
               "torch.sort(z, dim=0), and the projections' matmul plus one read"])


if __name__ == "__main__":
    main()
