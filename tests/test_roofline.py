"""bench/roofline.py: its SASS loop analysis on a listing written by hand, and the committed
table (bench/results/roofline-sm90.md) is the one its committed JSON gives. Regenerating
the table needs nvcc, cuobjdump and nvdisasm (no GPU): ``python3 bench/roofline.py``."""
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("roofline", ROOT / "bench" / "roofline.py")
roofline = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(roofline)

# The register sweep's shape: a tile loop (it synchronises) around a pair loop that holds a
# term loop (one transcendental an iteration), as cuobjdump prints it.
REGISTER_LISTING = """
        Function : rows
        /*0000*/                   MOV R1, c[0x0][0x28] ;          /* 0x0 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x0 */
        /*0020*/                   LDS R2, [R3] ;                  /* 0x0 */
        /*0030*/                   LDS R4, [R3+0x4] ;              /* 0x0 */
        /*0040*/                   FFMA R6, R4, R2, R6 ;           /* 0x0 */
        /*0050*/                   MUFU.EX2 R7, R6 ;               /* 0x0 */
        /*0060*/                   FADD R8, R7, R8 ;               /* 0x0 */
        /*0070*/               @!P0 BRA 0x50 ;                     /* 0x0 */
        /*0080*/                   FADD R9, R9, R8 ;               /* 0x0 */
        /*0090*/               @P1 BRA 0x20 ;                      /* 0x0 */
        /*00a0*/                   BAR.SYNC 0x0 ;                  /* 0x0 */
        /*00b0*/               @P2 BRA 0x10 ;                      /* 0x0 */
        /*00c0*/                   EXIT ;                          /* 0x0 */
"""

# The chunked sweep's shape: a tile loop around a chunk loop (two barriers, a staging loop
# that loads from global memory) and a term loop.
CHUNK_LISTING = """
        Function : tiles
        /*0000*/                   MOV R1, c[0x0][0x28] ;          /* 0x0 */
        /*0010*/                   LDS R2, [R3] ;                  /* 0x0 */
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x0 */
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;    /* 0x0 */
        /*0040*/                   STS [R3], R4 ;                  /* 0x0 */
        /*0050*/               @P3 BRA 0x30 ;                      /* 0x0 */
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x0 */
        /*0070*/                   LDS.128 R8, [R3] ;              /* 0x0 */
        /*0080*/                   FFMA R6, R8, R8, R6 ;           /* 0x0 */
        /*0090*/               @P1 BRA 0x20 ;                      /* 0x0 */
        /*00a0*/                   MUFU.EX2 R7, R6 ;               /* 0x0 */
        /*00b0*/                   FADD R8, R7, R8 ;               /* 0x0 */
        /*00c0*/               @!P0 BRA 0xa0 ;                     /* 0x0 */
        /*00d0*/                   FADD R9, R9, R8 ;               /* 0x0 */
        /*00e0*/               @P2 BRA 0x10 ;                      /* 0x0 */
        /*00f0*/                   EXIT ;                          /* 0x0 */
"""


def test_loop_nest_of_a_listing_written_by_hand():
    instrs = roofline.functions(CHUNK_LISTING)["tiles"]
    assert len(instrs) == 16
    (tile,) = roofline.loop_tree(instrs)
    assert (tile.start, tile.end, len(tile.ops), tile.own()) == (0x10, 0xE0, 14, 3)
    chunk, term = sorted(tile.children, key=lambda loop: loop.start)
    assert (chunk.start, chunk.end, chunk.own()) == (0x20, 0x90, 5)
    assert [(c.start, c.end) for c in chunk.children] == [(0x30, 0x50)]
    assert (term.start, term.end) == (0xA0, 0xC0)


def test_register_sweep_counts_the_term_loops_trips():
    instrs = roofline.functions(REGISTER_LISTING)["rows"]
    # Pair loop 0x20-0x90: 5 own instructions (2 LDS); 6 terms run its term loop 6 times
    # (3 instructions, 1 MUFU each).
    got = roofline.register_sweep_per_pair(instrs, d=16, terms=6)
    assert got == {"all": 5 + 6 * 3, "memory": 2, "mufu": 6}


