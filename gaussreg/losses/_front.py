"""Steps every loss front end shares: validate, pick the dtype, check memory, check finiteness."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .. import _checks, distributed, engines
from ..engines import pair_sum


# need_bytes(device, compute dtype, [(rows, D) of each point tensor]) -> working bytes.
NeedBytes = Callable[[torch.device, torch.dtype, Sequence[Tuple[int, int]]], int]


def prepare_points(what: str, stem: Optional[str], backend: str, *, min_dim: int = 1, min_rows: int = 2,
                   optional: Tuple[str, ...] = (), draws_partner: bool = False, entry: Optional[str] = None,
                   need_bytes: Optional[NeedBytes] = None, process_group=None, **named: Optional[torch.Tensor]
                   ) -> Tuple[List[Optional[torch.Tensor]], torch.device, torch.dtype, bool]:
    """Validate the point tensors in ``named`` for loss ``what`` (a None entry is skipped
    when its name is in ``optional``, and a TypeError naming it otherwise).
    ``draws_partner``: the loss draws a second sample like the first (counted in memory).
    The working memory is the pair sums' of ``stem``, or ``need_bytes`` of the sizes for
    the losses on other engines; ``entry`` is the compiled function they need.

    Returns the tensors converted to the compute dtype (the promoted dtype of all of them,
    float32 for half inputs; autograd carries gradients back to each input's dtype) in the
    order given, their device, the output dtype (the first tensor's: float32 for half
    inputs) and whether the compiled backend runs. Memory is checked before the
    NaN/Inf scan and the dtype conversion, so an impossible request fails at once instead
    of scanning or copying a huge (e.g. expanded) tensor.

    With ``process_group`` the checks are this rank's batch's, and if they fail on any
    rank every rank raises (``distributed.checked_together``); a rank may then hold
    fewer than ``min_rows`` points: call ``enough_rows`` on the gathered tensors.
    """
    if process_group is not None:
        min_rows = min(min_rows, 1)
    return distributed.checked_together(process_group, lambda: _prepare_points(
        what, stem, backend, min_dim, min_rows, optional, draws_partner, entry, need_bytes, named))


def enough_rows(min_rows: int, **gathered: Optional[torch.Tensor]) -> None:
    """The global batch (the gathered points, the same on every rank) has ``min_rows`` points."""
    for name, v in gathered.items():
        if v is not None and v.shape[0] < min_rows:
            raise ValueError(f"{name} needs at least {min_rows} points (rows) for its pairs over all ranks' "
                             f"batches, got n = {v.shape[0]}")


def _prepare_points(what, stem, backend, min_dim, min_rows, optional, draws_partner, entry, need_bytes, named):
    present = {k: _checks.points(k, v, min_rows=min_rows) for k, v in named.items()
               if v is not None or k not in optional}
    for k, v in present.items():
        if v.shape[1] < min_dim:
            raise ValueError(f"{what} needs D >= {min_dim}, got {k} with D = {v.shape[1]}")
    device = _checks.same_device(**present)
    if device.type not in ("cpu", "cuda"):
        names = ", ".join(present)
        raise ValueError(f"{what}: {names} on device {device}; gaussreg computes on CPU and CUDA tensors only")
    items = list(present.items())
    for k, v in items[1:]:
        _checks.same_dim(items[0][0], items[0][1], k, v)
    dtype = _checks.compute_dtype(*present.values())
    out_dtype = _checks.compute_dtype(items[0][1])
    native = engines.use_native(device, backend, what, entry=entry)
    if native and not _checks.compiling():  # sizes are static under compile; the op still reports OOM
        # From the sizes, before any copy: the inputs converted to the compute dtype, then the
        # largest pair sum's workspace and every pair sum's gradient buffers (kept for backward).
        elem = dtype.itemsize
        sizes = [tuple(v.shape) for v in present.values()]
        copies = sum(r * c * elem for (r, c), v in zip(sizes, present.values()) if v.dtype != dtype)
        n, d = sizes[0]
        m = sizes[1][0] if len(sizes) > 1 else 0
        if draws_partner and m == 0:
            m, copies = n, copies + n * d * elem
        if need_bytes is not None:
            need = copies + need_bytes(device, dtype, sizes)
        else:
            need = copies + pair_sum.plan(stem, device, dtype, n, m, d, grad_copies=2 if m else 1).need_bytes
        engines.check_fits(need, device, what)
    for k, v in present.items():
        _checks.finite(k, v)
    converted = [None if v is None else v.to(dtype) for v in named.values()]
    return converted, device, out_dtype, native


class _SquaredNorms(torch.autograd.Function):
    """r_i = ||z_i||^2 in float64 from z of any float dtype, with a one-pass backward 2 z_i g_i.

    The point-to-prior terms of the kernel-sum losses are O(n D); autograd through
    ``z.double().pow(2).sum(1)`` costs several float64 passes, this costs two.
    """

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        z64 = z.double()
        return torch.einsum("ij,ij->i", z64, z64)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return z * (2.0 * grad).to(z.dtype)[:, None]


def squared_norms(z: torch.Tensor) -> torch.Tensor:
    """||z_i||^2 in float64, shape (n,), differentiable in z (gradient in z's dtype)."""
    return _SquaredNorms.apply(z)
