"""Kernel-sum losses (formulas §3, 4, 5): time and memory vs n, compiled backend vs reference vs peers.

Cases (D = ``--dim``; every point tensor N(0, I) unless said):

=======================  ====================================================================
gaussian_l2_to_normal    ``gaussreg.gaussian_l2_to_normal(z, sigma=1.0)``
gaussian_l2              ``gaussreg.gaussian_l2(x, y, sigma=1.0)``, y ~ N(0.25, I), m = n,
                         gradients for x and y
mmd_imq / mmd_rbf        ``gaussreg.mmd(z, prior_sample=y, kernel=...)``, y a given prior
                         sample (m = n) without gradient
cw_approx                ``gaussreg.cw_distance(z, kernel="approx")``
=======================  ====================================================================

Implementations:

* ``native``: the compiled backend (``backend="native"``), fused pair kernels.
* ``reference``: ``gaussreg.reference`` (``backend="reference"``): explicit (n, m, D)
  differences and autograd, so O(n^2 D) memory; not run above ``--ref-max-n``.
* ``cdist``: the straightforward PyTorch formula, ``d2 = torch.cdist(a, b).pow(2)``, the
  kernel on the full n x m matrix, autograd backward.
* ``blocked``: a competent PyTorch peer, :class:`BlockedPairSum`: 512-row blocks,
  distances by the matmul expansion clamped at 0 with the exact (zero) diagonal (its
  gradient weight zeroed too), and a hand-written gradient ``sum_j w_ij (a_i - b_j) = a_i * rowsum(W) - W @ b`` per block with
  ``W = k'(d2)``, accumulated in the same pass as the value (like the compiled kernels),
  so memory is O(block * n + n D) and no n x n matrix is kept.
* ``keops`` (pykeops) and ``geomloss``: optional peers, run only when installed.

FLOP convention (the floor column)
----------------------------------
The pair arithmetic is counted as the work of the matmul formulation, which is what a
GEMM-bound implementation executes and is matched by a matmul-rate floor:

* a self sum ``sum_{i,j} k(|z_i - z_j|^2)`` over n points costs ``2 n^2 D`` forward
  (the Gram matrix ``z z^T``) and ``2 n^2 D`` more for its gradient
  (``W @ z``): **4 n^2 D for forward+backward**;
* a cross sum over n x m points costs ``2 n m D`` forward, plus ``2 n m D`` per side that
  needs a gradient;
* kernel evaluations (exp, division, ...), O(n^2) each, and O(n D) terms are not counted.

So: gaussian_l2_to_normal and cw_approx 4 n^2 D (forward 2 n^2 D); gaussian_l2 (x-x, y-y,
x-y, both gradients) 14 n^2 D (forward 6 n^2 D); mmd with a given prior sample (z-z with
gradient, y-y value only, z-y with the z gradient) 10 n^2 D (forward 6 n^2 D). An
implementation that visits each unordered pair once (the compiled kernels do) or evaluates
distances by explicit differences does different arithmetic; the count is a yardstick,
not a census, and "x floor" below 1 is possible in principle.

The floor time is this count divided by the rate of a large matmul measured in the same
run on the same device (``--peak-size``), or the bytes that must move (each point tensor
read, each gradient written) over the bandwidth of a large copy, whichever is larger
(``gaussreg/bench/floors.py``): achievable-peak proxies, not datasheet peaks.

Example:
    python -m gaussreg.bench.kernel_sums --n 256 512 --repeats 3
    python -m gaussreg.bench.kernel_sums                       # CPU default: n = 256 .. 4096, D = 64
    python -m gaussreg.bench.kernel_sums --n 1024 4096 --ref-max-n 1024 --cdist-max-n 4096
    python -m gaussreg.bench.kernel_sums --device cuda --ref-max-n 8192
"""
from __future__ import annotations

import argparse
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

import gaussreg
from gaussreg.testing import random_points

from . import _harness, floors
from ._harness import Case, Impl

MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # gaussreg.mmd's default scales
BLOCK = 512


# ---------------------------------------------------------------------------
# Kernels k(t) of the squared distance t, with their slope k'(t) (for the hand-written gradient)
# ---------------------------------------------------------------------------