def test_chunk_sweep_counts_chunks_staging_and_terms_per_partner():
    instrs = roofline.functions(CHUNK_LISTING)["tiles"]
    # float32: tiles of 32 partners, chunks of 16 coordinates. D = 40: 3 chunk trips, each
    # 5 own instructions (1 LDS) and 4 staging trips (32 x 16 values over 128 threads) of 3
    # (LDG, STS); 5 terms: 5 term trips of 3 (1 MUFU); 3 own (1 LDS). Then per partner.
    got = roofline.chunk_sweep_per_pair(instrs, d=40, terms=5, dtype="float32")
    chunk = {"all": 5 + 4 * 3, "memory": 1 + 4 * 2}
    assert got == pytest.approx({"all": (3 + 3 * chunk["all"] + 5 * 3) / 32,
                                 "memory": (1 + 3 * chunk["memory"]) / 32, "mufu": 5 / 32})


def test_estimate_and_floor_by_hand():
    # n = 128: one block, one SM; 128^2 pairs / 32 lanes = 512 warp instructions per
    # instruction a pair, 4 a clock: 128 clocks per instruction.
    per = {"all": 10.0, "memory": 0.0, "mufu": 0.0}
    assert roofline.estimate_ms(128, per) == pytest.approx(10 * 128 / roofline.CLOCK_HZ * 1e3)
    # n = 4096 in 16 partner ranges: 512 blocks fill the 132 SMs, and the 16 slabs of
    # 4096 x 64 floats are read once and the gradient written (17 MiB at 3.35 TB/s).
    assert roofline.estimate_ms(4096, per, 16, 64, 4) == pytest.approx(
        (4096**2 / 32 * 10 / (132 * 4) / roofline.CLOCK_HZ + 17 * 4096 * 64 * 4 / 3.35e12) * 1e3)


def test_partner_ranges_are_the_engines(tmp_path):
    """bench/roofline.py's partner_ranges against csrc/common/partner_split.h itself,
    compiled for the CPU, over sizes that cross every limit (the blocks aimed at, the
    partners a range keeps, the slab budget, ranges rounded to whole tiles)."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    sizes = [(r, p, d, e) for r in (1, 2, 127, 128, 300, 1000, 4096, 16384, 65536, 300000)
             for p in (1, 31, 129, 1000, 4096, 65536) for d in (1, 16, 64, 512) for e in (4, 8)]
    source = tmp_path / "split.cpp"
    source.write_text('#include <cstdio>\n#include "common/partner_split.h"\nint main() {\n' + "".join(
        f'  std::printf("%lld\\n", static_cast<long long>(gaussreg::partner_split({r}, {p}, {d}, {e}).count));\n'
        for r, p, d, e in sizes) + "}\n")
    exe = tmp_path / "split"
    subprocess.run([cxx, "-std=c++17", "-I", str(ROOT / "csrc"), str(source), "-o", str(exe)], check=True)
    counts = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    assert counts == [roofline.partner_ranges(r, p, d, e) for r, p, d, e in sizes]
    assert roofline.partner_ranges(4096, 4096, 64, 4) == 16 and roofline.partner_ranges(65536, 65536, 64, 4) == 1
    # D = 64 at n = 65536: 2 D FMA per ordered pair over 132 SMs x 128 lanes.
    assert roofline.floor_ms(65536, 64, 1, "float32") == pytest.approx(
        65536**2 * 128 / (132 * 128) / roofline.CLOCK_HZ * 1e3)


def test_committed_table_is_the_committed_rows():
    rows = json.loads(roofline.JSON_OUT.read_text())["rows"]
    assert {(r["dtype"], r["D"]) for r in rows} == {(t, d) for t in ("float32", "float64") for d in roofline.DIMS}
    assert roofline.table(rows) in roofline.TABLE_OUT.read_text()
