"""The result types of the diagnostics: frozen dataclasses, convertible to plain dicts and JSON."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

from torch import Tensor


def _plain(value):
    """A JSON-ready value: tensors and numpy scalars become Python numbers or lists."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class _Result:
    """Base of the named results: ``to_dict()`` and ``to_json()``."""

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict of plain Python values (JSON-ready)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``; NaN is never written (no field holds one)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class MardiaResult(_Result):
    """Mardia's multivariate skewness b1 and kurtosis b2 (formulas §8).

    ``standardized=False``: of the raw sample against N(0, I) (targets: b1 -> 0 with
    E b1 = D(D+2)(D+4)/n, b2 = D(D+2)); the p-values are then None (the raw statistics
    have no chi-squared law). ``standardized=True``: of S^{-1/2}(z - mean), with
    ``skewness_pvalue`` from n b1 / 6 ~ chi2_{D(D+1)(D+2)/6} (upper tail) and
    ``kurtosis_pvalue`` from (b2 - D(D+2)) / sqrt(8 D (D+2) / n) ~ N(0, 1) (two-sided).
    """

    skewness: float
    kurtosis: float
    skewness_pvalue: Optional[float]
    kurtosis_pvalue: Optional[float]
    standardized: bool
    n: int
    dim: int


@dataclasses.dataclass(frozen=True)
class KSResult(_Result):
    """``statistic``: sup |Fhat - F_D| over ``count`` values; ``l1``: mean |v_(k) - Q_D((k - 1/2)/count)|."""

    statistic: float
    l1: float
    count: int


@dataclasses.dataclass(frozen=True)
class HZResult(_Result):
    """Henze-Zirkler statistic, its lognormal p-value, the smoothing ``beta`` and whether S was singular."""

    statistic: float
    pvalue: float
    beta: float
    singular: bool


@dataclasses.dataclass(frozen=True)
class BHEPResult(_Result):
    """BHEP statistic of the raw sample against N(0, I) with smoothing ``beta``."""

    statistic: float
    beta: float


@dataclasses.dataclass(frozen=True)
class ProjectionKSResult(_Result):
    """KS statistics of 1-D projections against N(0, 1): ``statistic`` is their mean, ``max``
    the largest, ``statistics`` one per direction. Under N(0, I) each direction's statistic
    follows the one-sample Kolmogorov law (mean about 0.87 / sqrt(n))."""

    statistic: float
    max: float
    statistics: Tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class CramerWoldResult(_Result):
    """CWAE normality index ``statistic`` = d_cw^2 / ||N(0, I)||_cw^2 = 2 sqrt(pi (1 + gamma)) d_cw^2,
    with the squared distance ``distance`` and the smoothing ``gamma`` (formulas §5)."""

    statistic: float
    distance: float
    gamma: float
    kernel: str
