"""Benchmarks of gaussreg: one harness (``gaussreg.bench._harness``) and one script per loss family.

They ship with the package, so they time whichever gaussreg is installed (a wheel, an
editable checkout): ``gaussreg bench --help`` or ``python -m gaussreg.bench --help``; one
family alone with ``python -m gaussreg.bench.kernel_sums --help``. Results go to
``./gaussreg-bench-results/<device>/`` in the current directory unless told otherwise.
"""
