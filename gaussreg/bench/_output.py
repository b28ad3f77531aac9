"""What a run writes: the printed table, and JSON + CSV + PNG (time vs n, log-log, one line per
implementation, plus the floor) under ``./gaussreg-bench-results/<device-slug>/`` of the current
directory (``--results-dir`` / ``--out`` elsewhere), stamped with the run's metadata (device,
torch/gaussreg versions, build commit, thread count and date: ``_environment``). The CSV has
one column per :data:`CSV_FIELDS` entry (the fields of every row), after ``#`` stamp lines.
Without matplotlib the plot is skipped with a message.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional

# Relative to the current directory: the package may be installed read-only, and a run
# inside a checkout must not overwrite the committed results (bench/results/) unless asked.
DEFAULT_RESULTS_DIR = Path("gaussreg-bench-results")

CSV_FIELDS = [
    "case", "impl", "n", "d", "dtype", "device", "status", "note", "check",
    "repeats", "fb_median_s", "fb_iqr_s", "fb_min_s", "fwd_median_s", "fwd_iqr_s", "fwd_min_s", "bwd_est_s",
    "fb_flops", "fb_bytes", "fb_gflops", "fb_floor_s", "fb_x_floor", "fb_bound",
    "fwd_flops", "fwd_bytes", "fwd_gflops", "fwd_floor_s", "fwd_x_floor", "fwd_bound",
    "peak_mem_bytes", "mem_method", "size_oracle", "val_err", "grad_err", "details",
]


def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _load(avg) -> str:
    return "-" if not avg else "/".join(f"{x:.1f}" for x in avg)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: List[dict]) -> str:
    head = ["case", "impl", "n", "D", "fb med ms", "IQR", "min", "fwd med ms", "GFLOP/s", "floor ms", "x floor",
            "peak MiB", "val err", "grad err", "status / note"]
    lines = []
    for r in rows:
        note = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        if r["status"] == "ok" and r["note"]:
            note += f" ({r['note']})"
        lines.append([
            r["case"], r["impl"], "-" if r["n"] is None else str(r["n"]), str(r["d"]),
            _ms(r["fb_median_s"]), _ms(r["fb_iqr_s"]), _ms(r["fb_min_s"]), _ms(r["fwd_median_s"]),
            _fmt(r["fb_gflops"], ".1f"), _ms(r["fb_floor_s"]), _fmt(r["fb_x_floor"], ".1f"),
            _fmt(None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20, ".1f"),
            _fmt(r["val_err"], ".0e"), _fmt(r["grad_err"], ".0e"), note,
        ])
    widths = [max(len(head[k]), *(len(l[k]) for l in lines)) if lines else len(head[k]) for k in range(len(head) - 1)]
    fmt_line = lambda cells: "  ".join(  # noqa: E731
        [c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells[:-1], widths))] + [cells[-1]])
    out = [fmt_line(head), fmt_line(["-" * w for w in widths] + ["-" * 13])]
    prev_case = None
    for cells in lines:
        if prev_case is not None and cells[0] != prev_case:
            out.append("")
        prev_case = cells[0]
        out.append(fmt_line(cells))
    return "\n".join(out)


def write_outputs(family: str, meta: dict, rows: List[dict], args: argparse.Namespace,
                  floor_fn: Optional[Dict[str, Callable[[int], float]]]) -> List[Path]:
    out_dir = (args.out or (args.results_dir / meta["device_slug"])).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = family + (f"-{args.tag}" if args.tag else "")
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv"]
    with open(paths[0], "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(paths[1], "w", newline="") as f:
        # Stamp lines first (CSV readers: skip lines starting with '#').
        for key in ("family", "date", "device", "torch", "gaussreg", "git_commit", "threads", "floor_note"):
            f.write(f"# {key}: {meta.get(key)}\n")
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    if not args.no_plot:
        png = out_dir / f"{stem}.png"
        if plot(png, meta, rows, floor_fn):
            paths.append(png)
    return paths


def plot(path: Path, meta: dict, rows: List[dict], floor_fn: Optional[Dict[str, Callable[[int, int], float]]]) -> bool:
    """Forward+backward time vs n (log-log), one panel per case and D, one line per impl, plus the floor."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipped the plot (pip install matplotlib to get it)")
        return False
    panels = list(dict.fromkeys((r["case"], r["d"]) for r in rows))
    several_d = len({d for _, d in panels}) > 1
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax, (case, d) in zip(axes.flat, panels):
        case_rows = [r for r in rows if r["case"] == case and r["d"] == d]
        for impl in dict.fromkeys(r["impl"] for r in case_rows):
            pts = sorted((r["n"], r["fb_median_s"]) for r in case_rows
                         if r["impl"] == impl and r["status"] == "ok" and r["fb_median_s"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ns = sorted({r["n"] for r in case_rows if r["n"] is not None})
        if floor_fn and case in floor_fn and ns:
            ax.plot(ns, [floor_fn[case](n, d) for n in ns], "k--", linewidth=1, label="floor (gaussreg/bench/floors.py)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{case}, D = {d}" if several_d else case)
        ax.set_xlabel("n")
        ax.set_ylabel("forward+backward time [s]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{meta['family']}: {meta['device']} ({meta['threads']} threads), D={meta.get('dim')}, "
                 f"{meta.get('dtype')}; torch {meta['torch']}, gaussreg {meta['gaussreg']}, "
                 f"{meta['git_commit'][:12]}, {meta['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
