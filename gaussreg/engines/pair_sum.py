"""The pair-sum custom op shared by the kernel-sum losses (formulas §3, 4, 5).

``pair_sum(x, y, ...)`` returns, in float64, ``sum k(||x_i - y_j||^2)`` over all pairs
(i, j) of x and y, or over the unordered pairs i < j of x with itself when ``y`` is None,
for the kernel ``kind`` of the compiled stem (gaussian_l2, mmd, cramer_wold). The
compiled forward computes the gradient in the same pass when an input requires it
(each pair's distance and kernel are evaluated once), so backward is a scaling.

It is a ``torch.library.custom_op`` with a fake implementation, so torch.compile can
trace it, and an autograd formula registered on it; eagerly the same body and formula run
in an ``autograd.Function`` (``_PairSumFn``, see ``_autograd.eager_function``). Second
derivatives are refused with an error rather than returned wrong (first derivatives under
create_graph=True work).

Under a process group, ``pair_sum(..., process_group=)`` takes the gathered points and
each rank sums only its share of the pairs (``pair_shares``); the shares' sums are
all-reduced. Every pair is computed by exactly one rank, and the gradients of the shares
reach every point through the gather's backward (an all-reduce of the gathered gradient).
"""
from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _native, distributed
from ._autograd import eager_function, first_order_only

# Kernel kinds of each stem, as the enums in csrc/common/<stem>.h number them.
GAUSS_EXP_SUM, GAUSS_PER_POINT = 0, 1
MMD_IMQ, MMD_RBF = 0, 1
CW_APPROX, CW_EXACT = 0, 1


class Plan(NamedTuple):
    """What one pair sum needs beyond its inputs, from the sizes alone: the engine's
    workspace and the gradient buffers the forward fills for the backward."""
    workspace_bytes: int
    gradient_bytes: int

    @property
    def need_bytes(self) -> int:
        return self.workspace_bytes + self.gradient_bytes


def plan(stem: str, device: torch.device, dtype: torch.dtype, n: int, m: int, d: int,
         grad_copies: int = 1) -> Plan:
    """The plan of ``stem``'s pair sum of x (n points) against y (m points; m = 0 for x with
    itself) in D = d, with ``grad_copies`` sets of gradient buffers for the n + m points (a
    loss of several pair sums keeps each one's). The op sizes its workspace with it too."""
    threads = _native.num_threads() if device.type == "cpu" else 1
    return Plan(_workspace_bytes(stem, device, dtype, n, m, d, threads), grad_copies * (n + m) * d * dtype.itemsize)


# Cached: a function of the sizes alone, asked for by the memory check and by every pair sum.
@functools.lru_cache(maxsize=256)
def _workspace_bytes(stem: str, device: torch.device, dtype: torch.dtype, n: int, m: int, d: int, threads: int) -> int:
    module = _native.module_for(device)
    return int(getattr(module, f"{stem}_workspace_bytes")(_native.dtype_code(dtype), n, m, d, threads))


