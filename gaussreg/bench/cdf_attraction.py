"""CDF attraction (formulas §1): time and memory vs n, compiled backend vs reference, next to a plain sort.

Cases (D = ``--dim``; z ~ N(0, I), so the distances sit on their chi2_D target):

=================  ======================================================================
cdf_p1             ``gaussreg.cdf_attraction(z)``: p = 1, default Chi2(D) targets
cdf_p1_far         the same with z ~ N(0, 1.5^2 I): far from the target, so the selection
                   decides almost every pair without sorting it
cdf_p2             ``gaussreg.cdf_attraction(z, p=2)``
sort_yardstick     ``torch.sort`` of n' = n(n-1)/2 random float keys with their int64
                   indices (CUB's key-value radix sort on a GPU): the sort every exact
                   method needs, without generating the keys, the ranks' targets or the
                   backward pass. It has no gradient; its forward+backward column is the
                   sort alone.
=================  ======================================================================

Implementations:

* ``native``: the compiled engine (``backend="native"``). p = 1 ranks by selection: a
  histogram of every distance decides the sign of each bin that lies wholly above or
  below its ranks' targets, and only the pairs of mixed bins are sorted (the row's
  ``details`` give the fraction sorted, the passes and the bins). p = 2 sorts every pair
  in histogram buckets. Signs as bits (p = 1), one fused backward pass.
* ``plain_torch``: what a user writes in plain PyTorch: ``torch.pdist``, ``torch.sort`` of
  the radii and of the n' half squared distances, chi-squared quantiles computed once
  outside the timing, ``|.|.mean()`` (or squares), autograd backward.
* ``reference``: ``gaussreg.reference`` (``backend="reference"``): all n' pair differences
  (n' x D), ``torch.argsort`` and autograd; not run above ``--ref-max-n``.

The floor (``gaussreg/bench/floors.py``) counts the pair distances' arithmetic and each sort key
written and read once; no exact method can beat it, and a real sort needs several passes
over its keys, so compare native with the yardstick at the same n as well.

Example:
    python -m gaussreg.bench.cdf_attraction --n 1024 4096 --ref-max-n 4096
    python -m gaussreg.bench.cdf_attraction --n 16384 --impls native --no-forward
    python -m gaussreg.bench.cdf_attraction --device cuda --n 4096 16384 65536 131072 --ref-max-n 16384
"""
from __future__ import annotations

import argparse
from typing import List

import torch

import gaussreg
from gaussreg.losses.cdf_attraction import cdf_pairs_with_stats
from gaussreg.targets import Chi2, chi2_quantiles
from gaussreg.testing import random_points

from . import _harness, floors
from ._harness import Case, Impl


def _points(n, d, dtype, device, seed):
    return (random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True),)


def _keys(n, d, dtype, device, seed):
    """n' = n(n-1)/2 float32 keys (the engine's key type for float32 points), no gradient."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.rand(n * (n - 1) // 2, generator=g, dtype=torch.float32, device=device),)


def _sort_pairs(keys):
    values, indices = torch.sort(keys)
    return values[-1] + indices[-1].to(values.dtype) * 0  # both outputs consumed


def _far_points(n, d, dtype, device, seed):
    return (random_points(n, d, seed=seed, dtype=dtype, device=device).mul_(1.5).requires_grad_(True),)


def _reference_bytes(n, d, itemsize):
    # pair differences and their squares (n' x D), kept for autograd, plus indices.
    pairs = n * (n - 1) / 2
    return pairs * (3 * d * itemsize + 40)


def _plain_bytes(n, d, itemsize):
    # pdist's n' distances, their squares, the sorted copy, int64 indices and the targets.
    return n * (n - 1) / 2 * (5 * itemsize + 8)


_QUANTILES = {}


def _plain_torch(p):
    """cdf_attraction as a user writes it in plain PyTorch; the targets are computed once
    per size (a user precomputes them) and cached outside the timed calls."""

    def targets(m, d, z):
        key = (m, d, z.dtype, z.device)
        if key not in _QUANTILES:
            _QUANTILES[key] = chi2_quantiles(m, d, device=z.device, dtype=z.dtype)
        return _QUANTILES[key]

    def loss(z):
        n, d = z.shape
        radii = torch.sort((z * z).sum(1)).values - targets(n, d, z)
        dist = torch.sort(torch.pdist(z).pow(2) * 0.5).values - targets(n * (n - 1) // 2, d, z)
        return (radii.abs().mean() + dist.abs().mean()) if p == 1 else (radii.pow(2).mean() + dist.pow(2).mean())

    return loss


def _selection_details(z):
    """What the native engine reports about one p = 1 call: the pairs it sorted."""
    with torch.no_grad():
        z = z.detach().contiguous()
        n, d = z.shape
        pairs = n * (n - 1) // 2
        _, stats = cdf_pairs_with_stats(z, Chi2(d), p=1)
    stats["pairs"] = pairs
    stats["sorted_fraction"] = stats["sorted_pairs"] / pairs if stats["sorted_pairs"] >= 0 else None
    return stats


def build_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    ref_max_n = args.ref_max_n if args.ref_max_n is not None else (16384 if device.type == "cuda" else 2048)
    ref_note = f"n > --ref-max-n {ref_max_n} (O(n^2 D) memory and time)"
    cases = []
    for p, far in ((1, False), (1, True), (2, False)):
        impls = [
            Impl("native", lambda z, p=p: gaussreg.cdf_attraction(z, p=p, backend="native"),
                 details=_selection_details if p == 1 else None),
            Impl("plain_torch", _plain_torch(p), bytes_needed=_plain_bytes),
            Impl("reference", lambda z, p=p: gaussreg.cdf_attraction(z, p=p, backend="reference"),
                 max_n=ref_max_n, max_n_note=ref_note, bytes_needed=_reference_bytes),
        ]
        cases.append(Case(
            name=f"cdf_p{p}" + ("_far" if far else ""), make_inputs=_far_points if far else _points, impls=impls,
            oracle="reference", cost=floors.cdf_attraction_cost, size_oracles=("reference", "plain_torch"),
            gate_rtol=1e-7,
            description=f"cdf_attraction(z, p={p}), Chi2(D) targets" + (", z ~ N(0, 1.5^2 I)" if far else "")))
    cases.append(Case(
        name="sort_yardstick", make_inputs=_keys, impls=[Impl("torch_sort", _sort_pairs)], oracle="torch_sort",
        cost=floors.sort_yardstick_cost,
        size_oracles=(), description="torch.sort of n' float32 keys with int64 indices (no gradient)"))
    return cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref-max-n", type=int, default=None,
                        help="largest n at which the reference runs (default 2048 on CPU: ~3 GB and ~10 s per "
                             "call at 2048 x 64, ~10 GB at 4096; 16384 on CUDA)")


def main(argv=None):
    return _harness.main(
        "cdf_attraction", "gaussreg.bench.cdf_attraction", build_cases, description=__doc__.split("\n\n")[0],
        default_n={"cpu": [256, 512, 1024, 2048, 4096], "cuda": [1024, 4096, 16384, 65536]},
        add_arguments=add_arguments, argv=argv,
        notes=["native = compiled engine (exact ranks: selection for p = 1, bucketed sort for p = 2); "
               "plain_torch = pdist + torch.sort + precomputed chi2 quantiles + autograd; reference = "
               "gaussreg.reference (n' x D differences, argsort, autograd); sort_yardstick = torch.sort of n' "
               "float32 keys"])


if __name__ == "__main__":
    main()
