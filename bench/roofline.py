"""Instructions per pair of the CUDA pair-sum kernels, read from their SASS, against the floor.

No GPU needed. Each pair-sum stem (``csrc/cuda/{gaussian_l2,mmd,cramer_wold}.cu``) is
compiled for sm_90 as the build compiles it, disassembled (``cuobjdump -sass``, which needs
``nvdisasm`` beside it), and the loops of its kernels are found from their backward
branches. One thread owns a row and sweeps the partners in tiles staged in shared memory;
the instructions one ordered pair costs that thread are counted from the loop nest:

- the register sweep (``pair_rows_kernel``, float32 at D = 16, 32, 64): the pair loop's
  body, once a pair, with its term loop run terms / 4 times (nvcc unrolls it 4 times; the
  remainder terms are straight code in the pair loop, counted once whatever their number);
- the chunked sweep (``pair_tiles_kernel``, every other D and float64): a tile of kTile
  partners costs the tile loop's own code (the kernel values), one rolled term loop per
  partner (``terms`` trips each) and ceil(D / kChunk) trips of the two chunk loops (the
  loops that synchronise: distances, then gradient), whose staging loops run
  kTile kChunk / 128 times; a pair costs a tile's kTile-th.

The estimate for an H100 SXM (132 SMs at 1.98 GHz) is the largest of three throughput
bounds over the n^2 ordered pairs a self sum visits: instruction issue (4 warp
instructions a clock per SM), the load/store unit (one warp's shared or global access a
clock per SM) and the transcendental unit (16 lanes a clock per SM), on the SMs the grid
fills: ceil(n / 128) row blocks, times the partner ranges of common/partner_split.h (both
sweeps; n = 4096: 32 x 16 blocks, not 32), plus, with more than one range, a read
of the ranges' gradient slabs and a write of the gradient at HBM speed. It assumes latency
is hidden, which at 8 to 20 warps per SM it may not be, so the kernels are at least this
slow. The floor is the arithmetic a pair needs, 2 D fused multiply-adds per ordered pair
(the distance's and the gradient's), at the FP32 or FP64 FMA peak, or the transcendental
unit's bound when that is larger.

    python3 bench/roofline.py            # writes bench/results/roofline-sm90.{json,md}, prints the table
    python3 bench/roofline.py --print    # the committed table, no compiling

The tools come with the CUDA toolkit, or from PyPI: ``pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm`` (their ``bin`` folder is searched too).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
JSON_OUT, TABLE_OUT = RESULTS / "roofline-sm90.json", RESULTS / "roofline-sm90.md"

# H100 SXM5 (the issue's reference GPU; the H200 has the same SMs and clocks).
SMS, CLOCK_HZ = 132, 1.98e9
ISSUE_PER_SM = 4  # warp instructions a clock (one per scheduler)
LSU_PER_SM = 1  # warp-wide shared/global accesses a clock
MUFU_LANES_PER_SM = 16
FMA_LANES_PER_SM = {"float32": 128, "float64": 64}
ROWS_PER_BLOCK = 128  # csrc/cuda/pair_sum.cuh kRowsPerBlock
# csrc/common/partner_split.h: blocks aimed at, partners a range keeps at least, bytes the
# slabs of partial gradients may take.
TARGET_BLOCKS, MIN_RANGE_PARTNERS, SLAB_BUDGET = 512, 128, 64 << 20
HBM_BYTES_PER_S = 3.35e12
ELEMENT_BYTES = {"float32": 4, "float64": 8}
CHUNK_SWEEP = {"float32": (32, 16), "float64": (16, 8)}  # common/pair_tiles.h kTile, kChunk

SIZES = (4096, 16384, 65536)
DIMS = (16, 64, 128, 512)
# The kernels of the table: (stem, C++ kernel class, terms it sums in the bench's configuration).
KERNELS = (
    ("gaussian_l2", "ExpSumKernel", 1, "gaussian_l2_to_normal(z), sigma = 1"),
    ("gaussian_l2", "GaussPerPointKernel", 1, "gaussian_l2_to_normal(z, sigma per point)"),
    ("mmd", "ImqSumKernel", 7, "mmd(z, y), IMQ over the 7 default scales"),
    ("mmd", "ExpSumKernel", 7, "mmd(z, y, kernel='rbf'), 7 scales"),
    ("cramer_wold", "CwApproxKernel", 1, "cw_distance(z), kernel='approx'"),
)
MEMORY_OPS = ("LDS", "LDG", "LDL", "STS", "STG", "STL")
# nvcc unrolls the loop over a kernel's terms 4 times (its remainder is straight code, counted
# once): a float term loop shows it as 4 MUFU; a double one, whose exp has no MUFU, does not.
TERM_UNROLL = 4


# ---------------------------------------------------------------------------- SASS


def find_tool(name: str) -> Optional[str]:
    """``name`` on PATH, in CUDA_HOME/bin, or in a pip-installed nvidia/cu*/bin folder."""
    found = shutil.which(name)
    if found:
        return found
    folders = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"]
    folders += sorted(Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin"))
    for folder in folders:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def compile_sass(stem: str, workdir: Path) -> str:
    """The SASS of csrc/cuda/<stem>.cu for sm_90, compiled as CMakeLists.txt compiles it."""
    import pybind11

    cubin = workdir / f"{stem}.cubin"
    subprocess.run([find_tool("nvcc") or "nvcc", "-std=c++17", "-O3", "-arch=sm_90", "--expt-relaxed-constexpr",
                    "-cubin", "-I", str(ROOT / "csrc"), "-I", pybind11.get_include(),
                    "-I", sysconfig.get_paths()["include"], "-o", str(cubin), str(ROOT / "csrc" / "cuda" / f"{stem}.cu")],
                   check=True, capture_output=True, text=True)
    cuobjdump, nvdisasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(nvdisasm).parent), os.environ.get("PATH", "")]))
    return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True,
                          env=env).stdout


def functions(sass: str) -> Dict[str, List[Tuple[int, str]]]:
    """Mangled name -> [(address, instruction text)] of every function in a cuobjdump listing."""
    out: Dict[str, List[Tuple[int, str]]] = {}
    current = None
    for line in sass.splitlines():
        name = re.search(r"Function : (\S+)", line)
        if name:
            current = out.setdefault(name.group(1), [])
            continue
        instr = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if instr and current is not None:
            current.append((int(instr.group(1), 16), instr.group(2).strip()))
    return out


def opcode(text: str) -> str:
    """The operation without its predicate guard and modifiers: "@!P0 LDS.64 R4, [R2]" -> "LDS"."""
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0].split(".")[0]


class Loop:
    """Instructions [start, end] (end: the backward branch), with the loops nested in it."""

    def __init__(self, start: int, end: int, instrs: Sequence[Tuple[int, str]]):
        self.start, self.end = start, end
        self.ops = [opcode(t) for a, t in instrs if start <= a <= end]
        self.children: List["Loop"] = []

    def count(self, *names: str) -> int:
        return sum(op in names for op in self.ops)

    def own(self) -> int:
        """Instructions of this loop not inside a nested loop."""
        return len(self.ops) - sum(len(c.ops) for c in self.children)


def loop_tree(instrs: Sequence[Tuple[int, str]]) -> List[Loop]:
    """The outermost loops of a function, each with its nested loops."""
    spans = set()
    for address, text in instrs:
        target = re.search(r"0x([0-9a-f]+)", text) if opcode(text) == "BRA" else None
        if target and int(target.group(1), 16) < address:
            spans.add((int(target.group(1), 16), address))
    loops = [Loop(s, e, instrs) for s, e in sorted(spans, key=lambda se: (se[0], -se[1]))]
    roots: List[Loop] = []
    for loop in sorted(loops, key=lambda lp: lp.end - lp.start, reverse=True):
        parent = None
        for other in _walk(roots):
            if other.start <= loop.start and loop.end <= other.end and (other.start, other.end) != (loop.start, loop.end):
                parent = other  # keep descending: the innermost enclosing loop wins
        (parent.children if parent else roots).append(loop)
    return roots


def _walk(loops: Sequence[Loop]):
    for loop in loops:
        yield loop
        yield from _walk(loop.children)


# ---------------------------------------------------------------------------- per pair


def register_sweep_per_pair(kernel: List[Tuple[int, str]], d: int, terms: int) -> Dict[str, float]:
    """pair_rows_kernel (float32, D of 16, 32, 64): the pair loop inside the tile loop (the
    loop that synchronises), once a pair, with its nested term loop's trips."""
    roots = loop_tree(kernel)
    tile_loop = max(_walk(roots), key=lambda lp: lp.count("BAR") * 10**6 + len(lp.ops))
    pair_loop = max((c for c in tile_loop.children if c.count("LDS")), key=lambda lp: len(lp.ops))
    return _loop_cost(pair_loop, d, terms, staging_trips=1)


