"""Run benchmark families: ``python -m gaussreg.bench [FAMILY ...] [OPTIONS]`` (also ``gaussreg bench``).

With no FAMILY every family runs, one after the other, with the same OPTIONS (those of
the shared harness: ``--n``, ``--dim``, ``--device``, ``--dtype``, ``--repeats``, ...);
a family's own options (``--ref-max-n``, ``--cdist-max-n``) need that family named alone.
``distributed`` (W processes against one on the same global batch) has options of its own
and runs only when named: ``python -m gaussreg.bench distributed --help``.
``python -m gaussreg.bench kernel_sums --help`` lists a family's options.

    python -m gaussreg.bench --n 256 1024 --repeats 3           # every family, CPU
    python -m gaussreg.bench cdf_attraction --device cuda --n 16384 --ref-max-n 16384

Results go to ./gaussreg-bench-results/<device>/ in the current directory; ``--results-dir
DIR`` writes DIR/<device>/ instead (``--results-dir bench/results`` from the repository
root updates the committed results that README's tables are generated from).
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

FAMILIES = {
    "kernel_sums": "gaussreg.bench.kernel_sums",  # formulas §3, 4, 5: gaussian_l2*, mmd, cw_distance
    "cdf_attraction": "gaussreg.bench.cdf_attraction",  # formulas §1
    "segmented": "gaussreg.bench.segmented",  # formulas §2, 6, 7, 7b: coordinate, SWAE, GMM KS, Epps-Pulley
    "distributed": "gaussreg.bench.distributed",  # W ranks against one process on the same global batch
}

# Families with options of their own (not the shared harness's): they run only when named.
NAMED_ONLY = ("distributed",)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = []
    while argv and not argv[0].startswith("-"):
        names.append(argv.pop(0))
    if not names and argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        print("families: " + ", ".join(FAMILIES))
        return 0
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"unknown benchmark famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
              f"known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    for name in names or [f for f in FAMILIES if f not in NAMED_ONLY]:
        importlib.import_module(FAMILIES[name]).main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
