"""Shared fixtures and the CUDA skip rule.

The ``cuda`` marker is declared in pyproject.toml; a test carrying it runs only where
``torch.cuda.is_available()`` and ``gaussreg.backends()["cuda"]["available"]``.
"""
import os
import sys

# torch.use_deterministic_algorithms(True) (test_nn's CUDA test) makes every cuBLAS call raise
# unless cuBLAS was given a fixed workspace; it reads this when its handle is created, so it
# is set before any test touches CUDA. The sliced losses' projections and the pair-sum
# losses' point terms call cuBLAS.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from _helpers import FLOAT_DTYPES, HALF_DTYPES, SEEDS, cuda_ok  # noqa: E402

import gaussreg.testing  # noqa: E402

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves without hypothesis
    settings = None

if settings is not None:
    # CI: a fixed, derandomized set of examples (reproducible, bounded time, no example
    # database); HYPOTHESIS_PROFILE=thorough for a long random search by hand.
    _quiet = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", max_examples=80, deadline=None, derandomize=True, database=None,
                              print_blob=True, suppress_health_check=_quiet)
    settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True,
                              suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if "cuda" in item.keywords]
    if not marked or cuda_ok():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and gaussreg._cuda "
                                   "(torch.cuda.is_available() and gaussreg.backends()['cuda']['available'])")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def seed(request):
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=str)
def float_dtype(request):
    return request.param


@pytest.fixture(params=HALF_DTYPES, ids=str)
def half_dtype(request):
    return request.param


@pytest.fixture(params=gaussreg.testing.LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture
def restore_threads():
    """Tests that change torch's thread count get it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the float32 error table (gaussreg next to the reference's own float32 error)."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "float32_error" and getattr(report, "when", "call") == "call":
                    lines.append(value)
    if lines:
        terminalreporter.write_sep("-", "float32 error vs float64 (value: relative; gradient: normwise relative)")
        for line in sorted(set(lines)):
            terminalreporter.write_line(line)


@pytest.fixture
def one_thread():
    """Run with torch.set_num_threads(1) (the compiled CPU kernels follow it).

    Used by the tests on tiny inputs (n <= 17) that make many calls: there the work is one
    block whatever the thread count, so the computation is the same, and a machine shared
    with other jobs does not make every call wait for a second thread's barrier.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
