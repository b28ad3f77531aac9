"""The ``gaussreg`` command: ``gaussreg demo``, ``gaussreg train`` and ``gaussreg bench``.

``gaussreg demo`` reproduces Duda's Fig. 1 (``gaussreg.demo``); ``gaussreg train`` trains
an autoencoder on the digits of scikit-learn or a ``.npy`` file (``gaussreg.train``).

``gaussreg bench`` runs the benchmark families of ``gaussreg.bench`` (the same as
``python -m gaussreg.bench``) against the installed package, wherever it was installed
from; results go to ``./gaussreg-bench-results/<device>/`` in the current directory.
"""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: gaussreg COMMAND [ARGS]

commands:
  demo [OPTIONS]                 each regularizer alone from uniform [-1,1]^20: fig1.png + a diagnostics table
  train [OPTIONS]                an autoencoder on sklearn's digits (or --data file.npy) with --reg ...
  bench [FAMILY ...] [OPTIONS]   time the losses against reference.py and peers; results in
                                 ./gaussreg-bench-results/<device>/ (gaussreg bench --help)
"""


def bench(argv: List[str]) -> int:
    from .bench.__main__ import main as bench_main

    return bench_main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return bench(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "train":
        from .train import main as train_main

        return train_main(rest)
    print(f"gaussreg: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
