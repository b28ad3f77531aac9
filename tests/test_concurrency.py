"""Threads and processes (issue 8, item 6), over every loss of the table in _loss_cases.py.

Concurrent calls from 4 Python threads give bitwise the results of sequential calls (the
compiled calls release the GIL, so they really overlap); every compiled entry point is
given torch.get_num_threads() OpenMP threads; the library works in a forked child (after
the parent used its OpenMP pools, as a DataLoader worker: one thread there, where GNU
OpenMP cannot start more) and in a spawned process.
"""
import multiprocessing as mp
import queue as queue_module
import threading
import warnings

import pytest
import torch
from _helpers import assert_identical
from _loss_cases import CASES, Recorder, points_for, run_all

import gaussreg

_CPU_ENTRY_SUFFIXES = ("_forward", "_backward")


def _inputs(seed_base=0):
    return {case.name: points_for(case, n=70, d=5, seed=seed_base + k) for k, case in enumerate(CASES)}


def _assert_same(got, expected, what):
    for name, (value, grads) in expected.items():
        assert_identical(got[name][0], value, what=f"{what}: {name} value")
        for g, h in zip(got[name][1], grads):
            assert_identical(g, h, what=f"{what}: {name} gradient")


def test_four_python_threads_match_sequential_calls(restore_threads):
    torch.set_num_threads(2)
    inputs = [_inputs(100 * t) for t in range(4)]
    sequential = [run_all(x) for x in inputs]
    results, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            results[t] = [run_all(inputs[t]) for _ in range(2)]
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hangs"
    assert not errors, errors
    for t in range(4):
        for rep in results[t]:
            _assert_same(rep, sequential[t], f"thread {t}")


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_openmp_threads_follow_torch(threads, monkeypatch, restore_threads):
    module = gaussreg._native.module_for(torch.device("cpu"))
    recorder = Recorder()
    for name in dir(module):
        if name.endswith(_CPU_ENTRY_SUFFIXES) and callable(getattr(module, name)):
            monkeypatch.setattr(module, name, recorder.wrap(name, getattr(module, name)))
    torch.set_num_threads(threads)
    run_all(_inputs())
    called = {name for name, _ in recorder.calls}
    assert {"cdf_pairs_forward", "cdf_pairs_backward", "gaussian_l2_forward", "mmd_forward",
            "cramer_wold_forward"} <= called
    assert all(last == threads for _, last in recorder.calls), sorted(set(recorder.calls))


def _as_numpy(results):
    """Results as numpy arrays: pickled by value (tensors would travel as shared-memory
    handles that die with the child)."""
    return {name: (value.numpy(), [g.numpy() for g in grads]) for name, (value, grads) in results.items()}


def _from_numpy(results):
    return {name: (torch.from_numpy(value), [torch.from_numpy(g) for g in grads])
            for name, (value, grads) in results.items()}


def _child(inputs, threads, queue):
    try:
        queue.put(("ok", _as_numpy(run_all(inputs, threads))))
    except BaseException as exc:  # the parent reports it
        queue.put(("error", repr(exc)))


def _in_process(context: str, inputs, threads: int):
    ctx = mp.get_context(context)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(inputs, threads, queue))
    proc.start()
    try:
        status, payload = queue.get(timeout=120)
    except queue_module.Empty:  # the child hangs (e.g. an OpenMP pool broken by fork)
        proc.kill()
        raise AssertionError(f"no result from the {context}ed process in 120 s (hang?)") from None
    proc.join(timeout=60)
    assert status == "ok", payload
    return _from_numpy(payload)


@pytest.mark.parametrize("context, child_threads", (("fork", 1), ("spawn", 2)))
def test_works_in_forked_and_spawned_processes(context, child_threads, restore_threads):
    """A forked child runs torch (and gaussreg) on one thread, as DataLoader workers do:
    with more, GNU OpenMP hangs in torch's own ops (see the next test)."""
    if context not in mp.get_all_start_methods():
        pytest.skip(f"no {context} start method here")
    torch.set_num_threads(2)
    inputs = _inputs(7)
    expected = run_all(inputs)  # the parent has now used its OpenMP thread pools
    _assert_same(_in_process(context, inputs, child_threads), expected, f"{context}ed child")


def _child_thread_count(queue):
    torch.set_num_threads(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = gaussreg._native.num_threads()
    queue.put((threads, [str(w.message) for w in caught]))


def test_forked_child_runs_the_kernels_on_one_thread(restore_threads):
    """Regression: a forked child that asked for 2+ threads hung in the first compiled call
    after the parent had run OpenMP regions (GNU libgomp, shared with torch, cannot start
    a team after fork). gaussreg's kernels now take one thread there, and say why."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method here")
    torch.set_num_threads(2)
    run_all(_inputs(3))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_thread_count, args=(queue,))
    proc.start()
    threads, messages = queue.get(timeout=60)
    proc.join(timeout=60)
    assert threads == 1
    assert any("forked process" in m and "spawn" in m for m in messages), messages
    assert gaussreg._native.num_threads() == 2  # the parent is not affected


class _LossDataset(torch.utils.data.Dataset):
    def __init__(self, inputs):
        self.inputs = inputs
        self.names = sorted(inputs)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, k):
        name = self.names[k]
        return name, run_all({name: self.inputs[name]})[name][0]


def test_dataloader_workers(restore_threads):
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method here")
    torch.set_num_threads(2)
    inputs = _inputs(9)
    expected = run_all(inputs)
    loader = torch.utils.data.DataLoader(_LossDataset(inputs), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=240)
    seen = {name: value for name, value in loader}
    assert sorted(seen) == sorted(expected)
    for name, value in seen.items():
        assert_identical(value, expected[name][0], what=f"{name} in a DataLoader worker")
