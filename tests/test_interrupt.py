"""Ctrl-C during a long CPU call: the engines poll between chunks of work (a pass of the
cdf engine's selection, a round of the pair sums), free their workspace and raise
KeyboardInterrupt within about a second, and the next call works. Each case runs in a child
process that is sent SIGINT one second into a call of many seconds."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

_CHILD = textwrap.dedent("""
    import signal, sys, time, torch, gaussreg
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started; a
    # test run launched as a background job starts its children with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(2)
    loss = eval(sys.argv[1], {"gaussreg": gaussreg})
    z = torch.randn(int(sys.argv[2]), 64)
    loss(torch.randn(50, 4))  # warm: imports and tables
    print("ready", flush=True)
    start = time.perf_counter()
    try:
        loss(z)
        print("finished", time.perf_counter() - start, flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.perf_counter() - start, flush=True)
    small = torch.randn(300, 8, requires_grad=True)
    out = loss(small)
    if isinstance(out, torch.Tensor):
        out.backward()
        assert torch.isfinite(small.grad).all()
    else:  # a diagnostic's result
        assert 0 < out.statistic < 1
    print("ok", flush=True)
""")


# (call, n): calls of ten seconds and more on 2 cores. gaussian_l2_to_normal is one pair
# sum of the points with themselves; mmd adds the cross sum with a prior sample;
# ks_distances runs the cdf engine's key bins and its selection.
CASES = [("gaussreg.cdf_attraction", 32768), ("gaussreg.gaussian_l2_to_normal", 32768), ("gaussreg.mmd", 32768),
         ("gaussreg.diagnostics.ks_distances", 32768)]


@pytest.mark.parametrize("loss, n", CASES)
def test_ctrl_c_interrupts_a_long_call(loss, n):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, loss, str(n)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(1.0)
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        verdict = child.stdout.readline().split()
        noticed = time.perf_counter() - sent
        rest = child.stdout.read()
        child.wait(timeout=120)
    finally:
        child.kill()
    assert verdict and verdict[0] == "interrupted", (verdict, child.stderr.read())
    assert noticed < 3.0, noticed  # about a second: the engines poll between chunks
    assert "ok" in rest and child.returncode == 0
