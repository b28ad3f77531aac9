"""The Epps-Pulley moments custom op (formulas §7): per slice, the sums of cos(t_k u) and
sin(t_k u) over the n projections at K knots t_k = k delta, in float64, and their backward.
Compiled engines: ``csrc/*/epps_pulley.*``; the loss front is ``gaussreg.losses.epps_pulley``.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .. import _native
from ._autograd import eager_function, first_order_only

MAX_POINTS = 64  # csrc/common/epps_pulley.h kEppsPulleyMaxKnots


class Plan(NamedTuple):
    """What one Epps-Pulley call needs beyond z, from the sizes alone: the (S, K) cos and sin
    sums with their gradients, the (S, n) projections with theirs, and z's gradient. The
    engine itself has no workspace."""
    moments_bytes: int
    need_bytes: int


def plan(dtype: torch.dtype, slices: int, n: int, d: int, num_points: int) -> Plan:
    """The plan of S = ``slices`` directions' moments of n points in D = d at K = ``num_points`` knots."""
    moments = 2 * 2 * slices * num_points * 8  # cos and sin sums, float64, and their gradients
    projections = (2 * slices * n + n * d) * dtype.itemsize
    return Plan(moments, moments + projections)


def _check_moments_args(u: Tensor, num_points: int) -> None:
    module = _native.module_for(u.device)
    if module is None or not hasattr(module, "epps_pulley_forward"):
        raise RuntimeError(f"gaussreg::epps_pulley_moments: no compiled engine for {u.device}")
    if u.dtype not in (torch.float32, torch.float64) or u.dim() != 2 or not u.is_contiguous() or u.numel() == 0:
        raise ValueError(f"gaussreg::epps_pulley_moments: u must be a contiguous non-empty (S, n) float32/float64 "
                         f"tensor, got {u.dtype} {tuple(u.shape)}")
    if not 2 <= num_points <= MAX_POINTS:
        raise ValueError(f"gaussreg::epps_pulley_moments: num_points must be in [2, {MAX_POINTS}]")


@torch.library.custom_op("gaussreg::epps_pulley_moments", mutates_args=())
def moments_op(u: Tensor, num_points: int, delta: float) -> Tuple[Tensor, Tensor]:
    """(sum_i cos(k delta u_li), sum_i sin(k delta u_li)), each (S, K) float64."""
    return _moments(u, num_points, delta)


def _moments(u: Tensor, num_points: int, delta: float) -> Tuple[Tensor, Tensor]:
    """The op's body: checks its arguments, allocates the sums, calls the engine."""
    _check_moments_args(u, num_points)
    slices, n = u.shape
    cos_sums = _native.empty((slices, num_points), torch.float64, u.device, "epps_pulley")
    sin_sums = _native.empty((slices, num_points), torch.float64, u.device, "epps_pulley")
    module = _native.module_for(u.device)
    _native.launch(module.epps_pulley_forward, u.device, _native.dtype_code(u.dtype), slices, n, u.data_ptr(),
                   num_points, delta, cos_sums.data_ptr(), sin_sums.data_ptr())
    return cos_sums, sin_sums


@moments_op.register_fake
def _(u, num_points, delta):
    shape = (u.shape[0], num_points)
    return u.new_empty(shape, dtype=torch.float64), u.new_empty(shape, dtype=torch.float64)


@torch.library.custom_op("gaussreg::epps_pulley_moments_backward", mutates_args=())
def moments_backward_op(u: Tensor, grad_cos: Tensor, grad_sin: Tensor, num_points: int, delta: float) -> Tensor:
    """dL/du from dL/d(cos sums) and dL/d(sin sums)."""
    return _moments_backward(u, grad_cos, grad_sin, num_points, delta)


def _moments_backward(u: Tensor, grad_cos: Tensor, grad_sin: Tensor, num_points: int, delta: float) -> Tensor:
    """The backward op's body."""
    _check_moments_args(u, num_points)
    slices, n = u.shape
    grad_u = _native.empty((slices, n), u.dtype, u.device, "epps_pulley")
    grad_cos = grad_cos.to(torch.float64).contiguous()
    grad_sin = grad_sin.to(torch.float64).contiguous()
    module = _native.module_for(u.device)
    _native.launch(module.epps_pulley_backward, u.device, _native.dtype_code(u.dtype), slices, n, u.data_ptr(),
                   num_points, delta, grad_cos.data_ptr(), grad_sin.data_ptr(), grad_u.data_ptr())
    return grad_u


@moments_backward_op.register_fake
def _(u, grad_cos, grad_sin, num_points, delta):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output):
    u, num_points, delta = inputs
    ctx.num_points, ctx.delta = num_points, delta
    ctx.save_for_backward(u)


def _backward(ctx, grad_cos, grad_sin, backward_op=moments_backward_op):
    """The moments' registered autograd formula; ``backward_op`` computes dL/du (the op, which
    AOT autograd traces, or eagerly its body)."""
    (u,) = ctx.saved_tensors
    zeros = None
    if grad_cos is None or grad_sin is None:
        zeros = torch.zeros((u.shape[0], ctx.num_points), dtype=torch.float64, device=u.device)
    grad = backward_op(u, zeros if grad_cos is None else grad_cos, zeros if grad_sin is None else grad_sin,
                       ctx.num_points, ctx.delta)
    return first_order_only(grad, "epps_pulley", u), None, None


def _eager_backward(ctx, grad_cos, grad_sin):
    return _backward(ctx, grad_cos, grad_sin, _moments_backward)


torch.library.register_autograd("gaussreg::epps_pulley_moments", _backward, setup_context=_setup_context)
_MomentsFn = eager_function(moments_op, _moments, _setup_context, _eager_backward, outputs=2, differentiable=2)


def moments(u: Tensor, num_points: int, delta: float) -> Tuple[Tensor, Tensor]:
    """The (S, K) float64 sums of cos(t_k u) and sin(t_k u) over each slice's n projections
    (eagerly without the op's dispatch, see ``_autograd.eager_function``)."""
    return _MomentsFn.call(u, num_points, delta)
