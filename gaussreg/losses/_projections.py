"""Random or given unit directions and the projections on them, shared by the sliced
losses (``sliced_wasserstein``, ``epps_pulley``)."""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import _checks
from ..distributed import broadcast_from_first


def direction_count(count, directions: Optional[Tensor]) -> int:
    """L, for the memory estimate made before the options are checked (unit_directions checks them)."""
    if isinstance(directions, Tensor) and directions.dim() == 2:
        return max(1, directions.shape[0])
    valid = isinstance(count, numbers.Integral) and not isinstance(count, bool) and count > 0
    return int(count) if valid else 1


def project(directions: Tensor, points: Tensor) -> Tensor:
    """(L, n) projections directions @ points^T, each direction's row contiguous, in the
    points' dtype: autocast is off here (it would make the matmul bfloat16/float16, and the
    losses compute in float32 or float64)."""
    with torch.autocast(device_type=points.device.type, enabled=False):
        return directions @ points.t()


def unit_directions(count_name: str, count, like: Tensor, generator: Optional[torch.Generator],
                    directions: Optional[Tensor], process_group=None) -> Tensor:
    """(L, D) unit rows in like's dtype and device: ``directions`` normalized, or L standard
    normal draws normalized (uniform on the sphere), drawn as reference.py draws them; under
    a process group, the first rank's. Held constant (detached)."""
    dim = like.shape[1]
    _checks.generator(generator, draws_on=like.device if directions is None else None)
    if directions is None:
        count = _checks.positive_int(count_name, count)
        raw = torch.randn(count, dim, generator=generator, dtype=like.dtype, device=like.device)
    else:
        if not isinstance(directions, Tensor) or not directions.is_floating_point() or directions.dim() != 2:
            raise ValueError("directions must be a 2-D floating tensor (L, D)")
        if directions.shape[1] != dim or directions.shape[0] < 1:
            raise ValueError(f"directions must have shape (L >= 1, {dim}), got {tuple(directions.shape)}")
        raw = directions.detach().to(device=like.device, dtype=like.dtype)
        _checks.finite("directions", raw)
    norms = raw.norm(dim=1, keepdim=True)
    _checks.require((norms > 0).all(), ValueError, "directions must not contain a zero row")
    unit = raw / norms
    if process_group is not None:
        unit = broadcast_from_first(unit, process_group)
    return unit
