"""All the diagnostics of one sample, as a dict and a printed table."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional, Sequence

import torch

from ._common import _points
from ._hz import henze_zirkler
from ._ks import ks_distances, ks_radii
from ._mardia import mardia
from ._projections import cramer_wold_index, projection_ks
from ._results import _Result


class Report(dict):
    """All diagnostics of one sample: a dict name -> result; ``str()`` is a table.

    Keys: "mardia", "mardia_standardized" (None when the covariance is singular),
    "ks_radii", "ks_distances", "henze_zirkler", "projection_ks", "cramer_wold".
    ``to_dict()`` / ``to_json()`` give plain values; ``n`` and ``dim`` are attributes.
    """

    def __init__(self, results: Dict[str, Optional[_Result]], n: int, dim: int):
        super().__init__(results)
        self.n, self.dim = n, dim

    def to_dict(self) -> Dict[str, Any]:
        out = {"n": self.n, "dim": self.dim}
        out.update({name: None if result is None else result.to_dict() for name, result in self.items()})
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def rows(self):
        """(statistic, value, p-value or "", what an N(0, I) sample gives) as strings."""
        n, dim = self.n, self.dim
        raw, std = self["mardia"], self.get("mardia_standardized")
        rows = [
            ("Mardia skewness b1 (raw)", f"{raw.skewness:.4g}", "", f"mean D(D+2)(D+4)/n = {dim * (dim + 2) * (dim + 4) / n:.4g}"),
            ("Mardia kurtosis b2 (raw)", f"{raw.kurtosis:.4g}", "", f"D(D+2) = {dim * (dim + 2)}"),
        ]
        if std is None:
            rows.append(("Mardia (standardized)", "singular covariance", "", "needs n > D"))
        else:
            rows += [("Mardia skewness (standardized)", f"{std.skewness:.4g}", f"{std.skewness_pvalue:.3g}", "p ~ U(0, 1)"),
                     ("Mardia kurtosis (standardized)", f"{std.kurtosis:.4g}", f"{std.kurtosis_pvalue:.3g}", "p ~ U(0, 1)")]
        hz, pks, cw = self["henze_zirkler"], self["projection_ks"], self["cramer_wold"]
        rows += [
            ("KS radii vs chi2_D", f"{self['ks_radii'].statistic:.4f}", "", f"mean about 0.87/sqrt(n) = {0.8687 / math.sqrt(n):.4f}"),
            ("l1 radii vs chi2_D", f"{self['ks_radii'].l1:.4g}", "", "-> 0"),
            ("KS distances vs chi2_D", f"{self['ks_distances'].statistic:.4f}", "", "O(1/sqrt(n))"),
            ("l1 distances vs chi2_D", f"{self['ks_distances'].l1:.4g}", "", "-> 0"),
            ("Henze-Zirkler", _near_one(hz.statistic), f"{hz.pvalue:.3g}", "p ~ U(0, 1)"),
            (f"KS of {len(pks.statistics)} projections (mean)", f"{pks.statistic:.4f}", "", f"about 0.87/sqrt(n) = {0.8687 / math.sqrt(n):.4f}"),
            (f"KS of {len(pks.statistics)} projections (max)", f"{pks.max:.4f}", "", ""),
            ("Cramer-Wold normality index", f"{cw.statistic:.4g}", "", "-> 0"),
        ]
        return rows

    def __str__(self) -> str:
        header = ("statistic", "value", "p-value", "N(0, I) sample")
        return f"n = {self.n}, D = {self.dim}\n" + format_table(header, self.rows())


def _near_one(value: float) -> str:
    """A statistic that sits at 1 for large D (Henze-Zirkler): its distance from 1 in three
    digits ("1 - 8.7e-06", "1 + 0.00116"), which "{:.4g}" would print as "1" for a Gaussian
    and a clearly non-Gaussian sample alike."""
    gap = value - 1.0
    if abs(gap) >= 0.01:
        return f"{value:.4g}"
    return "1" if gap == 0 else f"1 {'+' if gap > 0 else '-'} {abs(gap):.3g}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (columns padded to their widest cell), as the CLI prints it."""
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def report(z, *, num_projections: int = 32, generator: Optional[torch.Generator] = None) -> Report:
    """Every diagnostic of formulas §8 on one sample, as a ``Report`` (a dict that prints as a table).

    Args:
        z: points (n, D), n >= 2, float tensor or numpy array, finite.
        num_projections: directions for ``projection_ks``.
        generator: torch.Generator (CPU) for those directions.

    Returns:
        ``Report`` with "mardia", "mardia_standardized" (None if the covariance is singular),
        "ks_radii", "ks_distances", "henze_zirkler", "projection_ks", "cramer_wold".

    Example:
        >>> z = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
        >>> sorted(report(z))[:2]
        ['cramer_wold', 'henze_zirkler']
    """
    z = _points(z)
    z64 = z.to(torch.float64)
    n, dim = z.shape
    try:
        standardized = mardia(z64, standardize=True)
    except ValueError:
        standardized = None
    results = {
        "mardia": mardia(z64),
        "mardia_standardized": standardized,
        "ks_radii": ks_radii(z64),
        "ks_distances": ks_distances(z),
        "henze_zirkler": henze_zirkler(z64),
        "projection_ks": projection_ks(z64, num_projections, generator=generator),
        "cramer_wold": cramer_wold_index(z64),
    }
    return Report(results, n, dim)
