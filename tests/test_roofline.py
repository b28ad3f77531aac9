"""bench/roofline.py: its SASS loop analysis on a listing written by hand, and the committed
table (bench/results/roofline-sm90.md) is the one its committed JSON gives. Regenerating
the table needs nvcc, cuobjdump and nvdisasm (no GPU): ``python3 bench/roofline.py``."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("roofline", ROOT / "bench" / "roofline.py")
roofline = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(roofline)

# A tile loop (it synchronises) around a pair loop that holds a coordinate loop (2 shared
# loads an iteration) and a term loop (one transcendental an iteration), as cuobjdump prints.
LISTING = """
        Function : kern
        /*0000*/                   MOV R1, c[0x0][0x28] ;          /* 0x0 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x0 */
        /*0020*/                   LDS R2, [R3] ;                  /* 0x0 */
        /*0030*/                   LDS R4, [R3+0x4] ;              /* 0x0 */
        /*0040*/                   LDS R5, [R3+0x8] ;              /* 0x0 */
        /*0050*/                   FFMA R6, R4, R5, R6 ;           /* 0x0 */
        /*0060*/               @P3 BRA 0x30 ;                      /* 0x0 */
        /*0070*/                   MUFU.EX2 R7, R6 ;               /* 0x0 */
        /*0080*/                   FADD R8, R7, R8 ;               /* 0x0 */
        /*0090*/               @!P0 BRA 0x70 ;                     /* 0x0 */
        /*00a0*/                   FADD R9, R9, R8 ;               /* 0x0 */
        /*00b0*/               @P1 BRA 0x20 ;                      /* 0x0 */
        /*00c0*/                   BAR.SYNC 0x0 ;                  /* 0x0 */
        /*00d0*/               @P2 BRA 0x10 ;                      /* 0x0 */
        /*00e0*/                   EXIT ;                          /* 0x0 */
"""


def test_loop_nest_of_a_listing_written_by_hand():
    instrs = roofline.functions(LISTING)["kern"]
    assert len(instrs) == 15
    (tile,) = roofline.loop_tree(instrs)
    assert (tile.start, tile.end) == (0x10, 0xD0)
    (pair,) = tile.children
    assert (pair.start, pair.end, len(pair.ops)) == (0x20, 0xB0, 10)
    assert sorted((c.start, c.end) for c in pair.children) == [(0x30, 0x60), (0x70, 0x90)]


def test_instructions_per_pair_count_the_nested_loops_trips():
    instrs = roofline.functions(LISTING)["kern"]
    # Pair loop: 3 own instructions (one LDS); D = 6 runs the coordinate loop 3 times (4
    # instructions, 2 LDS each), 5 terms run the term loop 5 times (3 instructions, 1 MUFU).
    got = roofline.per_pair(instrs, d=6, terms=5, runtime_d=True, elem=4)
    assert got == {"all": 3 + 3 * 4 + 5 * 3, "memory": 1 + 3 * 2, "mufu": 5}


def test_estimate_and_floor_by_hand():
    # n = 128: one block, one SM; 128^2 pairs / 32 lanes = 512 warp instructions per
    # instruction a pair, 4 a clock: 128 clocks per instruction.
    per = {"all": 10.0, "memory": 0.0, "mufu": 0.0}
    assert roofline.estimate_ms(128, per) == pytest.approx(10 * 128 / roofline.CLOCK_HZ * 1e3)
    # D = 64 at n = 65536: 2 D FMA per ordered pair over 132 SMs x 128 lanes.
    assert roofline.floor_ms(65536, 64, 1, "float32") == pytest.approx(
        65536**2 * 128 / (132 * 128) / roofline.CLOCK_HZ * 1e3)


def test_committed_table_is_the_committed_rows():
    rows = json.loads(roofline.JSON_OUT.read_text())["rows"]
    assert {(r["dtype"], r["D"]) for r in rows} == {(t, d) for t in ("float32", "float64") for d in roofline.DIMS}
    assert roofline.table(rows) in roofline.TABLE_OUT.read_text()
