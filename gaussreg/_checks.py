"""Input validation shared by every loss (docs/formulas.md, "Inputs and errors").

Errors name the argument and what was expected: TypeError for a wrong kind of object or
dtype, ValueError for a wrong shape, size, value or device.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def points(name: str, value, *, min_rows: int = 2, min_dim: int = 1) -> torch.Tensor:
    """Check a point tensor: 2-D, floating, at least ``min_rows`` rows and ``min_dim`` columns."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, D), got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), "
                        f"got dtype {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor of shape (n, D), got shape {tuple(value.shape)}")
    n, d = value.shape
    if n < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} points (rows) for its pairs, got n = {n}")
    if d < min_dim:
        raise ValueError(f"{name} needs at least {min_dim} dimension(s) (columns), got D = {d}")
    return value


def same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """All tensors on one device; returns it."""
    present = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"inputs must be on the same device, got {where}")
    return next(iter(devices))


def positive_int(name: str, value, minimum: int = 1) -> int:
    """A count: an integer (numpy's too, not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def power(value) -> int:
    """The p of a |residual|^p loss: 1 or 2 (also 2.0 or a numpy integer); the compiled ops take an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {value!r}")
    return int(value)


def generator(value, draws_on: Optional[torch.device] = None) -> Optional[torch.Generator]:
    """None or a torch.Generator; when it will draw on ``draws_on``, a generator of that
    device's type (torch would otherwise fail inside the draw with a message naming neither
    the argument nor the remedy)."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(value).__name__}")
    if value is not None and draws_on is not None and value.device.type != torch.device(draws_on).type:
        raise ValueError(f"generator is on {value.device} but draws on {draws_on}: "
                         f"pass torch.Generator(device={str(draws_on)!r})")
    return value


def same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same dimension D, "
                         f"got {a.shape[1]} and {b.shape[1]}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 or float64: half-precision inputs are computed in float32 (docs/formulas.md)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def compiling() -> bool:
    """True while torch.compile traces: checks must then stay in the graph (no Python branch on data)."""
    return torch.compiler.is_compiling()


def capturing() -> bool:
    """True while a CUDA graph captures the current stream: no host read of device data then."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def require(condition: torch.Tensor, error: type, message: str) -> None:
    """Raise ``error(message)`` unless the 0-dim bool tensor ``condition`` holds.

    Eagerly this reads the flag (one reduction, one sync on CUDA). Under torch.compile the
    check becomes an in-graph assertion, so a compiled model keeps it without a graph
    break; it then fails as a RuntimeError carrying the same message. While a CUDA graph
    captures, it becomes a device-side assertion as well (a host read would end the
    capture), which every replay checks.
    """
    if compiling() or capturing():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise error(message)


def finite(name: str, value: torch.Tensor) -> None:
    """Reject NaN/Inf once per call (one reduction on the tensor's device)."""
    if value.numel() == 0:  # nothing to scan (and amax has no identity on an empty tensor)
        return
    if not (compiling() or capturing()) and math.isfinite(float(value.detach().sum())):
        # A finite sum has no NaN or Inf among its terms (NaN and +-Inf propagate, Inf - Inf
        # is NaN): one reduction and one read, 4 us at (64, 64) where the exact check below
        # takes 27 us. A sum that overflows is checked exactly.
        return
    # max and min propagate NaN and expose +/-Inf: two plain reductions instead of
    # isfinite's elementwise passes (5x cheaper on a (4096, 64) batch).
    extremes = torch.stack((value.detach().amax(), value.detach().amin()))
    require(torch.isfinite(extremes).all(), ValueError,
            f"{name} contains NaN or Inf values; the loss would be NaN. "
            "Check the encoder output (e.g. torch.isfinite(z).all(dim=1)) before the loss")


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}")
    value = float(value)
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def no_grad_option(name: str, value: torch.Tensor) -> None:
    """Options such as per-point sigma are held constant: refuse a tensor that asks for a gradient."""
    if value.requires_grad:
        raise ValueError(f"{name} is held constant (no gradient flows to it); pass {name}.detach()")