class Gauss:
    """k(t) = exp(-c t)."""

    def __init__(self, c: float):
        self.c = c

    def value(self, t: Tensor) -> Tensor:
        return torch.exp(-self.c * t)

    def value_and_slope(self, t: Tensor):
        e = torch.exp(-self.c * t)
        return e, e * (-self.c)

    def keops(self, t):
        return (-self.c * t).exp()


class Imq:
    """k(t) = sum_s C_s / (C_s + t)."""

    def __init__(self, cs: Sequence[float]):
        self.cs = list(cs)

    def value(self, t: Tensor) -> Tensor:
        return sum(c / (c + t) for c in self.cs)

    def value_inplace(self, t: Tensor) -> Tensor:
        v = torch.zeros_like(t)
        for c in self.cs:
            v.add_(torch.reciprocal(t + c), alpha=c)
        return v

    def value_and_slope(self, t: Tensor):
        v = torch.zeros_like(t)
        s = torch.zeros_like(t)
        for c in self.cs:
            q = torch.reciprocal(t + c)  # 1 / (C + t)
            v.add_(q, alpha=c)
            s.addcmul_(q, q, value=-c)  # -C / (C + t)^2
        return v, s

    def keops(self, t):
        out = None
        for c in self.cs:
            term = c / (c + t)
            out = term if out is None else out + term
        return out


class Rbf:
    """k(t) = sum_s exp(-c_s t)."""

    def __init__(self, cs: Sequence[float]):
        self.cs = list(cs)

    def value(self, t: Tensor) -> Tensor:
        return sum(torch.exp(-c * t) for c in self.cs)

    def value_inplace(self, t: Tensor) -> Tensor:
        v = torch.zeros_like(t)
        for c in self.cs:
            v.add_(torch.exp(t * -c))
        return v

    def value_and_slope(self, t: Tensor):
        v = torch.zeros_like(t)
        s = torch.zeros_like(t)
        for c in self.cs:
            e = torch.exp(-c * t)
            v.add_(e)
            s.add_(e, alpha=-c)
        return v, s


class CwApprox:
    """k(t) = (1 + c t)^(-1/2)."""

    def __init__(self, c: float):
        self.c = c

    def value(self, t: Tensor) -> Tensor:
        return torch.rsqrt(1.0 + self.c * t)

    def value_and_slope(self, t: Tensor):
        r = torch.rsqrt(1.0 + self.c * t)
        return r, r * r * r * (-0.5 * self.c)


# ---------------------------------------------------------------------------
# Peer pair sums: sum_{i,j} k(|a_i - b_j|^2) over all ordered pairs (b = a: diagonal included)
# ---------------------------------------------------------------------------


def cdist_pair_sum(a: Tensor, b: Optional[Tensor], kernel) -> Tensor:
    """The straightforward formula: the full n x m distance matrix from torch.cdist, autograd."""
    t = torch.cdist(a, a if b is None else b).pow(2)
    return kernel.value(t).sum()