def chunk_sweep_per_pair(kernel: List[Tuple[int, str]], d: int, terms: int, dtype: str) -> Dict[str, float]:
    """pair_tiles_kernel (every other D, float64): a tile of kTile partners costs the tile
    loop's own instructions (its kernel values, straight code), its term loops (one per
    partner, ``terms`` trips each) and ceil(D / kChunk) trips of each chunk loop (the two
    loops that synchronise: distances, then gradient); a pair costs a tile's kTile-th."""
    tile, chunk = CHUNK_SWEEP[dtype]
    roots = loop_tree(kernel)
    tile_loop = max(_walk(roots), key=lambda lp: lp.count("BAR") * 10**6 + len(lp.ops))
    staging = math.ceil(tile * chunk / ROWS_PER_BLOCK)
    totals = {k: float(v) for k, v in _own_counts(tile_loop).items()}
    for child in tile_loop.children:
        trips = math.ceil(d / chunk) if child.count("BAR") else terms
        for key, value in _loop_cost(child, d, terms, staging).items():
            totals[key] += trips * value
    return {key: value / tile for key, value in totals.items()}


def _counts(loop: Loop) -> Dict[str, float]:
    return {"all": len(loop.ops), "memory": loop.count(*MEMORY_OPS), "mufu": loop.count("MUFU")}


