"""The compiled engines' Python side: one module per engine, named like its C++/CUDA sources.

- ``cdf_attraction``: the ranked pair distances of ``cdf_attraction`` (``gaussreg::cdf_pairs``)
  and the key bins of ``diagnostics.ks_distances`` (``csrc/*/cdf_attraction.*``).
- ``pair_sum``: kernel sums over point pairs for ``gaussian_l2``, ``mmd`` and ``cw_distance``
  (``gaussreg::pair_sum``, ``csrc/*/pair_sum.*`` and one file per kernel).
- ``segmented``: per-segment sorts against targets for the sliced, coordinate and GMM losses
  (``gaussreg::sorted_gaps``, ``csrc/*/segmented.*``).
- ``epps_pulley``: the characteristic-function moments of ``epps_pulley``.

Each wraps its compiled entry points as ``torch.library`` custom ops (with fake
implementations for ``torch.compile``) and has a ``plan(...) -> Plan`` that says from the
sizes alone what a call needs: its workspace and the memory the loss front checks before
any copy (for ``cdf_attraction`` also the sort passes and the quantile source). The ops
size their workspace with the same ``plan``. The loss fronts in ``gaussreg.losses`` walk
check -> gather -> plan (memory check) -> op; this package is the only Python that
imports ``gaussreg._native``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _native
from .._native import backends  # noqa: F401  (gaussreg.backends(): which compiled modules are built)


def use_native(device: torch.device, backend: str, what: str, entry: Optional[str] = None) -> bool:
    """Whether loss ``what`` runs on its compiled engine (``entry``: the compiled function it
    needs) on ``device`` for ``backend`` "auto", "native" or "reference"; "native" without
    one raises, naming why it is missing."""
    return _native.use_native(device, backend, what, entry=entry)


def check_fits(nbytes: int, device: torch.device, what: str, option: str = "", floor: Optional[tuple] = None) -> None:
    """MemoryError naming ``nbytes`` when a plan's need cannot fit on ``device`` (``option``:
    the argument that lowers it; ``floor``: (bytes, why) that no option lowers)."""
    _native.check_fits(nbytes, device, what, option, floor)
