"""Losses on a global batch split over ranks: W processes against one process on the whole batch.

Each loss's forward + backward on the global batch of N latents is timed two ways, A B A B
in one run: (A) one process holding all N points, (B) W processes (torch.distributed,
gloo on CPU or NCCL on GPUs) holding N / W points each with ``process_group="world"``.
B's time of a step is the slowest rank's, from a barrier to the end of its backward.
The pair-sum losses split their pairs over the ranks (each rank evaluates about 1/W of
them); ``cdf_attraction`` still repeats the whole statistic on every rank.

Also recorded per rank and step: the bytes of this rank's tensors handed to collectives
(``payload``) and what ring algorithms then receive on each rank (all-gather (W - 1)
times the input, all-reduce 2 (W - 1) / W times it, broadcast once).

    gaussreg bench distributed                       # N = 8192, D = 64, 2 gloo ranks x 1 thread
    gaussreg bench distributed --world 1 --backend nccl --device cuda   # one GPU: the NCCL path
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import _environment, _output

LOSSES: Dict[str, Callable] = {}


def _register_losses() -> None:
    import gaussreg

    LOSSES.update({
        "gaussian_l2_to_normal": lambda z, y, pg: gaussreg.gaussian_l2_to_normal(z, 1.0, process_group=pg),
        "gaussian_l2": lambda z, y, pg: gaussreg.gaussian_l2(z, y, 1.0, process_group=pg),
        "mmd": lambda z, y, pg: gaussreg.mmd(z, y, process_group=pg),
        "cw_distance": lambda z, y, pg: gaussreg.cw_distance(z, log=True, process_group=pg),
        "cdf_attraction": lambda z, y, pg: gaussreg.cdf_attraction(z, process_group=pg),
    })


class _Tally:
    """Bytes of this rank's tensors handed to the collectives gaussreg calls, while on."""

    def __init__(self, world: int):
        self.world, self.on = world, False
        self.payload = self.received = 0
        self._originals = {}
        for name, received in (("all_gather", lambda b: (world - 1) * b),
                               ("all_reduce", lambda b: 2 * (world - 1) * b / world),
                               ("broadcast", lambda b: b)):
            original = getattr(dist, name)
            self._originals[name] = original
            setattr(dist, name, self._wrap(original, received))

    def _wrap(self, original, received):
        def counted(*args, **kwargs):
            if self.on:
                tensor = args[1] if original is self._originals.get("all_gather") else args[0]
                nbytes = tensor.numel() * tensor.element_size()
                self.payload += nbytes
                self.received += received(nbytes)
            return original(*args, **kwargs)
        return counted

    def restore(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)


def _step(loss, z: torch.Tensor, y: torch.Tensor, pg) -> float:
    """Seconds of one forward + backward of ``loss`` in z (a fresh leaf)."""
    z = z.detach().clone().requires_grad_(True)
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    t0 = time.perf_counter()
    loss(z, y, pg).backward()
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    return time.perf_counter() - t0


