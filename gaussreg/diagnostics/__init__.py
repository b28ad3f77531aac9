"""Normality diagnostics for a batch of latents (formulas §8): is ``z`` a sample of N(0, I)?

Each statistic returns a small frozen result in the manner of ``scipy.stats``
(``statistic``, ``pvalue`` where a test exists), convertible with ``to_dict()`` /
``to_json()``:

- ``mardia(z)``: multivariate skewness and kurtosis, raw against N(0, I) or
  standardized with chi-squared / normal p-values;
- ``ks_radii(z)``, ``ks_distances(z)``: Kolmogorov-Smirnov statistic and l1 area of
  the radii ||z_i||^2 and of all n(n-1)/2 half squared distances against chi2_D (the
  quantities CDF attraction fits, formulas §1); the distances run in the compiled engine;
- ``henze_zirkler(z)``: the HZ test with its lognormal p-value; ``bhep(z, beta)``
  the raw BHEP statistic it is built from;
- ``projection_ks(z)``: KS statistics of random 1-D projections against N(0, 1);
- ``cramer_wold_index(z)``: the CWAE normality index from ``cw_distance``;
- ``report(z)``: all of the above, printed as a table.

Plots (matplotlib, drawn on ``matplotlib.figure.Figure`` objects, so no display or
pyplot state is needed): ``plot_cdfs`` (Duda's Fig. 1), ``plot_projections``,
``plot_scalar_products`` and ``plot_angles`` (his Fig. 2). Each takes ``ax=None`` and
returns ``(fig, ax)``.

Statistics are computed in float64 on z's device (the n' sorted distances in z's
precision, float32 or float64); z is never modified and needs no gradient.

>>> z = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
>>> print(report(z))                                  # doctest: +SKIP
"""
from __future__ import annotations

from ._hz import bhep, henze_zirkler, henze_zirkler_beta
from ._ks import ks_distances, ks_radii
from ._mardia import mardia
from ._plots import plot_angles, plot_cdfs, plot_projections, plot_scalar_products
from ._projections import cramer_wold_index, projection_ks
from ._report import Report, format_table, report
from ._results import BHEPResult, CramerWoldResult, HZResult, KSResult, MardiaResult, ProjectionKSResult

__all__ = [
    "MardiaResult", "KSResult", "HZResult", "BHEPResult", "ProjectionKSResult", "CramerWoldResult", "Report",
    "mardia", "ks_radii", "ks_distances", "henze_zirkler", "bhep", "projection_ks", "cramer_wold_index",
    "report", "plot_cdfs", "plot_projections", "plot_scalar_products", "plot_angles",
    "format_table", "henze_zirkler_beta",
]
