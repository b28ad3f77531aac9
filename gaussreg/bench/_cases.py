"""What a family script declares: :class:`Case` (one quantity to benchmark over n: its input
builder, the implementations compared, the FLOP and byte count of one call, the oracle of the
correctness checks) and :class:`Impl` (one implementation of it), with the few helpers that run
an ``Impl`` on a case's inputs -- forward+backward, forward-only under ``torch.no_grad``, the
value and gradients of one call -- which the measurement (``_harness``) and the memory worker
(``_memory``) share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import floors


@dataclass
class Impl:
    """One implementation of a case.

    Attributes:
        name: short label (table, CSV, plot legend).
        fn: ``fn(*inputs) -> 0-dim loss tensor``; inputs come from ``Case.make_inputs``.
        max_n: sizes above it are not run (recorded as ``skipped`` with ``max_n_note``).
        max_n_note: why, e.g. "n > --ref-max-n 1024 (O(n^2 D) memory and time)".
        bytes_needed: ``(n, d, itemsize) -> bytes`` estimate of its working memory; a size
            whose estimate exceeds ``--mem-fraction`` of the available memory is skipped
            (so an O(n^2 D) implementation is not run into the kernel's OOM killer).
        unavailable: None when usable, else why not (e.g. "pykeops is not installed").
        oracle_only: run only as the correctness oracle, never timed (set by ``--impls``).
        details: ``fn(*inputs) -> dict`` of what the implementation reports about one call
            (e.g. the fraction of pairs a selection sorted), run once per size, untimed,
            and written to the row's ``details`` field.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    max_n: Optional[int] = None
    max_n_note: str = ""
    bytes_needed: Optional[Callable[[int, int, int], float]] = None
    unavailable: Optional[str] = None
    oracle_only: bool = False
    details: Optional[Callable[..., dict]] = None


@dataclass
class Case:
    """One quantity to benchmark over n.

    Attributes:
        name: short label, also used by ``--cases``.
        make_inputs: ``(n, d, dtype, device, seed) -> tuple of tensors``; tensors that should
            receive gradients have ``requires_grad=True``. Different seeds give the rotated sets.
        impls: the implementations compared.
        cost: ``(n, d, itemsize, backward) -> floors.Cost(flops, bytes)`` of one call
            (forward+backward when ``backward``), or None for no FLOP/s and floor columns.
        oracle: name of the impl that the float64 small-case check compares against.
        size_oracles: impl names tried in order for the float64 run at each timed size.
        gate_rtol: tolerance of the float64 small-case check (value relative to the
            oracle's value, gradients norm-wise relative).
        description: one line printed above the case.
    """

    name: str
    make_inputs: Callable[[int, int, torch.dtype, torch.device, int], Tuple[torch.Tensor, ...]]
    impls: List[Impl]
    cost: Optional[Callable[[int, int, int, bool], "floors.Cost"]] = None
    oracle: str = "reference"
    size_oracles: Sequence[str] = ("reference",)
    gate_rtol: float = 1e-9
    description: str = ""


def _leaves(inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def _clear_grads(inputs: Sequence[torch.Tensor]) -> None:
    for t in _leaves(inputs):
        t.grad = None


def _forward_backward(impl: Impl, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    loss = impl.fn(*inputs)
    if _leaves(inputs):
        loss.backward()
    return loss


def _forward_only(impl: Impl, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return impl.fn(*inputs)


def _value_and_grads(impl: Impl, inputs: Sequence[torch.Tensor]) -> Tuple[float, List[torch.Tensor]]:
    _clear_grads(inputs)
    loss = _forward_backward(impl, inputs)
    value = float(loss.detach())
    grads = [t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t) for t in _leaves(inputs)]
    _clear_grads(inputs)
    return value, grads
