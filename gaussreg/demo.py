"""``gaussreg demo``: the papers' headline experiment (Duda, *Gaussian AutoEncoder*, Fig. 1).

Start from a sample uniform on [-1, 1]^D (D = 20, n = 200), minimize one regularizer
alone by gradient descent, and check whether the result looks like N(0, I): the
empirical CDFs of the radii ||z_i||^2 and of the half squared distances
||z_i - z_j||^2 / 2 against chi2_D (``fig1.png``, one row per method, 10 runs overlaid),
Duda's Fig. 2 panels for the i.i.d. sample and CDF attraction (``fig2.png``), and a table
of diagnostics (``gaussreg.diagnostics``) averaged over the runs, next to a row of true
N(0, I) samples. Every loss that has landed in ``gaussreg`` gets a row; one that has
not is listed as "not available yet".

Run ``gaussreg demo --help`` (or ``python -m gaussreg demo``) for the options.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

import gaussreg

from . import diagnostics
from ._progress import Progress


@dataclass(frozen=True)
class Method:
    """One row of the experiment: a loss of ``gaussreg`` looked up by name when it runs."""

    key: str
    label: str
    loss_name: Optional[str]  # None: the reference row of N(0, I) samples, nothing to minimize
    bind: Optional[Callable] = None  # (loss function, generator) -> (z -> scalar loss)

    def loss(self):
        """The ``gaussreg`` function, or None when it has not landed in this version."""
        return None if self.loss_name is None else getattr(gaussreg, self.loss_name, None)


METHODS = (
    Method("normal", "N(0, I) sample (reference)", None),
    # WAE-MMD as in Fig. 1: the IMQ kernel, a fresh prior sample every step.
    Method("mmd", "WAE-MMD (IMQ)", "mmd", lambda f, g: lambda z: f(z, kernel="imq", generator=g)),
    Method("cwae", "CWAE (log cw_distance)", "cw_distance", lambda f, g: lambda z: f(z, log=True)),
    Method("cdf", "CDF attraction", "cdf_attraction", lambda f, g: lambda z: f(z)),
    # sigma = 1 (eq. 10); the mean-field sigma costs 5x more per step and collapses the same way.
    Method("l2", "Gaussian L2 (sigma = 1)", "gaussian_l2_to_normal", lambda f, g: lambda z: f(z, 1.0)),
    Method("coord", "coordinate CDF (normal)", "coordinate_cdf_attraction",
           lambda f, g: lambda z: f(z, marginal="normal")),
    Method("swae", "SWAE (sliced Wasserstein)", "sliced_wasserstein", lambda f, g: lambda z: f(z, generator=g)),
    Method("epps_pulley", "Epps-Pulley (SIGReg)", "epps_pulley", lambda f, g: lambda z: f(z, generator=g)),
)
NOT_AVAILABLE = "not available yet"


def minimize(loss: Callable, z0: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Adam on the points themselves, learning rate annealed to 0 on a cosine.

    Adam makes one step size serve losses whose scales differ by orders of magnitude
    (log d_cw^2 against MMD^2); the annealing lets each settle instead of jittering
    around its minimum (MMD's fresh prior sample makes its gradient noisy).
    """
    z = z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss(z).backward()
        optimizer.step()
        schedule.step()
    return z.detach()


def statistics(z: torch.Tensor) -> Dict[str, float]:
    """The table's columns for one final sample."""
    raw = diagnostics.mardia(z)
    return {
        "ks_radii": diagnostics.ks_radii(z).statistic,
        "ks_distances": diagnostics.ks_distances(z).statistic,
        "mardia_skewness": raw.skewness,
        "mardia_kurtosis": raw.kurtosis,
        "hz_pvalue": diagnostics.henze_zirkler(z).pvalue,
    }


COLUMNS = (("ks_radii", "KS radii", "{:.3f}"), ("ks_distances", "KS dist.", "{:.3f}"),
           ("mardia_skewness", "Mardia b1", "{:.1f}"), ("mardia_kurtosis", "Mardia b2", "{:.1f}"),
           ("hz_pvalue", "HZ p-value", "{:.3g}"), ("seconds_per_run", "s/run", "{:.2f}"))


def table(results: Dict[str, dict]) -> str:
    """The printed table: one row per method, the mean over runs of each column."""
    rows = []
    for method in METHODS:
        result = results.get(method.key)
        if result is None:
            continue
        if result["status"] != "ok":
            rows.append([method.label] + [NOT_AVAILABLE] + [""] * (len(COLUMNS) - 1))
            continue
        rows.append([method.label] + [fmt.format(result["mean"][key]) for key, _, fmt in COLUMNS])
    return diagnostics.format_table(["method"] + [title for _, title, _ in COLUMNS], rows)


def run_method(method: Method, args, device: torch.device, progress: Progress) -> dict:
    """Every run of one method: the final samples (on the CPU) and their statistics."""
    function = method.loss()
    if method.loss_name is not None and function is None:
        return {"status": NOT_AVAILABLE, "loss": f"gaussreg.{method.loss_name}"}
    samples, per_run, seconds = [], [], []
    for run in range(args.runs):
        seed = args.seed * 1000 + run
        cpu_generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        if function is None:
            z = torch.randn(args.n, args.dim, generator=cpu_generator)
        else:
            z0 = (torch.rand(args.n, args.dim, generator=cpu_generator) * 2 - 1).to(device)
            generator = torch.Generator(device=device).manual_seed(seed)
            z = minimize(method.bind(function, generator), z0, args.steps, args.lr).cpu()
        seconds.append(time.perf_counter() - start)
        if not bool(torch.isfinite(z).all()):
            raise FloatingPointError(f"gaussreg demo: {method.label} diverged to NaN/Inf in run {run} "
                                     f"(try a smaller --lr than {args.lr})")
        samples.append(z)
        per_run.append(statistics(z))
        progress.step(f"{method.label}, run {run + 1}/{args.runs}", finished_block=run == args.runs - 1)
    mean = {key: sum(r[key] for r in per_run) / len(per_run) for key in per_run[0]}
    mean["seconds_per_run"] = sum(seconds) / len(seconds)
    return {"status": "ok", "loss": None if method.loss_name is None else f"gaussreg.{method.loss_name}",
            "mean": mean, "runs": per_run, "samples": samples}


