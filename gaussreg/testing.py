"""Inputs shared by the tests and the benchmarks: random points and memory layouts."""
from __future__ import annotations

import torch

LAYOUTS = ("contiguous", "transposed", "sliced", "expanded_cols")


def random_points(n: int, d: int, *, seed: int = 0, dtype=torch.float64, device="cpu", scale: float = 1.0,
                  requires_grad: bool = False) -> torch.Tensor:
    """n points of N(0, scale^2 I) in D dimensions, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    return z.requires_grad_(requires_grad)


def with_layout(z: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``z`` (n, D) in a non-contiguous memory layout.

    "transposed": column-major storage; "sliced": every other row and column of a larger
    tensor; "expanded_cols": a column-major copy whose strides are not the contiguous ones.
    """
    if layout == "contiguous":
        return z.contiguous()
    if layout == "transposed":
        return z.t().contiguous().t()
    if layout == "sliced":
        n, d = z.shape
        big = torch.zeros(2 * n, 2 * d, dtype=z.dtype, device=z.device)
        big[::2, ::2] = z
        return big[::2, ::2]
    if layout == "expanded_cols":
        n, d = z.shape
        big = torch.zeros(n, 3, d, dtype=z.dtype, device=z.device)
        big[:, 1, :] = z
        return big[:, 1, :]
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
