"""Global-batch losses under DistributedDataParallel: every rank's latents, differentiably.

A distribution loss on one rank's batch only sees n/world_size points; the statistic of
the global batch needs all of them. ``gather_rows(z, group)`` returns the concatenation
of every rank's ``z`` (rank order; local batch sizes may differ) and routes gradients
back so that, after DDP averages the parameter gradients over the ranks, each one equals
the gradient of the single-process loss on the concatenated batch:

every rank computes the same loss L(Z) on the same Z, so rank r's backward must return
sum over ranks of dL_s/dz_r = world_size * dL/dz_r to its encoder, and DDP's division by
world_size cancels the factor. (Returning only the rank's own dL/dz_r -- what a plain
all-gather with a slicing backward does -- leaves every gradient world_size times too
small: the classic bug.) The backward is therefore an all-reduce (sum) of the incoming
gradient followed by the rank's own rows.

The losses take ``process_group=`` (a group, or ``"world"`` for the default one) and call
this on their point tensors. The pair-sum losses then split the pairs: each rank sums its
share (``gaussreg.engines.pair_sum.pair_shares``) and ``sum_over_ranks`` adds the shares;
the gradient of every pair reaches both of its points through the gather's backward.
A loss's input checks run through ``checked_together``, so that a rank whose checks fail
makes every rank raise instead of leaving them in a collective.

Under ``torch.compile`` the same collectives go through torch's functional collectives
(traceable, ``fullgraph=True`` works): the all-gather's backward is a reduce-scatter of
the summed gradient, the same convention. Shapes must be static in a graph, so there the
ranks' local batches must have equal sizes (checked in the graph: a mismatch raises
instead of gathering wrong rows); eager calls take uneven sizes.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

T = TypeVar("T")

# The autograd-aware functional all-gather is all_gather_single_autograd from torch 2.12
# on, all_gather_tensor_autograd before (same operation).
_all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def _group(process_group):
    return None if process_group == "world" else process_group


def _traceable_group(group):
    return dist.group.WORLD if group is None else group


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _gather_equal_rows(z: Tensor, group) -> Tensor:
    """The all-gather of ``gather_rows`` inside a compiled graph (equal local sizes)."""
    group = _traceable_group(group)
    world = dist.get_world_size(group)
    mine = torch.tensor(list(z.shape), dtype=torch.int64, device=z.device)
    shapes = funcol.all_gather_tensor(mine, 0, group).view(world, -1)
    torch._assert_async((shapes == mine).all(),
                        "process_group under torch.compile: every rank's points must have the same shape (equal "
                        "local batch sizes, e.g. drop_last=True); uneven batches work in eager mode")
    return _all_gather_autograd(z.contiguous(), 0, group)


def check_group(process_group) -> None:
    """A usable process group: torch.distributed initialized, a group object or "world"."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("process_group given but torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    if process_group != "world" and not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or 'world', "
                        f"got {type(process_group).__name__}")


def _status_device(group) -> torch.device:
    """Where a collective of this group's backend takes its tensors (NCCL: this rank's GPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _failed_ranks(group, failed: bool) -> List[int]:
    """Every rank's answer to "did my checks fail?", exchanged; the ranks that said yes."""
    mine = torch.tensor([1 if failed else 0], dtype=torch.int64, device=_status_device(group))
    answers = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(answers, mine, group=group)
    return [r for r, a in enumerate(answers) if int(a.item())]


def checked_together(process_group, checks: Callable[[], T]) -> T:
    """``checks()``'s result, run so that if it raises on any rank of the group, every rank raises.

    A loss's input checks run on each rank's own batch before the collectives; one rank
    with a NaN or too little memory must not leave the others waiting in an all-gather
    for ever. The failing rank re-raises its own error; the others raise a RuntimeError
    naming it. One tiny all-gather per call (skipped under torch.compile, where a failing
    check fails the trace).
    """
    if process_group is None or _compiling():
        return checks()
    check_group(process_group)
    group = _group(process_group)
    try:
        result = checks()
    except Exception:
        _failed_ranks(group, True)
        raise
    failed = _failed_ranks(group, False)
    if failed:
        raise RuntimeError(f"process_group: the input checks failed on rank(s) {failed} (see the error there); "
                           "this rank stops too rather than wait for them in a collective")
    return result


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _all_shapes(z: Tensor, group) -> List[List[int]]:
    """(n, D, dtype number) of every rank, gathered first so that uneven batches are handled
    and mismatched D or dtype are caught on every rank."""
    code = _DTYPES.index(z.dtype) if z.dtype in _DTYPES else -1
    mine = torch.tensor(list(z.shape) + [code], dtype=torch.int64, device=z.device)
    shapes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, mine, group=group)
    return [s.tolist() for s in shapes]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, group) -> Tensor:
        shapes = _all_shapes(z, group)
        # Every rank sees the same shapes, so every rank raises: no hang.
        if len({tuple(s[1:-1]) for s in shapes}) != 1:
            raise ValueError(f"process_group: the ranks' points differ in dimension: shapes {[s[:-1] for s in shapes]}")
        if len({s[-1] for s in shapes}) != 1:
            names = [str(_DTYPES[s[-1]]) if s[-1] >= 0 else "other" for s in shapes]
            raise ValueError(f"process_group: the ranks' points differ in dtype: {names} (convert them to one dtype)")
        sizes = [s[0] for s in shapes]
        widest = max(sizes)
        padded = z.new_zeros((widest,) + tuple(z.shape[1:]))
        padded[: z.shape[0]] = z
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start: start + ctx.sizes[ctx.rank]], None