def figure_1(results: Dict[str, dict], path: str, dim: int) -> None:
    """Rows = methods, columns = CDF of radii and of distances against chi2_D (Duda's Fig. 1)."""
    from matplotlib.figure import Figure

    rows = [m for m in METHODS if results.get(m.key, {}).get("status") == "ok"]
    fig = Figure(figsize=(8, 2.1 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for method, pair in zip(rows, axes):
        diagnostics.plot_cdfs(results[method.key]["samples"], ax=pair, title=method.label)
    fig.suptitle(f"D = {dim}: empirical CDFs (one curve per run) against chi2_{dim} (dashed)", fontsize=10)
    fig.savefig(path, dpi=80)


def figure_2(results: Dict[str, dict], path: str) -> None:
    """Duda's Fig. 2 tests (projections, scalar products, angles) for the i.i.d. sample and CDF attraction."""
    from matplotlib.figure import Figure

    rows = [m for m in METHODS if m.key in ("normal", "cdf") and results.get(m.key, {}).get("status") == "ok"]
    fig = Figure(figsize=(11, 3 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for method, row in zip(rows, axes):
        runs = results[method.key]["samples"]
        generator = torch.Generator().manual_seed(0)
        diagnostics.plot_projections(runs, ax=row[0], num_projections=3, generator=generator)
        diagnostics.plot_scalar_products(runs, ax=row[1], generator=generator)
        diagnostics.plot_angles(runs, ax=row[2], generator=generator)
        row[0].set_ylabel(method.label, fontsize=9)
    fig.savefig(path, dpi=80)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaussreg demo", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--dim", type=int, default=20, help="latent dimension D (default 20)")
    p.add_argument("--n", type=int, default=200, help="points per sample (default 200)")
    p.add_argument("--runs", type=int, default=10, help="independent runs per method (default 10)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps per run (default 300)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate, annealed to 0 (default 0.1)")
    p.add_argument("--out", default=".", help="folder for fig1.png, fig2.png and demo.json (default: here)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: a step at n = 200 takes milliseconds, where threads "
                        "mostly wait for each other)")
    p.add_argument("--methods", default="all",
                   help="comma-separated keys to run: " + ",".join(m.key for m in METHODS) + " (default all)")
    p.add_argument("--seed", type=int, default=0, help="base seed (run r uses 1000 * seed + r)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr (the table still prints)")
    return p


def _check_args(args, p: argparse.ArgumentParser) -> List[Method]:
    for name in ("dim", "n", "runs", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.n < 2:
        p.error("--n must be at least 2 (the distances need pairs)")
    if args.steps < 0 or not (args.lr > 0 and math.isfinite(args.lr)):
        p.error("--steps must be >= 0 and --lr positive")
    if args.methods == "all":
        return list(METHODS)
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = sorted(set(keys) - {m.key for m in METHODS})
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(m.key for m in METHODS)}")
    return [m for m in METHODS if m.key in keys]


def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    methods = _check_args(args, p)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        p.error(f"--device: {exc}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print(f"gaussreg demo: D = {args.dim}, n = {args.n}, {args.runs} runs from uniform [-1, 1]^{args.dim}, "
          f"{args.steps} Adam steps (lr {args.lr:g}, cosine-annealed) minimizing each regularizer alone; "
          f"device {device}, {args.threads} thread(s)")
    start, cpu_start = time.perf_counter(), time.process_time()
    available = [m for m in methods if m.loss_name is None or m.loss() is not None]
    progress = Progress(len(available) * args.runs, "demo", quiet=args.quiet)
    results = {m.key: run_method(m, args, device, progress) for m in methods}
    progress.close()
    elapsed = time.perf_counter() - start

    d, n = args.dim, args.n
    print(f"\nmean over {args.runs} runs; an N(0, I) sample has KS of order 1/sqrt(n), "
          f"Mardia b1 about D(D+2)(D+4)/n = {d * (d + 2) * (d + 4) / n:.1f}, b2 about D(D+2) = {d * (d + 2)}, "
          "HZ p-value uniform on (0, 1):\n")
    print(table(results))
    written = []
    ran = {key for key, result in results.items() if result["status"] == "ok"}
    if not args.no_plots and ran:
        written.append(os.path.join(args.out, "fig1.png"))
        figure_1(results, written[-1], d)
        if ran & {"normal", "cdf"}:
            written.append(os.path.join(args.out, "fig2.png"))
            figure_2(results, written[-1])
    written.append(os.path.join(args.out, "demo.json"))
    summary = {"settings": dict(vars(args)), "seconds": elapsed, "methods": {}}
    for method in methods:
        kept = {key: value for key, value in results[method.key].items() if key != "samples"}  # no tensors in JSON
        summary["methods"][method.key] = {**kept, "label": method.label}
    with open(written[-1], "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"\nwrote {', '.join(written)}; {time.perf_counter() - start:.1f}s wall, "
          f"{time.process_time() - cpu_start:.1f}s CPU")
    return 0
