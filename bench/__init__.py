"""Benchmarks of gaussreg: one harness (``bench._harness``) and one script per loss family.

Run from the repository root, e.g. ``python -m bench.kernel_sums --help``.
"""
