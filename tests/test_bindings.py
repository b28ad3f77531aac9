"""The compiled CPU module's own contract: an unknown dtype code or a null pointer raises.

The Python engines never pass either, but the bindings are callable directly
(``gaussreg._C``); a wrong call must be a ValueError naming what is wrong, never a float64
reading of float32 data or a crash. Every call runs in one child process, so that a crash
fails the test with the name of the call that crashed instead of taking pytest down.
"""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gaussreg import _native

pytestmark = pytest.mark.skipif(_native.module_for(torch.device("cpu")) is None, reason="the CPU module is not built")

_CHILD = textwrap.dedent(r"""
    import json, sys, torch
    import gaussreg._C as C
    from gaussreg.engines.pair_sum import MMD_IMQ as IMQ

    def buf(*shape, dtype=torch.float64):
        return torch.zeros(*shape, dtype=dtype)

    n, d = 10, 3
    z, grad = buf(n, d), buf(n, d)
    value, f64 = buf(1), buf(64)
    signs = torch.zeros(2, 1, dtype=torch.int64)
    work = torch.zeros(1 << 24, dtype=torch.uint8)
    W, WB = work.data_ptr(), work.numel()
    cos, sin, u = buf(2, 4), buf(2, 4), buf(2, n)
    counts = torch.zeros(2, n, dtype=torch.int64)
    cases = {
        # an unknown dtype code (valid pointers otherwise)
        "pair_sum workspace, dtype 7": lambda: C.mmd_workspace_bytes(7, n, 0, d, 1),
        "pair_sum forward, dtype 7": lambda: C.mmd_forward(7, IMQ, z.data_ptr(), n, d, d, 1, 0, 0, 0, 0, [8.0, 16.0],
                                                                   0, 0, value.data_ptr(), 0, 0, W, WB, 1),
        "epps_pulley forward, dtype 7": lambda: C.epps_pulley_forward(7, 2, n, u.data_ptr(), 4, 0.1, cos.data_ptr(),
                                                                      sin.data_ptr(), 1),
        "epps_pulley backward, dtype 7": lambda: C.epps_pulley_backward(7, 2, n, u.data_ptr(), 4, 0.1,
                                                                        cos.data_ptr(), sin.data_ptr(),
                                                                        u.data_ptr(), 1),
        "segmented workspace, dtype 7": lambda: C.segmented_workspace_bytes(7, 2, n, 1),
        "segmented forward, dtype 7": lambda: C.segmented_forward(7, 2, n, u.data_ptr(), False, 0, f64.data_ptr(), 1,
                                                                  value.data_ptr(), grad.data_ptr(), 0, W, WB, 1),
        "segmented counts, dtype 7": lambda: C.segmented_counts(7, 2, n, u.data_ptr(), counts.data_ptr(), W, WB, 1),
        "cdf workspace, dtype 7": lambda: C.cdf_pairs_workspace_bytes(7, n, d, 45, 0, 1),
        "cdf entry bytes, dtype 7": lambda: C.cdf_pairs_entry_bytes(7, n),
        "cdf backward, dtype 7": lambda: C.cdf_pairs_backward(7, n, d, z.data_ptr(), 1, signs[0].data_ptr(),
                                                              signs[1].data_ptr(), 0, 1.0, grad.data_ptr(), 1),
        # a null pointer where data must be
        "pair_sum forward, null x": lambda: C.mmd_forward(1, IMQ, 0, n, d, d, 1, 0, 0, 0, 0, [8.0, 16.0], 0, 0,
                                                                  value.data_ptr(), 0, 0, W, WB, 1),
        "epps_pulley forward, null u": lambda: C.epps_pulley_forward(1, 2, n, 0, 4, 0.1, cos.data_ptr(),
                                                                     sin.data_ptr(), 1),
        "epps_pulley backward, null grad_u": lambda: C.epps_pulley_backward(1, 2, n, u.data_ptr(), 4, 0.1,
                                                                            cos.data_ptr(), sin.data_ptr(), 0, 1),
        "segmented forward, null values": lambda: C.segmented_forward(1, 2, n, 0, False, 0, f64.data_ptr(), 1,
                                                                      value.data_ptr(), grad.data_ptr(), 0, W, WB, 1),
        "segmented counts, null counts": lambda: C.segmented_counts(1, 2, n, u.data_ptr(), 0, W, WB, 1),
        "cdf backward, null grad": lambda: C.cdf_pairs_backward(1, n, d, z.data_ptr(), 1, signs[0].data_ptr(),
                                                                signs[1].data_ptr(), 0, 1.0, 0, 1),
        "cdf forward, null value": lambda: C.cdf_pairs_forward(1, n, d, z.data_ptr(), 0, f64.data_ptr(), 0, 0, 1, 0,
                                                               signs[0].data_ptr(), signs[1].data_ptr(), 0, 0, 45,
                                                               0, 0, W, WB, 1),
        "cdf forward, null workspace": lambda: C.cdf_pairs_forward(1, n, d, z.data_ptr(), 0, f64.data_ptr(), 0, 0, 1,
                                                                   value.data_ptr(), signs[0].data_ptr(),
                                                                   signs[1].data_ptr(), 0, 0, 45, 0, 0, 0, WB, 1),
        "cdf forward p = 2, null residual": lambda: C.cdf_pairs_forward(1, n, d, z.data_ptr(), 0, f64.data_ptr(), 0, 0,
                                                                        2, value.data_ptr(), 0, 0, 0, 0, 45, 0, 0, W,
                                                                        WB, 1),
    }
    for name, call in cases.items():
        print(name, file=sys.stderr, flush=True)  # the last name printed is the one that crashed
        try:
            call()
            outcome = "accepted"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print(json.dumps([name, outcome]), flush=True)
""")


def test_bad_dtype_codes_and_null_pointers_raise_value_errors():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"crashed in: {out.stderr.strip().splitlines()[-1:]}\n{out.stderr[-2000:]}"
    outcomes = dict(json.loads(line) for line in out.stdout.splitlines())
    assert len(outcomes) == 19, outcomes
    for name, outcome in outcomes.items():
        expected = "dtype code 7" if name.endswith("dtype 7") else "null"
        assert outcome.startswith("ValueError") and expected in outcome, (name, outcome)