class BlockedPairSum(torch.autograd.Function):
    """sum_{i,j} k(|a_i - b_j|^2) in 512-row blocks with the gradient computed in the same pass.

    Per block of rows of a: ``t = |a_i|^2 + |b_j|^2 - 2 a_i.b_j`` clamped at 0 (the diagonal
    of a self sum set to exactly 0), ``(K, W) = (k(t), k'(t))``, then
    ``d/da_i = 2 sum_j W_ij (a_i - b_j) = 2 (a_i * rowsum(W) - W @ b)`` (twice that for a
    self sum, whose W is symmetric) and ``d/db_j = 2 (b_j * colsum(W) - W^T @ a)``.
    Block values are summed in float64. Only the (n, D) gradients are saved for backward.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Optional[Tensor], kernel, need_a: bool, need_b: bool):
        self_sum = b is None
        bb = a if self_sum else b
        sq_a = a.pow(2).sum(1)
        sq_b = sq_a if self_sum else bb.pow(2).sum(1)
        bt = bb.t()
        total = torch.zeros((), dtype=torch.float64, device=a.device)
        grad_a = torch.zeros_like(a) if need_a else None
        grad_b = torch.zeros_like(bb) if (need_b and not self_sum) else None
        colsum = torch.zeros_like(sq_b) if grad_b is not None else None
        for s in range(0, a.shape[0], BLOCK):
            e = min(s + BLOCK, a.shape[0])
            ab = a[s:e]
            t = torch.mm(ab, bt).mul_(-2.0).add_(sq_a[s:e, None]).add_(sq_b[None, :]).clamp_(min=0.0)
            if self_sum:
                t[:, s:e].diagonal().zero_()  # exact: |a_i - a_i|^2 = 0
            if grad_a is None and grad_b is None:
                # value only (forward under no_grad): the multi-scale kernels accumulate in place
                value = getattr(kernel, "value_inplace", kernel.value)
                total += value(t).sum(dtype=torch.float64)
                continue
            k, w = kernel.value_and_slope(t)
            total += k.sum(dtype=torch.float64)
            del k, t
            if self_sum:
                # The diagonal's gradient is exactly 0 (a_i - a_i); left in, its large k'(0)
                # would cancel in a_i * rowsum(W) - W @ a and swamp small gradients with rounding.
                w[:, s:e].diagonal().zero_()
            if grad_a is not None:
                grad_a[s:e] = torch.addmm(ab * w.sum(1, keepdim=True), w, bb, alpha=-1.0)
            if grad_b is not None:
                colsum += w.sum(0)
                grad_b.addmm_(w.t(), ab, alpha=-1.0)  # accumulates -W^T a
        if grad_a is not None:
            grad_a.mul_(4.0 if self_sum else 2.0)
        if grad_b is not None:
            grad_b.add_(bb * colsum[:, None]).mul_(2.0)
        ctx.save_for_backward(grad_a, grad_b)
        return total.to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_a, grad_b = ctx.saved_tensors
        ga = None if grad_a is None else grad_a * grad_out
        gb = None if grad_b is None else grad_b * grad_out
        return ga, gb, None, None, None


def blocked_pair_sum(a: Tensor, b: Optional[Tensor], kernel) -> Tensor:
    grad_on = torch.is_grad_enabled()
    need_a = grad_on and a.requires_grad
    need_b = grad_on and b is not None and b.requires_grad
    return BlockedPairSum.apply(a, b, kernel, need_a, need_b)


def keops_pair_sum(a: Tensor, b: Optional[Tensor], kernel) -> Tensor:
    """pykeops LazyTensor reduction (optional peer; autograd through KeOps)."""
    from pykeops.torch import LazyTensor
    x = LazyTensor(a[:, None, :])
    y = LazyTensor((a if b is None else b)[None, :, :])
    t = ((x - y) ** 2).sum(-1)
    return kernel.keops(t).sum(dim=1).sum()


# ---------------------------------------------------------------------------
# The losses written on top of a peer pair sum (same formulas as formulas §3, 4, 5)
# ---------------------------------------------------------------------------


def peer_losses(pair_sum):
    """The five benchmarked losses, each written with ``pair_sum(a, b_or_None, kernel)``."""

    def gaussian_l2_to_normal(z):
        # formulas §3 eq. (9) with sigma = 1: a = 2, b = 2, so every power factor is 1.
        n = z.shape[0]
        return pair_sum(z, None, Gauss(0.25)) / (n * n) + 1.0 - (2.0 / n) * torch.exp(-0.25 * z.pow(2).sum(1)).sum()

    def gaussian_l2(x, y):
        n, m = x.shape[0], y.shape[0]
        k = Gauss(0.25)  # 1 / (4 sigma^2), sigma = 1
        return (pair_sum(x, None, k) / (n * n) + pair_sum(y, None, k) / (m * m)
                - 2.0 * pair_sum(x, y, k) / (n * m))

    def mmd(kernel_name):
        def loss(z, y):
            n, m, d = z.shape[0], y.shape[0], z.shape[1]
            if kernel_name == "imq":
                k = Imq([2.0 * d * s for s in MMD_SCALES])
            else:
                k = Rbf([1.0 / (2.0 * d * s) for s in MMD_SCALES])
            k0 = float(len(MMD_SCALES))  # k(0): the diagonal removed from the unbiased estimate
            zz = (pair_sum(z, None, k) - n * k0) / (n * (n - 1))
            yy = (pair_sum(y, None, k) - m * k0) / (m * (m - 1))
            return zz + yy - 2.0 * pair_sum(z, y, k) / (n * m)
        return loss

    def cw_approx(z):
        n, d = z.shape
        gamma = (4.0 / (3.0 * n)) ** 0.4
        pairs = pair_sum(z, None, CwApprox(1.0 / (gamma * (2 * d - 3))))
        points = torch.rsqrt(1.0 + 4.0 * z.pow(2).sum(1) / ((2.0 + 4.0 * gamma) * (2 * d - 3))).sum()
        return (pairs / math.sqrt(gamma) + n * n / math.sqrt(1.0 + gamma)
                - 2.0 * n / math.sqrt(gamma + 0.5) * points) / (2.0 * n * n * math.sqrt(math.pi))

    return {
        "gaussian_l2_to_normal": gaussian_l2_to_normal,
        "gaussian_l2": gaussian_l2,
        "mmd_imq": mmd("imq"),
        "mmd_rbf": mmd("rbf"),
        "cw_approx": cw_approx,
    }


def gaussreg_losses(backend: str):
    return {
        "gaussian_l2_to_normal": lambda z: gaussreg.gaussian_l2_to_normal(z, sigma=1.0, backend=backend),
        "gaussian_l2": lambda x, y: gaussreg.gaussian_l2(x, y, sigma=1.0, backend=backend),
        "mmd_imq": lambda z, y: gaussreg.mmd(z, prior_sample=y, kernel="imq", backend=backend),
        "mmd_rbf": lambda z, y: gaussreg.mmd(z, prior_sample=y, kernel="rbf", backend=backend),
        "cw_approx": lambda z: gaussreg.cw_distance(z, kernel="approx", backend=backend),
    }


# ---------------------------------------------------------------------------
# Inputs, FLOP counts, memory estimates
# ---------------------------------------------------------------------------


def _one_point_set(n, d, dtype, device, seed):
    return (random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True),)


def _two_sets_both_grad(n, d, dtype, device, seed):
    x = random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True)
    y = (random_points(n, d, seed=seed + 1000, dtype=dtype, device=device) + 0.25).requires_grad_(True)
    return x, y


def _sample_and_prior(n, d, dtype, device, seed):
    z = random_points(n, d, seed=seed, dtype=dtype, device=device, requires_grad=True)
    y = random_points(n, d, seed=seed + 1000, dtype=dtype, device=device)
    return z, y


# Pair sums (n x n each, m = n) whose (n, n, D) difference tensor the reference builds;
# autograd keeps the ones with a gradient alive until backward.
REFERENCE_PAIR_SUMS = {"gaussian_l2_to_normal": 1, "gaussian_l2": 3, "mmd_imq": 3, "mmd_rbf": 3, "cw_approx": 1}


def _reference_bytes(case: str):
    # One n x n x D difference tensor per pair sum, kept for backward, plus about three
    # transient ones (its square, the gradient of the square): within ~10% of the measured
    # peak at n = 1024, D = 64. A safety estimate for skipping, not a measurement.
    k = REFERENCE_PAIR_SUMS[case]
    return lambda n, d, itemsize: (k + 3) * float(n) * n * d * itemsize


def _cdist_bytes(case: str):
    k = REFERENCE_PAIR_SUMS[case]
    return lambda n, d, itemsize: 4 * k * float(n) * n * itemsize


INPUTS = {
    "gaussian_l2_to_normal": (_one_point_set, "z (n, D) with gradient; sigma = 1"),
    "gaussian_l2": (_two_sets_both_grad, "x, y (n, D), y shifted by 0.25, gradients for both; sigma = 1"),
    "mmd_imq": (_sample_and_prior, "z (n, D) with gradient, given prior sample y (n, D); 7 scales"),
    "mmd_rbf": (_sample_and_prior, "z (n, D) with gradient, given prior sample y (n, D); 7 scales"),
    "cw_approx": (_one_point_set, "z (n, D) with gradient; gamma = (4/(3n))^(2/5)"),
}


def _optional_peer(module: str) -> Optional[str]:
    try:
        __import__(module)
        return None
    except Exception as exc:  # ImportError, or a broken install (e.g. no compiler for KeOps)
        return f"{module} is not installed here ({type(exc).__name__}); optional peer skipped"


def _geomloss_gaussian_l2():
    """gaussian_l2 through geomloss: SamplesLoss('gaussian', blur=b) is (1/2)|a - b|_k^2 with
    k = exp(-|x - y|^2 / (2 b^2)); b = sqrt(2) sigma gives formulas §3's kernel, times 2."""
    def loss(x, y):
        from geomloss import SamplesLoss
        return 2.0 * SamplesLoss("gaussian", blur=math.sqrt(2.0))(x, y)
    return loss