def _own_counts(loop: Loop) -> Dict[str, float]:
    inside = [op for c in loop.children for op in c.ops]
    extra = collections.Counter(loop.ops)
    extra.subtract(collections.Counter(inside))
    return {"all": loop.own(), "memory": sum(extra[m] for m in MEMORY_OPS), "mufu": extra["MUFU"]}


def _loop_cost(loop: Loop, d: int, terms: int, staging_trips: int) -> Dict[str, float]:
    """One iteration of ``loop``: its own instructions and its nested loops' trips: a loop
    that loads from global memory stages a tile (``staging_trips``), any other runs the
    kernel's terms (unrolled TERM_UNROLL times where the compiler unrolled it)."""
    totals = {k: float(v) for k, v in _own_counts(loop).items()}
    for child in loop.children:
        if child.count("LDG"):
            trips = staging_trips
        else:
            trips = terms // (child.count("MUFU") or TERM_UNROLL)
        for key, value in _loop_cost(child, d, terms, staging_trips).items():
            totals[key] += trips * value
    return totals


# ---------------------------------------------------------------------------- the table


def partner_ranges(rows: int, partners: int, d: int, element: int) -> int:
    """The partner ranges of a sweep (csrc/common/partner_split.h partner_split)."""
    blocks = math.ceil(rows / ROWS_PER_BLOCK)
    wanted = min(math.ceil(TARGET_BLOCKS / blocks), max(1, partners // MIN_RANGE_PARTNERS),
                 max(1, SLAB_BUDGET // (element * max(rows * d, 1))))
    if partners <= 0 or wanted <= 1:
        return 1
    width = math.ceil(math.ceil(partners / wanted) / 32) * 32
    return math.ceil(partners / width)


def estimate_ms(n: int, instrs: Dict[str, float], ranges: int = 1, d: int = 0, element: int = 4) -> float:
    """Throughput bound of a self sum's n^2 ordered pairs on the SMs its grid (row blocks x
    partner ranges) fills, plus the sum of the ranges' gradient slabs (n x d each)."""
    sms = min(SMS, math.ceil(n / ROWS_PER_BLOCK) * ranges)
    warps = n * n / 32
    issue = warps * instrs["all"] / (sms * ISSUE_PER_SM)
    lsu = warps * instrs["memory"] / (sms * LSU_PER_SM)
    mufu = n * n * instrs["mufu"] / (sms * MUFU_LANES_PER_SM)
    slabs = (ranges + 1) * n * d * element / HBM_BYTES_PER_S if ranges > 1 else 0.0
    return (max(issue, lsu, mufu) / CLOCK_HZ + slabs) * 1e3


def floor_ms(n: int, d: int, terms: int, dtype: str) -> float:
    fma = n * n * 2 * d / (SMS * FMA_LANES_PER_SM[dtype])
    mufu = n * n * terms / (SMS * MUFU_LANES_PER_SM)
    return max(fma, mufu) / CLOCK_HZ * 1e3


def kernel_name(kernels: Dict[str, list], cls: str, dtype: str, dt: Optional[int]) -> str:
    """The value + gradient instantiation: the register sweep at D = dt, else the chunked one."""
    t = "f" if dtype == "float32" else "d"
    if dt is None:
        pattern = f"pair_tiles_kernelI{t}NS_{len(cls)}{cls}I{t}EELb1ELb1E"
    else:
        pattern = f"pair_rows_kernelI{t}NS_{len(cls)}{cls}I{t}EELi{dt}ELb1ELb1E"
    matches = [k for k in kernels if pattern in k]
    if len(matches) != 1:
        raise LookupError(f"{cls} {dtype} D={dt}: {len(matches)} kernels match {pattern}")
    return matches[0]


def build_rows() -> List[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sass = {stem: functions(compile_sass(stem, Path(tmp))) for stem in {k[0] for k in KERNELS}}
    for stem, cls, terms, what in KERNELS:
        for dtype in ("float32", "float64"):
            for d in DIMS:
                compiled = dtype == "float32" and d in (16, 32, 64)
                if compiled:
                    instrs = register_sweep_per_pair(sass[stem][kernel_name(sass[stem], cls, dtype, d)], d, terms)
                else:
                    instrs = chunk_sweep_per_pair(sass[stem][kernel_name(sass[stem], cls, dtype, None)], d, terms,
                                                  dtype)
                row = {"stem": stem, "kernel": cls, "call": what, "dtype": dtype, "D": d, "terms": terms,
                       "path": "registers (pair_rows_kernel)" if compiled else "chunks (pair_tiles_kernel)",
                       "instructions_per_pair": round(instrs["all"], 1),
                       "memory_per_pair": round(instrs["memory"], 1), "mufu_per_pair": round(instrs["mufu"], 1),
                       "fma_floor_per_pair": 2 * d, "estimate_ms": {}, "floor_ms": {}, "ratio": {}}
                for n in SIZES:
                    element = ELEMENT_BYTES[dtype]
                    ranges = partner_ranges(n, n, d, element)
                    est, flo = estimate_ms(n, instrs, ranges, d, element), floor_ms(n, d, terms, dtype)
                    row["estimate_ms"][str(n)] = round(est, 3)
                    row["floor_ms"][str(n)] = round(flo, 3)
                    row["ratio"][str(n)] = round(est / flo, 1)
                rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> str:
    head = ("| kernel | dtype | D | path | instr / pair | memory / pair | "
            + " | ".join(f"n = {n}: est / floor ms (x)" for n in SIZES) + " |")
    lines = [head, "|" + "---|" * (6 + len(SIZES))]
    for r in rows:
        cells = [f"{r['estimate_ms'][str(n)]:.3g} / {r['floor_ms'][str(n)]:.3g} ({r['ratio'][str(n)]}x)" for n in SIZES]
        lines.append(f"| {r['stem']} {r['kernel']} ({r['terms']} terms) | {r['dtype']} | {r['D']} | {r['path']} | "
                     f"{r['instructions_per_pair']:.0f} | {r['memory_per_pair']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the committed table, compile nothing")
    args = parser.parse_args(argv)
    if args.print:
        print(TABLE_OUT.read_text())
        return 0
    missing = [t for t in ("nvcc", "cuobjdump", "nvdisasm") if find_tool(t) is None]
    if missing:
        print(f"roofline: {', '.join(missing)} not found (see the module docstring)", file=sys.stderr)
        return 2
    rows = build_rows()
    model = {"gpu": "H100 SXM (sm_90): 132 SMs at 1.98 GHz", "issue_per_sm_per_clock": ISSUE_PER_SM,
             "lsu_warp_accesses_per_sm_per_clock": LSU_PER_SM, "mufu_lanes_per_sm_per_clock": MUFU_LANES_PER_SM,
             "fma_lanes_per_sm_per_clock": FMA_LANES_PER_SM, "pairs": "n^2 ordered pairs (self sum)",
             "floor": "2 D FMA per ordered pair at the FMA peak, or the MUFU bound if larger"}
    JSON_OUT.write_text(json.dumps({"model": model, "rows": rows}, indent=1) + "\n")
    text = table(rows)
    TABLE_OUT.write_text("# CUDA pair sums: SASS instructions per pair and an H100 estimate against the floor\n\n"
                         "Written by `python3 bench/roofline.py` (see its docstring for the model). Estimates, "
                         "not measurements: no kernel of this table has run on a GPU yet.\n\n" + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
