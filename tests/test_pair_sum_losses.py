"""The checks every pair-sum loss shares, one table over their stems.

Each stem's test module (tests/test_gaussian_l2.py, test_mmd.py, test_cramer_wold.py) keeps
its cases and its own checks; this module runs the shared ones over the stem's tables:

- ``OPTIONS[o](n, d, scale, seed) -> (inputs, fn, reference)``, ``case_id(case)``, the
  (option, case) lists ``SMALL_CASES``, ``MEDIUM_CASES``, ``LARGE_CASES`` (against the
  float64 reference, with ``reference_atol(option)`` where a stem needs its own) and
  ``GRADCHECK_CASES``;
- option names: ``LAYOUT_OPTIONS``, ``HALF_OPTIONS``, ``CUDA_OPTIONS`` (CPU / CUDA parity
  with ``value_floor(option)``), ``EDGE_OPTIONS`` (a second derivative is refused, backward
  runs twice, repeated calls and any thread count give the same bits) and
  ``COMPILE_OPTIONS`` (``fullgraph=True`` gives the eager values and gradients);
- errors: ``BAD_CALLS`` (SPEC's input errors) and ``MEMORY_CALLS`` (an impossible size),
  each followed by ``assert_still_works()``;
- the op: ``op_cases(dtype)``, ``OP_CASES`` and ``OPCHECK_CASES``.
"""
import time

import pytest
import torch

import test_cramer_wold
import test_gaussian_l2
import test_mmd
from _helpers import (F64_ATOL, FLOAT_DTYPES, assert_close, bytes_in_message, check_backward_twice,
                      check_cuda_parity, check_double_backward_refused, check_layout, check_pair_sum_contract,
                      check_repeatable, check_thread_independent, compare_with_reference, half_precision_check,
                      run_opcheck, value_and_grads)

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


# ---------------------------------------------------------------------------
# Value and gradient against the reference (float64), gradcheck
# ---------------------------------------------------------------------------


def _option_cases(table: str):
    """[(stem, option, case)] of every stem's ``table`` of (option, case) pairs."""
    return [(stem, option, case) for stem, module in STEMS.items() for option, case in getattr(module, table)]


def _case_ids(cases):
    return [f"{stem}-{option}-{STEMS[stem].case_id(case)}" for stem, option, case in cases]


def _check_reference(stem, option, case):
    module = STEMS[stem]
    inputs, fn, ref_fn = module.OPTIONS[option](*case)
    atol = module.reference_atol(option) if hasattr(module, "reference_atol") else F64_ATOL
    compare_with_reference(fn, ref_fn, inputs, atol=atol, what=f"{stem} {option} {module.case_id(case)}")


SMALL_CASES, MEDIUM_CASES, LARGE_CASES = (_option_cases(t) for t in ("SMALL_CASES", "MEDIUM_CASES", "LARGE_CASES"))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stem, option, case", SMALL_CASES, ids=_case_ids(SMALL_CASES))
def test_matches_reference(stem, option, case):
    _check_reference(stem, option, case)


@pytest.mark.parametrize("stem, option, case", MEDIUM_CASES, ids=_case_ids(MEDIUM_CASES))
def test_matches_reference_medium(stem, option, case):
    _check_reference(stem, option, case)


@pytest.mark.parametrize("stem, option, case", LARGE_CASES, ids=_case_ids(LARGE_CASES))
def test_matches_reference_large(stem, option, case):
    _check_reference(stem, option, case)


GRADCHECK_CASES = _option_cases("GRADCHECK_CASES")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stem, option, case", GRADCHECK_CASES,
                         ids=[f"{s}-{o}-n{c[0]}-D{c[1]}-x{c[2]:g}" for s, o, c in GRADCHECK_CASES])
def test_gradcheck(stem, option, case):
    n, d, scale = case
    inputs, fn, _ = build(stem, option, n, d, scale, 7)
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------
# Layouts, half inputs and CPU / CUDA parity
# ---------------------------------------------------------------------------


def _options(table: str):
    """[(stem, option)] of every stem's ``table`` of option names."""
    return [(stem, option) for stem, module in STEMS.items() for option in getattr(module, table)]


LAYOUT_CASES, HALF_CASES, CUDA_CASES = (_options(t) for t in ("LAYOUT_OPTIONS", "HALF_OPTIONS", "CUDA_OPTIONS"))


@pytest.mark.parametrize("stem, option", LAYOUT_CASES, ids=[f"{s}-{o}" for s, o in LAYOUT_CASES])
def test_layouts_match_contiguous(stem, option, layout):
    inputs, fn, _ = build(stem, option, 70, 9, 0.7, 8)
    check_layout(fn, inputs, layout)


