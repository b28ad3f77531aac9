"""The segmented-sort custom ops behind formulas §2, 6 and 7: many independent sorts of n values.

A segment is one row of a contiguous (S, n) tensor: a column of z (passed as z^T), or
one direction's projections (computed as theta @ z^T). Two ops:

- ``gaussreg::sorted_gaps(values, targets, torus, p, want_sorted_slope)`` ranks every
  segment and returns, in float64, ``sum_{s,r} |v_(r)s - t_rs|^p`` (the wrapped residual
  on the torus), with the slope d|e|^p/de at each value's own position (the backward is
  one multiply) and, when asked, the same slope by rank (the gradient of per-segment
  targets such as a prior sample's sorted projections). ``targets`` is (n,) shared by all
  segments, or (S, n).
- ``gaussreg::segment_counts(values)``: #{i' : v_i' <= v_i} per value (int64), ties
  counted together: the empirical CDF of formulas §7 at the sample itself.

Both are ``torch.library.custom_op``s with fake implementations, so torch.compile traces
them; eagerly ``sorted_gaps`` runs the op's body and autograd formula in an
``autograd.Function`` (``_autograd.eager_function``). The engines are
``csrc/cpu/segmented.cpp`` and ``csrc/cuda/segmented.cu``.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .. import _native
from ._autograd import eager_function, first_order_only

TARGETS_SHARED, TARGETS_PER_SEGMENT = 0, 1  # csrc/common/segmented.h SegmentTargets


def supported(device: torch.device) -> bool:
    module = _native.module_for(device)
    return module is not None and hasattr(module, "segmented_forward")


class Plan(NamedTuple):
    """What sorting (segments, n) values needs, from the sizes alone: the engine's workspace,
    and with it the values' contiguous copy and the slopes kept for the backward."""
    workspace_bytes: int
    need_bytes: int


def plan(device: torch.device, dtype: torch.dtype, segments: int, n: int, sorted_slope: bool = False) -> Plan:
    """The plan of one ``sorted_gaps`` (or ``segment_counts``) call on (segments, n) values;
    ``sorted_slope``: the slope by rank is kept too. The ops size their workspace with it."""
    module = _native.module_for(device)
    workspace = int(_native.launch(module.segmented_workspace_bytes, device, _native.dtype_code(dtype), segments, n))
    values = segments * n * dtype.itemsize
    return Plan(workspace, workspace + values * (3 if sorted_slope else 2))


def _check_values(op: str, values: Tensor) -> None:
    if not supported(values.device):
        raise RuntimeError(f"gaussreg::{op}: no compiled engine for {values.device}")
    if values.dtype not in (torch.float32, torch.float64) or values.dim() != 2 or not values.is_contiguous() \
            or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"gaussreg::{op}: values must be a contiguous non-empty (segments, n) float32/float64 "
                         f"tensor, got {values.dtype} {tuple(values.shape)}")


def _check_targets(values: Tensor, targets: Tensor, p: int) -> int:
    segments, n = values.shape
    if targets.dtype != values.dtype or targets.device != values.device or not targets.is_contiguous():
        raise ValueError("gaussreg::sorted_gaps: targets must be contiguous, with the values' dtype and device")
    if targets.shape == (n,):
        kind = TARGETS_SHARED
    elif targets.shape == (segments, n):
        kind = TARGETS_PER_SEGMENT
    else:
        raise ValueError(f"gaussreg::sorted_gaps: targets must have shape ({n},) or ({segments}, {n}), "
                         f"got {tuple(targets.shape)}")
    if p not in (1, 2):
        raise ValueError(f"gaussreg::sorted_gaps: p must be 1 or 2, got {p}")
    return kind


def _workspace_bytes(values: Tensor) -> int:
    return plan(values.device, values.dtype, *values.shape).workspace_bytes