def build_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    native = gaussreg_losses("native")
    reference = gaussreg_losses("reference")
    cdist = peer_losses(cdist_pair_sum)
    blocked = peer_losses(blocked_pair_sum)
    keops = peer_losses(keops_pair_sum)
    keops_missing = _optional_peer("pykeops")
    geomloss_missing = _optional_peer("geomloss")
    ref_max_n = args.ref_max_n if args.ref_max_n is not None else (8192 if device.type == "cuda" else 512)
    cdist_max_n = args.cdist_max_n if args.cdist_max_n is not None else (None if device.type == "cuda" else 2048)
    cases = []
    for name, (make_inputs, description) in INPUTS.items():
        impls = [
            Impl("native", native[name]),
            Impl("reference", reference[name], max_n=ref_max_n,
                 max_n_note=f"n > --ref-max-n {ref_max_n} (O(n^2 D) memory and time)",
                 bytes_needed=_reference_bytes(name)),
            Impl("cdist", cdist[name], max_n=cdist_max_n, bytes_needed=_cdist_bytes(name),
                 max_n_note=f"n > --cdist-max-n {cdist_max_n} (keeps a default CPU run short)"),
            Impl("blocked", blocked[name]),
        ]
        if name in ("gaussian_l2_to_normal", "mmd_imq"):
            impls.append(Impl("keops", keops[name], unavailable=keops_missing))
        if name == "gaussian_l2":
            impls.append(Impl("geomloss", _geomloss_gaussian_l2(), unavailable=geomloss_missing))
        cases.append(Case(
            name=name, make_inputs=make_inputs, impls=impls, cost=floors.COSTS[name],
            oracle="reference", size_oracles=("native", "reference"),
            # At D = 64 and sigma = 1 the off-diagonal Gaussian kernel values are ~e^-32, so
            # gaussian_l2's gradient is ~1e-10 and a float64 peer built on torch.cdist (whose
            # diagonal distance is ~1e-7, not 0) is off by ~1e-9 relative: correct, not exact.
            # Formula errors show up at 1e-3 or more.
            gate_rtol=1e-7,
            description=f"{description}; FLOPs (fwd+bwd) = {floors.COSTS[name](1, 1, 4, True).flops:g} n^2 D"))
    return cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref-max-n", type=int, default=None,
                        help="largest n at which the reference runs (default 512 on CPU, which keeps a default run "
                             "near 3 minutes on 2 cores: its cost grows as n^2 D, ~1-3 s per call at 1024 x 64 and "
                             "~4 GB and ~30 s at 4096 x 64; 8192 on CUDA)")
    parser.add_argument("--cdist-max-n", type=int, default=None,
                        help="largest n at which the cdist peer runs (default 2048 on CPU, where it takes "
                             "seconds per call at 4096; no limit on CUDA beyond the memory estimate)")


def main(argv=None):
    return _harness.main(
        "kernel_sums", "gaussreg.bench.kernel_sums", build_cases, description=__doc__.split("\n\n")[0],
        default_n={"cpu": [256, 512, 1024, 2048, 4096], "cuda": [1024, 4096, 16384, 65536]},
        add_arguments=add_arguments, argv=argv,
        notes=["FLOPs count the matmul formulation: 4 n^2 D per self sum forward+backward "
               "(see gaussreg/bench/kernel_sums.py); kernel evaluations are not counted",
               "blocked = PyTorch peer with a hand-written gradient (512-row blocks, matmul expansion); "
               "cdist = torch.cdist + autograd; reference = gaussreg.reference (O(n^2 D) memory)"])


if __name__ == "__main__":
    main()