@pytest.mark.parametrize("stem, option", HALF_CASES, ids=[f"{s}-{o}" for s, o in HALF_CASES])
def test_half_inputs(stem, option, half_dtype):
    inputs, fn, _ = build(stem, option, 33, 5, 1.0, 9)
    half_precision_check(fn, inputs, half_dtype)


# Every shape from 300 points on is cut into partner ranges (common/partner_split.h), whose
# partial gradients are added by one more kernel: (600, 16) and (1000, 64) in float32 on the
# register sweep (4 and 7 ranges), (300, 20), (1000, 128) and float64 on the chunked one.
@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(2, 2), (17, 3), (300, 20), (1000, 128), (600, 16), (1000, 64)],
                         ids=lambda s: f"n{s[0]}-D{s[1]}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("stem, option", CUDA_CASES, ids=[f"{s}-{o}" for s, o in CUDA_CASES])
def test_cuda_matches_cpu(stem, option, dtype, shape):
    inputs, fn, _ = build(stem, option, shape[0], shape[1], 0.5, 12)
    check_cuda_parity(fn, inputs, dtype, value_floor=STEMS[stem].value_floor(option))


# ---------------------------------------------------------------------------
# Errors: SPEC's input errors and impossible memory, each followed by a working call
# ---------------------------------------------------------------------------

BAD_CALLS = [(stem, case) for stem, module in STEMS.items() for case in sorted(module.BAD_CALLS)]
MEMORY_CALLS = [(stem, case) for stem, module in STEMS.items() for case in module.MEMORY_CALLS]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stem, case", BAD_CALLS, ids=[f"{s}-{c}" for s, c in BAD_CALLS])
def test_spec_error(stem, case):
    call, exc, match = STEMS[stem].BAD_CALLS[case]
    with pytest.raises(exc, match=match):
        call()
    STEMS[stem].assert_still_works()


@pytest.mark.parametrize("stem, case", MEMORY_CALLS, ids=[f"{s}-{c}" for s, c in MEMORY_CALLS])
def test_memory_error_names_bytes(stem, case):
    huge = torch.zeros(1, 64).expand(2**40, 64)
    start = time.perf_counter()
    with pytest.raises(MemoryError) as info:
        STEMS[stem].MEMORY_CALLS[case](huge)
    assert time.perf_counter() - start < 2.0, "the memory check must come before any O(n) work"
    assert bytes_in_message(str(info.value)) >= 2**40 * 64 * 4  # at least the float32 gradient
    STEMS[stem].assert_still_works()


# ---------------------------------------------------------------------------
# The pair_sum op of each stem's kernels: opcheck and its contract against brute force
# ---------------------------------------------------------------------------

OPCHECK_CASES = [(stem, name, dtype) for stem, module in STEMS.items() for name, dtype in module.OPCHECK_CASES]
CONTRACT_CASES = [(stem, name) for stem, module in STEMS.items() for name in module.OP_CASES]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stem, name, dtype", OPCHECK_CASES, ids=[f"{s}-{n}-{d}" for s, n, d in OPCHECK_CASES])
def test_opcheck(stem, name, dtype):
    run_opcheck(STEMS[stem].op_cases(dtype)[name][0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("stem, name", CONTRACT_CASES, ids=[f"{s}-{n}" for s, n in CONTRACT_CASES])
def test_pair_sum_contract(stem, name, dtype):
    """The op's three outputs against a brute-force float64 sum over all pairs."""
    args, kernel = STEMS[stem].op_cases(dtype)[name]
    check_pair_sum_contract(args, kernel)


def _value_and_input_grads(call, args):
    """call(*args) with x (and y) made to require grad as the op's flags ask, then backward:
    (value, x.grad, y.grad)."""
    x, y, px, py, stem, kind, params, want_x, want_y = args
    x = x.detach().clone().requires_grad_(want_x)
    y = None if y is None else y.detach().clone().requires_grad_(want_y)
    value = call(x, y, px, py, stem, kind, params, want_x, want_y)
    if value.requires_grad:
        value.backward(torch.tensor(0.75, dtype=value.dtype))
    return value.detach(), x.grad, None if y is None else y.grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("stem, name", CONTRACT_CASES, ids=[f"{s}-{n}" for s, n in CONTRACT_CASES])
def test_eager_function_matches_the_op(stem, name, dtype):
    """Eagerly the losses run the op's body and registered autograd in an autograd.Function
    (no dispatch); torch.compile traces the op. Both give the same bits."""
    from gaussreg.engines import pair_sum
    args, _ = STEMS[stem].op_cases(dtype)[name]
    eager = _value_and_input_grads(pair_sum._PairSumFn.apply, args)
    through_op = _value_and_input_grads(lambda *a: pair_sum.pair_sum_op(*a)[0], args)
    for got, expected in zip(eager, through_op):
        assert (got is None) == (expected is None)
        if got is not None:
            assert torch.equal(got, expected)