def gather_rows(z: Tensor, process_group="world") -> Tensor:
    """All ranks' ``z`` (n_r, ...) concatenated along dim 0 in rank order, differentiable.

    Every rank must call it (a collective). Gradients: see the module docstring; after
    DDP's averaging they equal the single-process gradient on the concatenated batch.

    Args:
        z: this rank's tensor; the other dims must match across ranks.
        process_group: a ``torch.distributed.ProcessGroup`` or "world".

    Example (in each of the DDP processes)::

        z_all = gaussreg.distributed.gather_rows(encoder(x))   # (sum of n_r, D)
    """
    check_group(process_group)
    if _compiling():
        return _gather_equal_rows(z, _group(process_group))
    return _GatherRows.apply(z, _group(process_group))


def maybe_gather(process_group, *tensors: Optional[Tensor]):
    """The tensors gathered over ``process_group`` (None entries stay None), or as given when it is None."""
    if process_group is None:
        return tensors
    check_group(process_group)
    return tuple(None if t is None else gather_rows(t, process_group) for t in tensors)


def broadcast_from_first(t: Tensor, process_group) -> Tensor:
    """A copy of the group's first rank's ``t`` on every rank (not differentiable).

    Random directions (sliced losses) must be the same on every rank for the global
    statistic to be one statistic; drawing them per rank with unsynchronised generators
    would silently mix different losses.
    """
    check_group(process_group)
    group = _group(process_group)
    if _compiling():  # the first block of an all-gather: no source rank to look up in the graph
        return funcol.all_gather_tensor(t.detach().contiguous(), 0, _traceable_group(group))[: t.shape[0]]
    source = 0 if group is None else dist.get_global_rank(group, 0)
    out = t.detach().contiguous().clone()
    dist.broadcast(out, src=source, group=group)
    return out


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        total = t.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank holds the same loss of the same total: the sum over ranks of their
        # gradients is world_size * dL/dt, which DDP's averaging turns back into dL/dt.
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def sum_over_ranks(t: Tensor, process_group="world") -> Tensor:
    """The sum over ranks of ``t`` (same shape on every rank), differentiable.

    For statistics that are sums of per-point terms (e.g. ``epps_pulley``'s cos/sin sums):
    reducing the sums gives the exact global statistic without gathering the points.
    Gradients follow the convention of ``gather_rows`` (equal to the single-process
    gradient after DDP's averaging).
    """
    check_group(process_group)
    if _compiling():  # gathered then summed: the gather's backward gives every rank the summed gradient
        group = _traceable_group(_group(process_group))
        parts = _all_gather_autograd(t.contiguous()[None], 0, group)
        # Added part by part rather than parts.sum(0), whose gradient is an expand: torch 2.11's
        # gather hands its gradient to reduce_scatter as it is, and gloo refuses a
        # non-contiguous one. unbind's gradient is a stack (contiguous).
        return functools.reduce(torch.add, parts.unbind(0))
    return _SumOverRanks.apply(t, _group(process_group))


def rank_and_size(process_group="world") -> Tuple[int, int]:
    """(this process's rank in the group, the group's size); constants under torch.compile."""
    check_group(process_group)
    group = _traceable_group(_group(process_group))
    return dist.get_rank(group), dist.get_world_size(group)


def total_count(n: int, device: torch.device, process_group="world") -> int:
    """The sum over ranks of n (under torch.compile: n times the world size, equal batches)."""
    check_group(process_group)
    group = _group(process_group)
    if _compiling():
        return n * dist.get_world_size(_traceable_group(group))
    count = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(count, group=group)
    return int(count.item())
