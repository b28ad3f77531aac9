"""Coordinate-wise CDF attraction (formulas §2, Duda eq. 15): every column of z ranked and
pulled toward the quantiles of a normal, uniform or torus marginal.

The columns are sorted by the segmented engine (``gaussreg.engines.segmented``): one radix sort per
column, the residual and its slope written in the same pass, the backward one multiply.
"""
from __future__ import annotations

import numbers
from typing import Optional

from torch import Tensor

from .. import _checks, reference
from ..distributed import maybe_gather
from ..engines import segmented
from ..targets import rank_targets
from ._front import prepare_points

MARGINALS = ("normal", "uniform", "torus")
MAX_BITS = 24  # 2^k cells of width 2^-k: beyond float32's resolution of [0, 1) anyway


def coordinate_cdf_attraction(z: Tensor, *, marginal: str = "normal", bits: Optional[int] = None, p: int = 2,
                              backend: str = "auto", process_group=None) -> Tensor:
    r"""Per-coordinate attraction of ranked values to target quantiles (formulas §2, Duda eq. 15).

    .. math::
        L = \frac{1}{nD}\sum_{i,j} |z_{ij} - t_{ij}|^p

    where t_ij depends on z only through s_ij, the 0-based rank of z_ij in its column
    (held constant: the gradient is p |e|^{p-1} sgn(e) / (nD)):

    - ``"normal"``: t = Phi^{-1}((s + 1/2)/n), the N(0, 1) marginal;
    - ``"uniform"``: t = (s + 1/2)/n, the hypercube [0, 1]^D;
    - ``"torus"``: [0, 1)^D with 0 glued to 1: z is ranked by w = z mod 1 and the
      residual wraps, e = ((w - t + 1/2) mod 1) - 1/2, so points near 0 and 1 are close;
    - ``bits=k`` (uniform or torus): the quantization-aware "egg-carton" target
      t = 2^-k (floor(2^k s / n) + 1/2), the centre of the k-bit cell the rank falls in.

    Compression: a latent attracted to the uniform torus with ``bits=k`` piles each
    coordinate onto the 2^k cell centres, so storing ``floor(2^k (z mod 1))`` -- its k most
    significant bits -- loses almost nothing, and every code is used about equally often
    (the rate is the full k bits per coordinate).

    With p = 2 a gradient step of size n D / 2 is the paper's x -> x + alpha (x~ - x).

    Args:
        z: points (n, D), n >= 1, float16/bfloat16/float32/float64, CPU or CUDA.
        marginal: "normal", "uniform" or "torus".
        bits: None, or k in 1..24 for "uniform"/"torus".
        p: 1 or 2.
        backend: "auto", "native" or "reference".
        process_group: compute the loss on the global batch of all ranks (a
            ``torch.distributed`` group, or "world"); see ``gaussreg.distributed``.
    Returns:
        0-dim tensor with z's dtype (float32 for half inputs).

    Example:
        >>> z = torch.rand(1000, 16, requires_grad=True)
        >>> loss = gaussreg.coordinate_cdf_attraction(z, marginal="torus", bits=4)
        >>> loss.backward()
        >>> codes = torch.floor(16 * torch.remainder(z.detach(), 1.0)).to(torch.uint8)  # 4 bits each
    """
    z = _checks.points("z", z, min_rows=1)
    _checks.choice("marginal", marginal, MARGINALS)
    bits = _bits(bits, marginal)
    p = _checks.power(p)
    (z,) = maybe_gather(process_group, z)
    (zc,), device, out_dtype, native = prepare_points(
        "coordinate_cdf_attraction", None, backend, min_rows=1, entry="segmented_forward",
        need_bytes=lambda dev, dtype, sizes: segmented.plan(dev, dtype, sizes[0][1], sizes[0][0]).need_bytes,
        process_group=process_group, z=z)
    if not native:
        return reference.coordinate_cdf_attraction(zc, marginal=marginal, bits=bits, p=p)
    n, dim = zc.shape
    targets = rank_targets(n, marginal, bits, device, zc.dtype)
    total = segmented.sorted_gaps(zc.t().contiguous(), targets, torus=marginal == "torus", p=p)
    return (total / (n * dim)).to(out_dtype)


def _bits(bits, marginal: str) -> Optional[int]:
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be None or an int, got {type(bits).__name__}")
    if marginal == "normal":
        raise ValueError("bits is only defined for marginal='uniform' or 'torus' (cells of [0, 1)), "
                         "got marginal='normal'")
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    return int(bits)