@torch.library.custom_op("gaussreg::sorted_gaps", mutates_args=())
def sorted_gaps_op(values: Tensor, targets: Tensor, torus: bool, p: int,
                   want_sorted_slope: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(sum |e|^p in float64, slope by position (S, n), slope by rank (S, n) or empty)."""
    return _sorted_gaps(values, targets, torus, p, want_sorted_slope)


def _sorted_gaps(values: Tensor, targets: Tensor, torus: bool, p: int,
                 want_sorted_slope: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The op's body: checks its arguments, allocates the outputs and the workspace, calls the engine."""
    _check_values("sorted_gaps", values)
    kind = _check_targets(values, targets, p)
    segments, n = values.shape
    device, what = values.device, "sorted_gaps"
    ws_bytes = _workspace_bytes(values)
    value = torch.zeros((), dtype=torch.float64, device=device)
    slope = _native.empty((segments, n), values.dtype, device, what)
    sorted_slope = _native.empty((segments, n) if want_sorted_slope else (0,), values.dtype, device, what)
    module = _native.module_for(device)
    with _native.workspace(ws_bytes, device, what) as workspace:
        _native.launch(module.segmented_forward, device, _native.dtype_code(values.dtype), segments, n,
                       values.data_ptr(), torus, kind, targets.data_ptr(), p, value.data_ptr(), slope.data_ptr(),
                       sorted_slope.data_ptr() if want_sorted_slope else 0, workspace.data_ptr(), ws_bytes)
    return value, slope, sorted_slope


@sorted_gaps_op.register_fake
def _(values, targets, torus, p, want_sorted_slope):
    value = values.new_empty((), dtype=torch.float64)
    sorted_shape = tuple(values.shape) if want_sorted_slope else (0,)
    return value, torch.empty_like(values), values.new_empty(sorted_shape)


def _setup_context(ctx, inputs, output):
    values, targets, _torus, p, want_sorted_slope = inputs
    _, slope, sorted_slope = output
    ctx.targets_per_segment = targets.dim() == 2
    ctx.want_sorted_slope = want_sorted_slope
    ctx.p = p
    ctx.save_for_backward(slope, sorted_slope, values, targets)
    ctx.mark_non_differentiable(slope, sorted_slope)
    ctx.set_materialize_grads(False)  # no zero gradients of the slopes' shapes


def _backward(ctx, g_value, _g_slope, _g_sorted_slope):
    if g_value is None:
        return None, None, None, None, None
    slope, sorted_slope, values, targets = ctx.saved_tensors
    g = g_value.to(slope.dtype)
    if ctx.p == 2:  # the slope 2e depends on the values and the targets: its derivative is not provided
        what = "the sorted-gap losses with p = 2 (coordinate_cdf_attraction, sliced_wasserstein)"
        # Both as inputs: a gradient that depends only on differentiable targets (values held
        # constant) must refuse a second derivative too, not come back as a constant.
        slope = first_order_only(slope, what, values, targets)
        sorted_slope = first_order_only(sorted_slope, what, values, targets)
    # p = 1: the slope sgn(e) is piecewise constant, so its derivative is 0 almost everywhere.
    grad_values = slope * g if ctx.needs_input_grad[0] else None
    grad_targets = None
    if ctx.needs_input_grad[1]:
        if not (ctx.targets_per_segment and ctx.want_sorted_slope):
            raise RuntimeError("gaussreg::sorted_gaps: the targets' gradient needs per-segment targets and "
                               "want_sorted_slope=True at forward time")
        grad_targets = sorted_slope * (-g)
    return grad_values, grad_targets, None, None, None


torch.library.register_autograd("gaussreg::sorted_gaps", _backward, setup_context=_setup_context)
_SortedGapsFn = eager_function(sorted_gaps_op, _sorted_gaps, _setup_context, _backward, outputs=3)


@torch.library.custom_op("gaussreg::segment_counts", mutates_args=())
def segment_counts_op(values: Tensor) -> Tensor:
    """counts[s, i] = #{i' : values[s, i'] <= values[s, i]}, int64 (S, n)."""
    _check_values("segment_counts", values)
    segments, n = values.shape
    device, what = values.device, "segment_counts"
    ws_bytes = _workspace_bytes(values)
    counts = _native.empty((segments, n), torch.int64, device, what)
    module = _native.module_for(device)
    with _native.workspace(ws_bytes, device, what) as workspace:
        _native.launch(module.segmented_counts, device, _native.dtype_code(values.dtype), segments, n,
                       values.data_ptr(), counts.data_ptr(), workspace.data_ptr(), ws_bytes)
    return counts


@segment_counts_op.register_fake
def _(values):
    return values.new_empty(values.shape, dtype=torch.int64)


def sorted_gaps(values: Tensor, targets: Tensor, *, torus: bool = False, p: int = 2) -> Tensor:
    """sum over segments and ranks of |v_(r) - t_r|^p in float64, differentiable in values
    and (per-segment targets) in targets."""
    want_sorted_slope = targets.dim() == 2 and targets.requires_grad and torch.is_grad_enabled()
    return _SortedGapsFn.call(values, targets, torus, p, want_sorted_slope)
