"""Registers, spills, shared memory and occupancy of every CUDA kernel, from the compiler alone.

No GPU needed: each ``csrc/cuda/*.cu`` is compiled to PTX for one architecture (its
``.maxntid`` gives the block size a kernel declares with ``__launch_bounds__``), then
assembled by ``ptxas -v`` (registers, stack, spill bytes, static shared memory of every
kernel instantiation). The occupancy is the resident warps per SM over the SM's maximum,
limited by registers, static shared memory, warps and blocks (Hopper's limits below), at
the declared block size; dynamic shared memory (CUB's temporaries) is not counted.

    python3 bench/ptxas_report.py              # writes bench/results/ptxas-sm90.json, prints a table
    python3 bench/ptxas_report.py --print      # the table of the committed report, no compiling

``tests/test_ptxas_report.py`` holds the committed report to the sources (a hash of
csrc/cuda and csrc/common) and to its gates: no gaussreg kernel spills, and each reaches
25% occupancy unless it is listed there with the reason it need not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "bench" / "results" / "ptxas-sm90.json"
SOURCES = ("csrc/cuda", "csrc/common")

# Hopper (sm_90) per-SM limits (CUDA C Programming Guide, compute capability 9.0).
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = 233472  # 228 KiB
SHARED_RESERVED_PER_BLOCK = 1024


def source_hash(root: Path = ROOT) -> str:
    """sha256 over the CUDA sources and the shared headers (paths and contents, sorted)."""
    h = hashlib.sha256()
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def occupancy(registers: int, shared: int, threads: int) -> Dict[str, float]:
    """Resident warps per SM (and what limits them) for one kernel at ``threads`` per block."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    limits = {
        "registers": (REGISTERS_PER_SM // per_warp) // warps,
        "warps": MAX_WARPS_PER_SM // warps,
        "blocks": MAX_BLOCKS_PER_SM,
        "shared": SHARED_PER_SM // (shared + SHARED_RESERVED_PER_BLOCK),
    }
    blocks = min(limits.values())
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / MAX_WARPS_PER_SM,
            "limited_by": min(limits, key=limits.get)}


def _demangle(names: List[str]) -> Dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return dict(zip(names, out.stdout.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def _block_sizes(ptx: str) -> Dict[str, Optional[int]]:
    """Entry name -> the threads of its ``.maxntid`` (None: no __launch_bounds__)."""
    sizes = {}
    for match in re.finditer(r"^(?:\.visible\s+)?\.entry\s+(\S+?)\(.*?\n\{", ptx, re.S | re.M):
        header = match.group(0)
        bound = re.search(r"\.maxntid (\d+), (\d+), (\d+)", header)
        sizes[match.group(1)] = None if bound is None else int(bound[1]) * int(bound[2]) * int(bound[3])
    return sizes


def _ptxas_info(log: str) -> Dict[str, dict]:
    """Entry name -> registers, stack, spill and shared-memory bytes from ``ptxas -v``."""
    info, current = {}, None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)'", line)
        if entry:
            current = entry[1]
            info[current] = {}
            continue
        if current is None:
            continue
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if frame and "stack_frame" not in info[current]:
            info[current].update(stack_frame=int(frame[1]), spill_stores=int(frame[2]), spill_loads=int(frame[3]))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            smem = re.search(r"(\d+) bytes smem", line)
            info[current].update(registers=int(used[1]), shared_static=int(smem[1]) if smem else 0)
            current = None
    return info


def compile_file(cu: Path, arch: str, includes: List[str]) -> List[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = Path(tmp) / (cu.stem + ".ptx")
        subprocess.run(["nvcc", f"-arch=sm_{arch}", "-std=c++17", "--expt-relaxed-constexpr", "-I", str(ROOT / "csrc"),
                        *includes, "-ptx", str(cu), "-o", str(ptx_path)], check=True)
        ptx = ptx_path.read_text()
        log = subprocess.run(["ptxas", f"-arch=sm_{arch}", "-v", str(ptx_path), "-o", str(Path(tmp) / "x.cubin")],
                             check=True, capture_output=True, text=True)
    sizes, info = _block_sizes(ptx), _ptxas_info(log.stderr + log.stdout)
    names = _demangle(list(info))
    rows = []
    for mangled, fields in info.items():
        threads = sizes.get(mangled)
        row = {"file": cu.relative_to(ROOT).as_posix(), "kernel": names[mangled], "block_threads": threads, **fields}
        row.update(occupancy(fields["registers"], fields["shared_static"], threads or 256))
        if threads is None:
            row["note"] = "no __launch_bounds__: occupancy at 256 threads a block"
        rows.append(row)
    return rows


def nvcc_version() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\S+?),", out)
    return match[1] if match else out.strip().splitlines()[-1]


def table(report: dict) -> str:
    lines = [f"sm_{report['arch']}, nvcc {report['nvcc']}: registers, spill bytes (stores/loads), static shared memory, "
             "threads a block, occupancy and its limit"]
    for r in sorted(report["kernels"], key=lambda r: (r["occupancy"], r["kernel"])):
        lines.append(f"{r['registers']:4d} regs  spill {r['spill_stores']:4d}/{r['spill_loads']:<4d} "
                     f"smem {r['shared_static']:6d}  {str(r['block_threads'] or '-'):>4}  "
                     f"{r['occupancy']:6.1%} ({r['limited_by']:9s})  {r['kernel'][:150]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90")
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--print", action="store_true", help="print the committed report's table, compile nothing")
    args = parser.parse_args(argv)
    if args.print:
        print(table(json.loads(args.out.read_text())))
        return 0
    includes = subprocess.run([sys.executable, "-m", "pybind11", "--includes"], capture_output=True, text=True,
                              check=True).stdout.split()
    kernels = []
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        print(f"compiling {cu.relative_to(ROOT)}", file=sys.stderr, flush=True)
        kernels += compile_file(cu, args.arch, includes)
    report = {"arch": args.arch, "nvcc": nvcc_version(), "source_sha256": source_hash(),
              "limits": {"registers_per_sm": REGISTERS_PER_SM, "max_warps_per_sm": MAX_WARPS_PER_SM,
                         "max_blocks_per_sm": MAX_BLOCKS_PER_SM, "shared_per_sm": SHARED_PER_SM},
              "kernels": kernels}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
