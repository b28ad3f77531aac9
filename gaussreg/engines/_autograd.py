"""Autograd pieces shared by the custom ops' backward registrations."""
from __future__ import annotations

import torch


class FirstOrderOnly(torch.autograd.Function):
    """Identity on a precomputed gradient whose own derivative is not implemented.

    Under ``create_graph=True`` a gradient computed by a compiled engine must not look
    differentiable with a silently missing Hessian term: differentiating through it raises
    instead. Graphs that only differentiate other terms twice keep working.
    ``apply(grad, what, *inputs)``: ``inputs`` are the points the gradient depends on (so
    the graph reaches this node), ``what`` names the loss in the error.
    """

    @staticmethod
    def forward(ctx, grad, what, *inputs):
        ctx.what = what
        return grad.clone()

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"gaussreg: second derivatives of {ctx.what} are not implemented "
                           "(a gradient of the loss was differentiated again)")


def first_order_only(grad: torch.Tensor, what: str, *inputs: torch.Tensor) -> torch.Tensor:
    """``grad`` as is, or wrapped so that differentiating it again raises (under create_graph)."""
    if not torch.is_grad_enabled():
        return grad
    return FirstOrderOnly.apply(grad, what, *inputs)
