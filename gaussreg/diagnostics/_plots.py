"""Duda's figures for a sample: empirical CDFs of radii, distances, projections, scalar
products and angles against N(0, I)'s (matplotlib ``Figure`` objects, no pyplot state)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _checks
from ..targets import chi2_quantiles
from ._common import _chi2_cdf, _generator, _points
from ._ks import _sorted_distances_and_gap
from ._projections import _normal_cdf, _random_directions

# Points drawn per curve in the plots: an empirical CDF at this many ranks is exact at each.
_PLOT_POINTS = 2000


def _samples(z) -> list:
    """One sample or a list of samples (several runs overlaid), each checked."""
    if isinstance(z, (list, tuple)):
        if not z:
            raise ValueError("z must be a sample (n, D) or a non-empty list of samples")
        samples = [_points(s) for s in z]
    else:
        samples = [_points(z)]
    dims = {s.shape[1] for s in samples}
    if len(dims) != 1:
        raise ValueError(f"the samples in z must share the dimension D, got {sorted(dims)}")
    return samples


def _new_axes(ax, count: int, figsize):
    """(fig, axes): a fresh Figure with ``count`` axes in a row, or the figure of the given ones."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(1, count, squeeze=False)[0]
        return fig, (axes[0] if count == 1 else list(axes))
    if count == 1:
        return ax.figure, ax
    axes = list(ax)
    if len(axes) != count:
        raise ValueError(f"ax must hold {count} matplotlib Axes, got {len(axes)}")
    return axes[0].figure, axes


def _ecdf_points(sorted_values: Tensor) -> Tuple[list, list]:
    """(x, Fhat(x)) at up to _PLOT_POINTS evenly spaced ranks of sorted values (exact there)."""
    m = sorted_values.shape[0]
    ranks = torch.unique(torch.linspace(0, m - 1, min(m, _PLOT_POINTS)).round().long())
    return sorted_values[ranks].double().cpu().tolist(), ((ranks + 1).double() / m).tolist()


