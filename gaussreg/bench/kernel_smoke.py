"""One small forward+backward call of every compiled kernel: the program compute-sanitizer runs.

Each case uses odd sizes (rows that do not fill a tile, D not a multiple of a vector) so
that edge paths run, and ends with a device synchronisation so that a fault surfaces at
its case. Nothing is compared here (the tests do that); a case passes when it returns a
finite value and finite gradients.

    python3 -m gaussreg.bench.kernel_smoke --device cuda            # what bench/gpu_check.sh sanitizes
    python3 -m gaussreg.bench.kernel_smoke --device cpu             # the same cases on the CPU (CI runs this)
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Tuple

import torch

import gaussreg
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.testing import random_points


def _points(device, dtype, n, d, seed):
    return random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True)


def _cases() -> List[Tuple[str, Callable[[List[torch.Tensor]], torch.Tensor], List[Tuple[int, int]]]]:
    """(name, loss of the point tensors, their (n, D) shapes)."""
    def few_entries(p, entries):
        return entries * cdf_engine.entry_bytes(p.device, p.dtype, p.shape[0])

    small, other = (37, 5), (29, 5)
    return [
        ("gaussian_l2_to_normal", lambda z: gaussreg.gaussian_l2_to_normal(z, 1.0), [small]),
        ("gaussian_l2_to_normal per point", lambda z: gaussreg.gaussian_l2_to_normal(
            z, torch.linspace(0.5, 1.5, z.shape[0], dtype=z.dtype, device=z.device)), [small]),
        ("gaussian_l2", lambda x, y: gaussreg.gaussian_l2(x, y), [small, other]),
        # D = 16: float32 takes the register sweep of the CUDA pair sums (D = 5 the chunked one)
        ("gaussian_l2, D = 16", lambda x, y: gaussreg.gaussian_l2(x, y), [(37, 16), (29, 16)]),
        # enough rows and partners for the register sweep's partner ranges (2 and 4 ranges
        # for the two cross sweeps, 4 and 2 for mmd's self sums), their slabs and their sum
        ("gaussian_l2, D = 16, partner ranges", lambda x, y: gaussreg.gaussian_l2(x, y), [(600, 16), (300, 16)]),
        ("mmd imq, D = 64, partner ranges", lambda z, y: gaussreg.mmd(z, y), [(600, 64), (300, 64)]),
        # the chunked sweep (D = 40) cut into partner ranges the same way
        ("mmd imq, D = 40, partner ranges", lambda z, y: gaussreg.mmd(z, y), [(600, 40), (300, 40)]),
        ("mmd imq", lambda z, y: gaussreg.mmd(z, y), [small, other]),
        ("mmd rbf", lambda z, y: gaussreg.mmd(z, y, kernel="rbf"), [small, other]),
        ("cw_distance approx", lambda z: gaussreg.cw_distance(z), [small]),
        ("cw_distance exact", lambda z: gaussreg.cw_distance(z, kernel="exact"), [small]),
        ("cdf_attraction p=1, table", lambda z: gaussreg.cdf_attraction(z), [(301, 7)]),
        ("cdf_attraction p=2, table", lambda z: gaussreg.cdf_attraction(z, p=2), [(301, 7)]),
        ("cdf_attraction p=1, anchors", lambda z: gaussreg.cdf_attraction(z), [(400, 9)]),
        ("cdf_attraction p=2, passes", lambda z: gaussreg.cdf_attraction(z, p=2, max_sort_bytes=few_entries(z, 9000)),
         [(400, 9)]),
        ("coordinate normal p=1", lambda z: gaussreg.coordinate_cdf_attraction(z, p=1), [(301, 7)]),
        ("coordinate torus bits=3", lambda z: gaussreg.coordinate_cdf_attraction(z, marginal="torus", bits=3),
         [(301, 7)]),
        ("sliced_wasserstein prior", lambda z, y: gaussreg.sliced_wasserstein(z, prior_sample=y, num_projections=33),
         [(301, 7), (301, 7)]),
        ("epps_pulley 17 knots", lambda z: gaussreg.epps_pulley(z, num_slices=40), [(301, 7)]),
        ("epps_pulley 40 knots", lambda z: gaussreg.epps_pulley(z, num_slices=3, num_points=40), [(301, 7)]),
        ("gmm_ks_loss", lambda z: gaussreg.gmm_ks_loss(z, gaussreg.GaussianMixture.separated(
            3, 7, dtype=z.dtype, device=z.device)), [(301, 7)]),
        # Edge shapes and layouts (issue 8): the fewest points and dimensions, a huge D,
        # exact ties, stride-0 and transposed inputs.
        ("mmd n=2 D=1", lambda z, y: gaussreg.mmd(z, y), [(2, 1), (2, 1)]),
        ("gaussian_l2_to_normal D=1024", lambda z: gaussreg.gaussian_l2_to_normal(z, 8.0), [(5, 1024)]),
        ("cw_distance exact D=1024", lambda z: gaussreg.cw_distance(z, kernel="exact"), [(7, 1024)]),
        ("gaussian_l2 stride-0 x", lambda x, y: gaussreg.gaussian_l2(x[:1].expand(33, -1), y.t().contiguous().t()),
         [small, other]),
        ("cdf_attraction n=2 D=1", lambda z: gaussreg.cdf_attraction(z, p=2), [(2, 1)]),
        ("cdf_attraction D=1024", lambda z: gaussreg.cdf_attraction(z), [(9, 1024)]),
        ("cdf_attraction ties, passes", lambda z: gaussreg.cdf_attraction(
            torch.cat([z, z, z]), max_sort_bytes=few_entries(z, 4000)), [(60, 3)]),
        # The selection engine (p = 1, bins > 0; on CUDA only when asked for), one pass and
        # several (3000 entries of sort memory a pass).
        ("cdf selection", lambda z: _selection(z, 1 << 12, None), [(301, 7)]),
        ("cdf selection, passes", lambda z: _selection(z, 1 << 12, 3000), [(301, 7)]),
        # about 11000 mixed pairs against 300 entries a pass: the second level cuts them
        ("cdf selection, second level", lambda z: _selection(z, 1 << 12, 300), [(301, 7)]),
    ]


def _selection(z: torch.Tensor, bins: int, capacity) -> torch.Tensor:
    """The p = 1 distances term by the engine's selection, with an exact chi2_D table."""
    pairs = cdf_engine.pair_count(z.shape[0])
    table = gaussreg.targets.Chi2(z.shape[1]).quantiles(pairs, z.device, z.dtype).contiguous()
    return cdf_engine.cdf_pairs(z, 1, capacity or pairs, table=table, bins=bins) / pairs


def run(device: torch.device, dtypes) -> int:
    failures = 0
    for dtype in dtypes:
        for name, loss_of, shapes in _cases():
            try:
                points = [_points(device, dtype, n, d, seed) for seed, (n, d) in enumerate(shapes)]
                loss = loss_of(*points)
                grads = torch.autograd.grad(loss, points)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
                note = "" if finite else "non-finite value or gradient"
            except Exception as exc:  # report every case, then fail
                finite, note = False, f"{type(exc).__name__}: {exc}"
            failures += not finite
            print(f"{'ok  ' if finite else 'FAIL'} {str(dtype):14s} {name}{'' if finite else ': ' + note}", flush=True)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    failures = run(device, [getattr(torch, d) for d in args.dtypes])
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