def _slowest(seconds: float, device: torch.device) -> float:
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _rank_main(rank: int, opts: dict, init_file: str, out_path: str) -> None:
    world = opts["world"]
    dist.init_process_group(opts["backend"], init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=opts["timeout"]))
    try:
        torch.set_num_threads(opts["threads"])
        device = torch.device(f"cuda:{rank}") if opts["backend"] == "nccl" else torch.device(opts["device"])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _register_losses()
        n, d, dtype = opts["n"], opts["dim"], getattr(torch, opts["dtype"])
        g = torch.Generator().manual_seed(0)
        z_all = torch.randn(n, d, generator=g, dtype=dtype).to(device)
        y_all = torch.randn(n, d, generator=g, dtype=dtype).to(device)
        start, stop = rank * n // world, (rank + 1) * n // world
        z_mine, y_mine = z_all[start:stop], y_all[start:stop]
        tally = _Tally(world)
        rows = []
        for name in opts["losses"]:
            loss = LOSSES[name]
            one, split = [], []
            for repeat in range(opts["repeats"] + 1):  # the first pair is the warm-up
                dist.barrier()
                t_one = _step(loss, z_all, y_all, None) if rank == 0 else 0.0
                dist.barrier()
                tally.on = repeat == 0
                t_split = _step(loss, z_mine, y_mine, "world")
                tally.on = False
                t_split = _slowest(t_split, device)
                if repeat:
                    one.append(_slowest(t_one, device))
                    split.append(t_split)
            row = {"loss": name, "one_process_s": one, "split_s": split,
                   "one_process_median_s": statistics.median(one), "split_median_s": statistics.median(split),
                   "payload_bytes": tally.payload, "received_bytes_ring": tally.received}
            row["speedup"] = row["one_process_median_s"] / row["split_median_s"]
            tally.payload = tally.received = 0
            rows.append(row)
            if rank == 0:
                print(f"{name:>22}  one process {row['one_process_median_s'] * 1e3:9.1f} ms   {world} ranks "
                      f"{row['split_median_s'] * 1e3:9.1f} ms   x{row['speedup']:5.2f}   payload "
                      f"{tally_mib(row['payload_bytes'])} MiB, received {tally_mib(row['received_bytes_ring'])} MiB "
                      "per rank and step", flush=True)
        tally.restore()
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown (a gloo worker thread can deadlock it; see examples/ddp_train.py).
    os._exit(0)


def tally_mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:.2f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaussreg bench distributed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Output: a table on stdout and distributed.json under "
                                       f"./{_output.DEFAULT_RESULTS_DIR}/<device>/ (--results-dir: elsewhere).")
    p.add_argument("--n", type=int, default=8192, help="global batch size N (default 8192)")
    p.add_argument("--dim", type=int, default=64, help="D (default 64)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--world", type=int, default=2, help="processes W (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per process, also the one process's (default 1)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo on CPU (default), nccl on GPUs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (with --backend nccl: rank r on cuda:r)")
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME",
                   help="default: gaussian_l2_to_normal gaussian_l2 mmd cw_distance cdf_attraction")
    p.add_argument("--repeats", type=int, default=3, help="timed A B pairs after one warm-up pair (default 3)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds a collective may wait (default 1800)")
    p.add_argument("--results-dir", type=Path, default=Path(_output.DEFAULT_RESULTS_DIR))
    p.add_argument("--no-save", action="store_true", help="print only")
    return p


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = _parser().parse_args(argv)
    _register_losses()
    losses = args.losses or list(LOSSES)
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        _parser().error(f"unknown loss(es) {unknown}; known: {list(LOSSES)}")
    if args.backend == "nccl" and torch.cuda.device_count() < args.world:
        _parser().error(f"--backend nccl needs {args.world} GPUs (one a rank), torch sees {torch.cuda.device_count()}")
    device = torch.device("cuda:0" if args.backend == "nccl" else args.device)
    name = _environment.device_name(device)
    load = os.getloadavg()
    print(f"distributed: {name}, N = {args.n}, D = {args.dim}, {args.dtype}, {args.world} {args.backend} ranks x "
          f"{args.threads} thread(s) against 1 process x {args.threads}; {args.repeats} A B pairs; "
          f"load {load[0]:.2f}", flush=True)
    opts = dict(vars(args), losses=losses, results_dir=None)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_rank_main, args=(opts, os.path.join(tmp, "init"), out), nprocs=args.world, join=True)
        with open(out) as f:
            rows = json.load(f)
    meta = {"family": "distributed", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": name, "torch": torch.__version__, "git_commit": _environment.build_commit(),
            "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(), "cpu_count": os.cpu_count(),
            "argv": list(sys.argv[1:] if argv is None else argv),
            **{k: getattr(args, k) for k in ("n", "dim", "dtype", "world", "threads", "backend", "repeats")}}
    print(f"load at end {meta['loadavg_at_end'][0]:.2f}")
    if not args.no_save:
        out_dir = args.results_dir / _environment.slug(name)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"distributed-w{args.world}-{args.backend}.json"
        with open(path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