def _draw_runs(ax, curves, reference_x, reference_y, title: str, xlabel: str, reference_label: str):
    for i, (x, y) in enumerate(curves):
        ax.plot(x, y, color="tab:blue", alpha=0.5, linewidth=1.0, label="sample" if i == 0 else None)
    ax.plot(reference_x, reference_y, color="black", linestyle="--", linewidth=1.2, label=reference_label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("cumulative fraction", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")


def plot_cdfs(z, ax=None, *, title: Optional[str] = None):
    """Empirical CDFs of the radii ||z_i||^2 and the half squared distances ||z_i - z_j||^2 / 2
    against the chi2_D CDF (dashed): Duda's Fig. 1. A list of samples draws one curve per run.

    Args:
        z: points (n, D) (tensor or numpy array), or a list of such samples of one D.
        ax: None (a new Figure with two axes) or a pair of matplotlib Axes.
        title: prefix of the two panel titles.

    Returns:
        ``(fig, [ax_radii, ax_distances])``.

    Example:
        >>> fig, axes = plot_cdfs(torch.randn(200, 20))
        >>> fig.savefig("cdfs.png")                   # doctest: +SKIP
    """
    samples = _samples(z)
    dim = samples[0].shape[1]
    fig, axes = _new_axes(ax, 2, (8, 3))
    prefix = f"{title}: " if title else ""
    radii = [_ecdf_points(torch.sort((s.double() ** 2).sum(1)).values) for s in samples]
    distances = [_ecdf_points(_sorted_distances_and_gap(s.to(_checks.compute_dtype(s)))[0]) for s in samples]
    for panel, curves, label in ((axes[0], radii, "radii ||z||^2"), (axes[1], distances, "distances ||z_i - z_j||^2 / 2")):
        top = max(max(x[-1] for x, _ in curves), float(chi2_quantiles(1000, dim)[-1]))
        grid = torch.linspace(0, top, 400, dtype=torch.float64)
        _draw_runs(panel, curves, grid.tolist(), _chi2_cdf(grid, dim).tolist(), f"{prefix}CDF of {label}", label,
                   f"chi2_{dim} CDF")
    axes[0].legend(fontsize=7, loc="lower right")
    return fig, axes


def _reference_like(sample: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(sample.shape, generator=generator, dtype=torch.float64)


def _pair_values(sample: Tensor, values_of_pairs, generator: Optional[torch.Generator]) -> Tensor:
    """values_of_pairs(a, b) over the pairs i < j, at most about 20000 of them (sampled beyond)."""
    sample = sample.double().cpu()
    n = sample.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    if i.shape[0] > 20000:
        keep = torch.randperm(i.shape[0], generator=generator)[:20000]
        i, j = i[keep], j[keep]
    return torch.sort(values_of_pairs(sample[i], sample[j])).values


def _plot_pair_statistic(z, ax, generator, values_of_pairs, title: str, xlabel: str):
    samples = _samples(z)
    generator = _generator(generator)
    fig, ax = _new_axes(ax, 1, (4, 3))
    curves = [_ecdf_points(_pair_values(s, values_of_pairs, generator)) for s in samples]
    reference = _ecdf_points(_pair_values(_reference_like(samples[0], generator), values_of_pairs, generator))
    _draw_runs(ax, curves, reference[0], reference[1], title, xlabel, "i.i.d. N(0, I)")
    return fig, ax


def plot_projections(z, ax=None, *, num_projections: int = 10, generator: Optional[torch.Generator] = None):
    """Empirical CDFs of projections z . theta on random unit directions against Phi (dashed):
    Duda's Fig. 2, top row. One curve per direction (and per sample of a list).

    Args:
        z: points (n, D) or a list of samples; ax: None or one matplotlib Axes.
        num_projections: directions per sample; generator: torch.Generator for them.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_projections(torch.randn(200, 20))
    """
    samples = _samples(z)
    num_projections = _checks.positive_int("num_projections", num_projections)
    generator = _generator(generator)
    fig, ax = _new_axes(ax, 1, (4, 3))
    curves = []
    for sample in samples:
        directions = _random_directions(num_projections, sample.shape[1], generator, "cpu")
        projections = torch.sort(sample.double().cpu() @ directions.T, dim=0).values
        curves += [_ecdf_points(projections[:, l].contiguous()) for l in range(num_projections)]
    grid = torch.linspace(-4, 4, 400, dtype=torch.float64)
    _draw_runs(ax, curves, grid.tolist(), _normal_cdf(grid).tolist(), "projections on random directions",
               "z . theta", "N(0, 1) CDF")
    return fig, ax


def plot_scalar_products(z, ax=None, *, generator: Optional[torch.Generator] = None):
    """Empirical CDF of the scalar products z_i . z_j (i < j) against those of an i.i.d.
    N(0, I) sample of the same shape (dashed): Duda's Fig. 2, middle row. Beyond 20000
    pairs a random subset (drawn with ``generator``) is used.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_scalar_products(torch.randn(200, 20))
    """
    return _plot_pair_statistic(z, ax, generator, lambda a, b: (a * b).sum(1), "scalar products z_i . z_j",
                                "z_i . z_j")


def plot_angles(z, ax=None, *, generator: Optional[torch.Generator] = None):
    """Empirical CDF of the distances ||u_i - u_j|| between the normalized points u = z/||z||
    (a function of the angle) against an i.i.d. N(0, I) sample's (dashed): Duda's Fig. 2,
    bottom row. Beyond 20000 pairs a random subset is used.

    Returns:
        ``(fig, ax)``.

    Example:
        >>> fig, ax = plot_angles(torch.randn(200, 20))
    """
    def chord(a, b):
        return (a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).norm(dim=1)

    return _plot_pair_statistic(z, ax, generator, chord, "angles: chords between normalized points",
                                "||u_i - u_j|| = 2 sin(angle / 2)")