@torch.library.custom_op("gaussreg::pair_sum", mutates_args=())
def pair_sum_op(x: Tensor, y: Optional[Tensor], px: Optional[Tensor], py: Optional[Tensor], stem: str, kind: int,
                params: List[float], grad_x: bool, grad_y: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(the float64 pair sum, G for x or an empty tensor, H for y or an empty tensor): the
    raw gradients the backward scales (see ``_wanted``)."""
    return _forward(x, y, px, py, stem, kind, params, grad_x, grad_y)


def _forward(x: Tensor, y: Optional[Tensor], px: Optional[Tensor], py: Optional[Tensor], stem: str, kind: int,
             params: List[float], grad_x: bool, grad_y: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The op's body: checks its arguments, allocates the outputs and the workspace, calls the engine."""
    module = _native.module_for(x.device)
    _check_op_args(module, x, y, px, py)
    device, dtype = x.device, x.dtype
    n, d = x.shape
    m = 0 if y is None else y.shape[0]
    what = f"{stem} pair sum"
    ws_bytes = plan(stem, device, dtype, n, m, d).workspace_bytes
    value = torch.zeros((), dtype=torch.float64, device=device)
    want_x, want_y = _wanted(x, y, grad_x, grad_y)
    out_x = _native.empty((n, d) if want_x else (0,), dtype, device, what)
    out_y = _native.empty((m, d) if want_y else (0,), dtype, device, what)
    args = [
        _native.dtype_code(dtype), kind,
        x.data_ptr(), n, d, x.stride(0), x.stride(1),
        0 if y is None else y.data_ptr(), m, 0 if y is None else y.stride(0), 0 if y is None else y.stride(1),
        list(params),
        0 if px is None else px.data_ptr(), 0 if py is None else py.data_ptr(),
        value.data_ptr(),
        out_x.data_ptr() if want_x else 0,
        out_y.data_ptr() if want_y else 0,
    ]
    with _native.workspace(ws_bytes, device, what) as workspace:
        _native.launch(getattr(module, f"{stem}_forward"), device, *args, workspace.data_ptr(), ws_bytes)
    return value, out_x, out_y


def _check_op_args(module, x: Tensor, y: Optional[Tensor], px: Optional[Tensor], py: Optional[Tensor]) -> None:
    """The op's own contract (the loss front ends guarantee it; direct callers get an error)."""
    if module is None:
        raise RuntimeError(f"gaussreg::pair_sum: no compiled backend for {x.device} "
                           f"({_native.backends()[x.device.type]['detail'] if x.device.type in ('cpu', 'cuda') else 'unsupported device'})")
    if x.dtype not in (torch.float32, torch.float64) or x.dim() != 2:
        raise ValueError(f"gaussreg::pair_sum: x must be a 2-D float32/float64 tensor, got {x.dtype} {tuple(x.shape)}")
    if y is not None and (y.dtype != x.dtype or y.dim() != 2 or y.shape[1] != x.shape[1] or y.device != x.device):
        raise ValueError("gaussreg::pair_sum: y must match x in dtype, device and D")
    for name, p, count in (("px", px, x.shape[0]), ("py", py, None if y is None else y.shape[0])):
        if p is None:
            continue
        if p.dtype != x.dtype or p.device != x.device or not p.is_contiguous() or p.dim() != 1 or \
                (count is not None and p.shape[0] != count):
            raise ValueError(f"gaussreg::pair_sum: {name} must be a contiguous 1-D tensor with one entry per point, "
                             f"x's dtype and device")


def _wanted(x: Tensor, y: Optional[Tensor], grad_x: bool, grad_y: bool) -> Tuple[bool, bool]:
    """Which raw gradients the kernels compute: G always when any is asked (the engines
    accumulate the y side along the x side), H only for a cross sum that asks for it."""
    want_x = grad_x or grad_y
    return want_x, want_x and y is not None and grad_y


@pair_sum_op.register_fake
def _(x, y, px, py, stem, kind, params, grad_x, grad_y):
    n, d = x.shape
    want_x, want_y = _wanted(x, y, grad_x, grad_y)
    value = x.new_empty((), dtype=torch.float64)
    out_x = x.new_empty((n, d) if want_x else (0,))
    out_y = x.new_empty((y.shape[0], d) if want_y else (0,))
    return value, out_x, out_y


def _setup_context(ctx, inputs, output):
    x, y, px, py, stem, kind, params, want_grad_x, want_grad_y = inputs
    _, grad_x, grad_y = output
    ctx.stem = stem
    ctx.want = (want_grad_x or want_grad_y, y is not None and want_grad_y)
    ctx.has_y = y is not None
    ctx.save_for_backward(grad_x, grad_y)
    ctx.mark_non_differentiable(grad_x, grad_y)
    ctx.set_materialize_grads(False)  # no zero (n, D) gradients for the outputs that have none
    # The points, so that a create_graph backward can tie the gradient to them (see _autograd.FirstOrderOnly).
    ctx.inputs_for_graph = tuple(t for t in (x, y) if t is not None and t.requires_grad)


def _backward(ctx, g_value, _g_grad_x, _g_grad_y):
    if g_value is None:
        return None, None, None, None, None, None, None, None, None
    grad_x, grad_y = ctx.saved_tensors
    if not ctx.want[0] or (ctx.has_y and ctx.needs_input_grad[1] and not ctx.want[1]):
        raise RuntimeError(f"gaussreg: {ctx.stem} pair sum was computed without the gradient now asked for "
                           "(the input did not require grad at forward time)")
    # d(sum k)/dx_i = sum_j k'(t_ij) * 2 (x_i - y_j): the kernels return the sum without the 2.
    scale = (2.0 * g_value).to(grad_x.dtype)
    # create_graph=True: keep the graph honest about what it lacks
    what = f"the {ctx.stem} losses"
    grad_x = first_order_only(grad_x, what, *ctx.inputs_for_graph)
    if ctx.want[1]:
        grad_y = first_order_only(grad_y, what, *ctx.inputs_for_graph)
    gx = grad_x * scale if ctx.needs_input_grad[0] else None
    gy = grad_y * scale if ctx.want[1] else None
    return gx, gy, None, None, None, None, None, None, None


torch.library.register_autograd("gaussreg::pair_sum", _backward, setup_context=_setup_context)


_PairSumFn = eager_function(pair_sum_op, _forward, _setup_context, _backward, outputs=3)


def pair_sum(stem: str, kind: int, params: Sequence[float], x: Tensor, y: Optional[Tensor] = None,
             px: Optional[Tensor] = None, py: Optional[Tensor] = None, *, process_group=None) -> Tensor:
    """Float64 pair sum of ``stem``'s kernel ``kind`` (see module docstring), differentiable in x and y.

    With ``process_group``, x and y are the gathered points of every rank (the same on
    each); this rank computes its ``pair_shares`` and the result is their sum over the
    ranks, so each pair is evaluated once in the group.
    """
    if process_group is None:
        return _pair_sum_here(stem, kind, params, x, y, px, py)
    rank, world = distributed.rank_and_size(process_group)
    if world == 1:  # nothing to split or add up
        return _pair_sum_here(stem, kind, params, x, y, px, py)
    # Zero, but on the autograd graph whenever x is: a rank without pairs (tiny batches)
    # must still join the backward's collective of sum_over_ranks.
    share = x[:0].sum(dtype=torch.float64)
    for piece in pair_shares(x.shape[0], None if y is None else y.shape[0], world)[rank]:
        rows, cols = slice(piece.row_start, piece.row_stop), slice(piece.col_start, piece.col_stop)
        if piece.is_triangle:  # the unordered pairs inside one block of x
            share = share + _pair_sum_here(stem, kind, params, x[rows], None, _part(px, rows), None)
        else:
            other = x if y is None else y
            other_p = px if y is None else py
            share = share + _pair_sum_here(stem, kind, params, x[rows], other[cols], _part(px, rows),
                                           _part(other_p, cols))
    return distributed.sum_over_ranks(share, process_group)


def _part(p: Optional[Tensor], rows: slice) -> Optional[Tensor]:
    return None if p is None else p[rows]


def _pair_sum_here(stem: str, kind: int, params: Sequence[float], x: Tensor, y: Optional[Tensor],
                   px: Optional[Tensor], py: Optional[Tensor]) -> Tensor:
    grad_on = torch.is_grad_enabled()
    grad_x = grad_on and x.requires_grad
    grad_y = grad_on and y is not None and y.requires_grad
    if grad_y and not grad_x:  # the engines compute the y side only along the x side: swap roles
        x, y, px, py, grad_x, grad_y = y, x, py, px, True, False
    return _PairSumFn.call(x, y, px, py, stem, kind, [float(p) for p in params], grad_x, grad_y)


class Piece(NamedTuple):
    """Rows [row_start, row_stop) of x against points [col_start, col_stop) of y (or of x
    itself for a self sum); ``is_triangle``: the unordered pairs inside the rows only."""
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int
    is_triangle: bool = False

    def pairs(self) -> int:
        rows = self.row_stop - self.row_start
        return rows * (rows - 1) // 2 if self.is_triangle else rows * (self.col_stop - self.col_start)


def pair_shares(n: int, m: Optional[int], world: int) -> List[List[Piece]]:
    """Each rank's pieces of the pairs of n points with themselves (m None: the n(n-1)/2
    unordered pairs) or against m points (all n m pairs); every pair in exactly one piece.

    A cross sum gives rank r the r-th of ``world`` near-equal row blocks against all m
    points. A self sum cuts the rows into 2 world near-equal blocks; rank r takes blocks r
    and 2 world - 1 - r, each as its triangle plus its rows against every later point.
    A block's pairs shrink linearly with its position, so the two blocks' counts add up to
    n(n - 1) / (2 world) give or take one block's rows, whatever the local batch sizes.
    Pieces without pairs are left out. Depends on the sizes alone (constant under compile).
    """
    if m is not None:
        edges = _edges(n, world)
        return [[Piece(edges[r], edges[r + 1], 0, m)] if edges[r + 1] > edges[r] and m > 0 else []
                for r in range(world)]
    edges = _edges(n, 2 * world)
    shares = []
    for r in range(world):
        pieces = []
        for block in (r, 2 * world - 1 - r):
            start, stop = edges[block], edges[block + 1]
            if stop - start >= 2:
                pieces.append(Piece(start, stop, start, stop, is_triangle=True))
            if stop > start and n > stop:
                pieces.append(Piece(start, stop, stop, n))
        shares.append(pieces)
    return shares


def _edges(n: int, parts: int) -> List[int]:
    return [k * n // parts for k in range(parts + 1)]
