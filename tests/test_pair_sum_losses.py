"""Autograd edge cases, determinism and torch.compile of the pair-sum losses, one table over their stems.

Each stem's test module (tests/test_gaussian_l2.py, test_mmd.py, test_cramer_wold.py) keeps
its ``OPTIONS`` (a builder per option: ``OPTIONS[o](n, d, scale, seed) -> (inputs, fn,
reference)``) and names the options these checks run in ``EDGE_OPTIONS`` and
``COMPILE_OPTIONS``; the checks are the same for every stem: a second derivative is refused,
backward runs twice, repeated calls and any thread count give the same bits, and the loss
compiled with ``fullgraph=True`` gives the eager values and gradients.
"""
import pytest
import torch

import test_cramer_wold
import test_gaussian_l2
import test_mmd
from _helpers import (assert_close, check_backward_twice, check_double_backward_refused, check_repeatable,
                      check_thread_independent, value_and_grads)

STEMS = {"gaussian_l2": test_gaussian_l2, "mmd": test_mmd, "cramer_wold": test_cramer_wold}
EDGE_CASES = [(stem, option) for stem, module in STEMS.items() for option in module.EDGE_OPTIONS]
EDGE_IDS = [f"{stem}-{option}" for stem, option in EDGE_CASES]
# Every option at n = 300, D = 5, and each stem's first option at n = 1000, D = 20 (several
# scheduling rounds of the CPU engine).
THREAD_CASES = ([(stem, option, (300, 5)) for stem, option in EDGE_CASES]
                + [(stem, module.EDGE_OPTIONS[0], (1000, 20)) for stem, module in STEMS.items()])


def build(stem: str, option: str, n: int, d: int, scale: float, seed: int):
    """(inputs, fn, reference) of one stem's option."""
    return STEMS[stem].OPTIONS[option](n, d, scale, seed)


@pytest.mark.parametrize("stem, option", EDGE_CASES, ids=EDGE_IDS)
def test_double_backward_refused(stem, option):
    inputs, fn, _ = build(stem, option, 12, 3, 1.0, 2)
    check_double_backward_refused(fn, inputs)


@pytest.mark.parametrize("stem, option", EDGE_CASES, ids=EDGE_IDS)
def test_backward_twice(stem, option):
    inputs, fn, _ = build(stem, option, 12, 3, 1.0, 2)
    check_backward_twice(fn, inputs)


@pytest.mark.parametrize("stem, option", EDGE_CASES, ids=EDGE_IDS)
def test_repeated_calls_bitwise_identical(stem, option):
    inputs, fn, _ = build(stem, option, 300, 7, 0.8, 4)
    check_repeatable(fn, inputs)


@pytest.mark.parametrize("stem, option, shape", THREAD_CASES,
                         ids=[f"{s}-{o}-n{shape[0]}-D{shape[1]}" for s, o, shape in THREAD_CASES])
def test_thread_count_does_not_change_results(stem, option, shape, restore_threads):
    inputs, fn, _ = build(stem, option, shape[0], shape[1], 0.5, 4)
    check_thread_independent(fn, inputs)


COMPILE_CASES = [(stem, option) for stem, module in STEMS.items() for option in module.COMPILE_OPTIONS]


@pytest.mark.parametrize("stem, option", COMPILE_CASES, ids=[f"{s}-{o}" for s, o in COMPILE_CASES])
def test_compile_fullgraph_loss(stem, option):
    torch._dynamo.reset()
    inputs, fn, _ = build(stem, option, 20, 4, 1.0, 3)
    eager_v, eager_g = value_and_grads(fn, inputs)
    compiled_v, compiled_g = value_and_grads(torch.compile(fn, fullgraph=True), inputs)
    assert_close(compiled_v, eager_v, 1e-12, getattr(STEMS[stem], "COMPILE_VALUE_ATOL", 0))
    for g, h in zip(compiled_g, eager_g):
        assert_close(g, h, 1e-12, 1e-15)
