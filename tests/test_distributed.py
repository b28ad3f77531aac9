"""Global-batch losses under DDP (gloo, CPU): each rank's parameter gradients after DDP's
averaging equal the single-process gradients on the concatenated batch, exactly, for 1, 2,
3 and 4 processes with uneven local batches (one rank with a single point). The classic
bug, a gradient off by a factor of world_size, is reproduced with a plain all-gather to
show that the check sees it. The pair sums are split across the ranks: each rank's pair
count is its share, and the shares cover every pair once. A rank whose input checks fail
makes every rank raise."""
import datetime
import importlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import assert_close

import gaussreg
from gaussreg.testing import random_points

SIZES = {1: [40], 2: [23, 31], 3: [17, 30, 9], 4: [1, 12, 7, 20]}  # uneven on purpose


def _losses(process_group, prior):
    """name -> loss of the latents z; `prior` is this rank's share of a given prior sample."""
    return {
        "cdf_p1": lambda z: gaussreg.cdf_attraction(z, process_group=process_group),
        "cdf_p2": lambda z: gaussreg.cdf_attraction(z, p=2, process_group=process_group),
        "cw": lambda z: gaussreg.cw_distance(z, log=True, process_group=process_group),
        "cw_exact": lambda z: gaussreg.cw_distance(z, kernel="exact", process_group=process_group),
        "l2": lambda z: gaussreg.gaussian_l2_to_normal(z, 0.8, process_group=process_group),
        "l2_widths": lambda z: gaussreg.gaussian_l2_to_normal(z, 0.6 + prior[:, 0].abs(), process_group=process_group),
        "l2_mean_field": lambda z: gaussreg.gaussian_l2_to_normal(z, "mean_field", process_group=process_group),
        "l2_two_samples": lambda z: gaussreg.gaussian_l2(z, prior, 0.7, process_group=process_group),
        "mmd": lambda z: gaussreg.mmd(z, prior, process_group=process_group),
        "mmd_rbf_analytic": lambda z: gaussreg.mmd(z, "analytic", kernel="rbf", process_group=process_group),
        # Each rank seeds differently: the drawn prior sample must still be the first rank's.
        "mmd_drawn": lambda z: gaussreg.mmd(z, generator=_rank_generator(), process_group=process_group),
        "coord_torus": lambda z: gaussreg.coordinate_cdf_attraction(z, marginal="torus", process_group=process_group),
        "swae_prior": lambda z: gaussreg.sliced_wasserstein(z, p=1, prior_sample=prior, directions=_directions(),
                                                            process_group=process_group),
        # Each rank seeds differently: the directions must still be the first rank's.
        "swae_random": lambda z: gaussreg.sliced_wasserstein(z, num_projections=9, generator=_rank_generator(),
                                                             process_group=process_group),
        "epps_pulley": lambda z: gaussreg.epps_pulley(z, num_slices=9, generator=_rank_generator(),
                                                      process_group=process_group),
        "gmm_ks": lambda z: gaussreg.gmm_ks_loss(z, _mixture(), process_group=process_group),
    }


def _compilable_losses(process_group="world"):
    """Losses compiled with fullgraph=True under a process group (no user generator: dynamo
    cannot trace one)."""
    theta = _directions()
    return {
        "cdf_p2": lambda z: gaussreg.cdf_attraction(z, p=2, process_group=process_group),
        "swae": lambda z: gaussreg.sliced_wasserstein(z, directions=theta, process_group=process_group),
        "epps_pulley": lambda z: gaussreg.epps_pulley(z, directions=theta, process_group=process_group),
        "cw": lambda z: gaussreg.cw_distance(z, log=True, process_group=process_group),
        "l2": lambda z: gaussreg.gaussian_l2_to_normal(z, 0.8, process_group=process_group),
        # A second sample made row by row from z: each rank's share of it is made from its own rows.
        "mmd": lambda z: gaussreg.mmd(z, torch.tanh(z.detach()), process_group=process_group),
    }


def _directions():
    return random_points(7, 4, seed=13)


def _mixture():
    return gaussreg.GaussianMixture.separated(3, 4, distance=3.0, dtype=torch.float64)


def _rank_generator():
    rank = dist.get_rank() if dist.is_initialized() else 0
    return torch.Generator().manual_seed(5 + rank)


def _data(total):
    return random_points(total, 6, seed=11), random_points(total, 4, seed=12)


def _model():
    torch.manual_seed(0)  # the same initial weights in every process
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()


class _PlainGather(torch.autograd.Function):
    """The classic bug: all-gather forward, own slice of the local gradient backward (no sum)."""

    @staticmethod
    def forward(ctx, z, sizes, rank):
        widest = max(sizes)
        padded = z.new_zeros((widest, z.shape[1]))
        padded[: z.shape[0]] = z
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.start, ctx.size = sum(sizes[:rank]), sizes[rank]
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start: ctx.start + ctx.size], None, None


def _pair_counts(x_rank, y_rank):
    """Pairs this rank evaluates in one gaussian_l2_to_normal and one gaussian_l2 call."""
    engine = gaussreg.engines.pair_sum
    original, counted = engine._pair_sum_here, []  # each piece's pair sum, eager or through the op

    def counting(stem, kind, params, x, y, *args):
        counted.append(x.shape[0] * (x.shape[0] - 1) // 2 if y is None else x.shape[0] * y.shape[0])
        return original(stem, kind, params, x, y, *args)

    engine._pair_sum_here = counting
    try:
        counts = {}
        for name, call in (("self", lambda: gaussreg.gaussian_l2_to_normal(x_rank, 0.8, process_group="world")),
                           ("two_samples", lambda: gaussreg.gaussian_l2(x_rank, y_rank, 0.8, process_group="world"))):
            counted.clear()
            call()
            counts[name] = sum(counted)
        return counts
    finally:
        engine._pair_sum_here = original


CDF_SHARE_CASES = {  # the engine splits in row blocks of 8: n = 600 has 75
    "random": lambda: random_points(600, 5, seed=3),
    # 150 points 4 times over: zero distances and exact ties across bins and ranks
    "duplicated": lambda: random_points(150, 3, seed=4).repeat(4, 1),
    # 3 points far out: one row block, so one rank holds every pair and the others none;
    # every bin decided, no mixed pair to exchange
    "three_far": lambda: random_points(3, 5, seed=3) * 10,
    # targets on the sample's own distances (_share_target): nearly every bin mixed, so the
    # ranks cut them into leaves (the second level) before exchanging the mixed pairs
    "own_quantiles": lambda: random_points(400, 4, seed=8),
    # "random" with a sort budget of 50 mixed pairs a rank (SHARE_BUDGETS): the budget, the
    # least over the ranks, forces the second level
    "small_budget": lambda: random_points(600, 5, seed=3),
}
SHARE_BUDGETS = {"small_budget": 50 * 32}  # max_sort_bytes; a rank holds a mixed pair in 32 bytes
REFINED_SHARES = ("own_quantiles", "small_budget")


def _share_target(name, z):
    """Chi2, or for "own_quantiles" an Empirical target of z's own half squared distances,
    whose quantile at rank k is the k-th smallest key."""
    if name != "own_quantiles":
        return gaussreg.targets.Chi2(z.shape[1])
    i, j = torch.triu_indices(z.shape[0], z.shape[0], 1)
    return gaussreg.targets.Empirical(0.5 * ((z[i] - z[j]) ** 2).sum(1))


def _cdf_share(name, z_all):
    """This rank's pairs, the value and the gradient of its share of a split cdf_attraction
    distances term (p = 1)."""
    from gaussreg.engines import cdf_attraction as engine

    stats = {}
    z_all = z_all.contiguous().requires_grad_(True)
    target = _share_target(name, z_all.detach())
    source = engine.quantile_source(z_all, target, engine.plan(z_all.device, z_all.dtype, z_all.shape[0], target, None))
    value = engine.sharded_cdf_pairs(z_all, source, "world", stats, max_sort_bytes=SHARE_BUDGETS.get(name))
    value.backward()
    return stats, float(value.detach()), z_all.grad


def _failures(rank, world, z):
    """What each rank raises when one rank's input is bad (no rank may hang)."""
    bad = z.clone()
    if rank == 1:
        bad[0, 0] = float("nan")
    huge = torch.zeros(1, z.shape[1], dtype=z.dtype).expand(10 ** 9 if rank == world - 1 else 5, z.shape[1])
    cases = {
        "nan": lambda: gaussreg.gaussian_l2_to_normal(bad, process_group="world"),
        "nan_cdf": lambda: gaussreg.cdf_attraction(bad, process_group="world"),
        "memory": lambda: gaussreg.mmd(huge, process_group="world"),
        "dtype": lambda: gaussreg.cw_distance(z.float() if rank % 2 else z, process_group="world"),
    }
    raised = {}
    for name, call in cases.items():
        try:
            call()
            raised[name] = "no error"
        except (RuntimeError, ValueError, MemoryError) as exc:
            raised[name] = f"{type(exc).__name__}: {exc}"
    return raised


def _worker(rank, world, init_file, out_dir):
    # A collective that waits longer than this fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        # The batches here are far below where cdf_attraction's split pays: split them anyway.
        cdf_front = importlib.import_module("gaussreg.losses.cdf_attraction")
        small_splits = cdf_front._splits_pairs(torch.zeros(64, 8), 1, "world")
        cdf_front.SPLIT_MIN_PAIR_WORK = 0
        sizes = SIZES[world]
        x_all, prior_all = _data(sum(sizes))
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        results = {}
        for name, loss in _losses("world", prior_all[rows]).items():
            ddp.zero_grad()
            value = loss(ddp(x_all[rows]))
            value.backward()
            results[name] = (value.detach(), [p.grad.clone() for p in model.parameters()])
        # torch.compile(fullgraph=True): functional collectives, equal local batches (the first
        # min(sizes) rows of each rank's batch); uneven batches must raise, not gather wrong rows.
        equal = min(sizes)
        for name, loss in _compilable_losses().items():
            ddp.zero_grad()
            compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
            value = compiled(ddp(x_all[rows][:equal]))
            value.backward()
            results[f"compiled_{name}"] = (value.detach(), [p.grad.clone() for p in model.parameters()])
        try:
            torch.compile(_compilable_losses()["cdf_p2"], fullgraph=True, backend="aot_eager")(ddp(x_all[rows]))
            results["compiled_uneven"] = "no error"
        except RuntimeError as exc:
            results["compiled_uneven"] = str(exc)
        ddp.zero_grad()
        plain = gaussreg.cw_distance(_PlainGather.apply(ddp(x_all[rows]), sizes, rank), log=True)
        plain.backward()
        results["plain_gather_cw"] = (plain.detach(), [p.grad.clone() for p in model.parameters()])
        results["cdf_splits"] = (small_splits, cdf_front._splits_pairs(x_all[: sum(sizes)], 1, "world"))
        results["pair_counts"] = _pair_counts(x_all[rows][:, :4].clone(), prior_all[rows].clone())
        results["cdf_share"] = {name: _cdf_share(name, make()) for name, make in CDF_SHARE_CASES.items()}
        results["failures"] = _failures(rank, world, x_all[rows][:, :4].clone())
        mismatch = torch.zeros(5, 4 + rank, dtype=torch.float64)  # D differs across ranks
        try:
            gaussreg.cw_distance(mismatch, process_group="world")
            results["mismatch"] = "no error"
        except ValueError as exc:
            results["mismatch"] = str(exc)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: there the DDP reducer's destructor can deadlock with
    # gloo's worker thread over the GIL (torch 2.13; see examples/ddp_train.py).
    os._exit(0)


def _single_process(world):
    x_all, prior_all = _data(sum(SIZES[world]))
    model = _model()
    results = {}
    for name, loss in _losses(None, prior_all).items():
        model.zero_grad()
        value = loss(model(x_all))
        value.backward()
        results[name] = (value.detach(), [p.grad.clone() for p in model.parameters()])
    return results


def _single_process_equal_batches(world):
    """The compiled losses on one process: each rank's first min(sizes) rows, concatenated."""
    sizes = SIZES[world]
    x_all, _ = _data(sum(sizes))
    starts = [sum(sizes[:r]) for r in range(world)]
    x = torch.cat([x_all[s: s + min(sizes)] for s in starts])
    model = _model()
    results = {}
    for name, loss in _compilable_losses(None).items():
        model.zero_grad()
        value = loss(model(x))
        value.backward()
        results[name] = (value.detach(), [p.grad.clone() for p in model.parameters()])
    return results


@pytest.mark.parametrize("world", (1, 2, 3, 4))
def test_ddp_gradients_equal_the_single_process_gradient(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    expected = _single_process(world)
    expected_equal = _single_process_equal_batches(world)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, (value, grads) in expected.items():
            assert_close(got[name][0], value, 1e-12, 1e-15, what=f"rank {rank} {name} value")
            for g, h in zip(got[name][1], grads):
                # The factor is what breaks in practice: compare norms first, then entries.
                ratio = float(g.norm() / h.norm())
                assert abs(ratio - 1) < 1e-9, f"rank {rank} {name}: gradient is {ratio:.6g} x the single-process one"
                assert_close(g, h, 1e-9, 1e-12 * float(h.abs().max()), what=f"rank {rank} {name} gradient")
        for name, (value, grads) in expected_equal.items():
            compiled_value, compiled_grads = got[f"compiled_{name}"]
            assert_close(compiled_value, value, 1e-12, 1e-15, what=f"rank {rank} compiled {name} value")
            for g, h in zip(compiled_grads, grads):
                assert_close(g, h, 1e-9, 1e-12 * float(h.abs().max()), what=f"rank {rank} compiled {name} gradient")
        # The plain all-gather's gradient is 1/world_size of the right one: the check would see it.
        plain = got["plain_gather_cw"][1]
        for g, h in zip(plain, expected["cw"][1]):
            assert_close(g * world, h, 1e-9, 1e-12 * float(h.abs().max()), what="plain gather x world_size")
        if world > 1:  # one rank: no uneven batches, no other D or dtype, nobody to wait for
            assert "equal local batch sizes" in got["compiled_uneven"], got["compiled_uneven"]
            assert "differ in dimension" in got["mismatch"]
            _check_failures(got["failures"], rank, world)
        # 64 points split only below the default threshold; the cdf_p1 case above went through the split.
        assert got["cdf_splits"] == (False, world > 1)
    _check_pair_counts([torch.load(tmp_path / f"rank{r}.pt")["pair_counts"] for r in range(world)], world)
    _check_cdf_shares([torch.load(tmp_path / f"rank{r}.pt")["cdf_share"] for r in range(world)], world)


def _check_pair_counts(counts, world):
    """Every pair once over the ranks, each rank about 1/world of them."""
    n = sum(SIZES[world])
    for name, total in (("self", n * (n - 1) // 2), ("two_samples", n * (n - 1) + n * n)):
        per_rank = [c[name] for c in counts]
        assert sum(per_rank) == total, (name, per_rank, total)
        # A rank's share is within one block of rows (at most n pairs per sum) of the even split.
        sums = 1 if name == "self" else 3
        assert max(per_rank) <= total / world + sums * n, (name, per_rank, total)


def _check_cdf_shares(shares, world):
    """cdf_attraction's pairs split too: each once, about 1/world a rank; the value bit for bit
    one process's (the same ranks, the same sums) and the gradients summed over the ranks its."""
    from gaussreg.engines import cdf_attraction as engine

    for name, make in CDF_SHARE_CASES.items():
        z = make()
        n = z.shape[0]
        total = n * (n - 1) // 2
        got = [s[name] for s in shares]
        pairs = [stats["pairs"] for stats, _, _ in got]
        assert sum(pairs) == total, (name, pairs)
        # Shares are whole row blocks of 8: within 8 rows of pairs (8 n) per share run of the even split.
        assert max(pairs) <= total / world + 2 * 8 * n, (name, pairs)
        mixed = sum(stats["mixed_pairs"] for stats, _, _ in got)
        assert mixed == got[0][0]["all_mixed_pairs"] and (mixed == 0) == (name == "three_far"), (name, mixed)
        target = _share_target(name, z)
        source = engine.quantile_source(z, target, engine.plan(z.device, z.dtype, n, target, None))  # as the split's
        z = z.requires_grad_(True)
        capacity = SHARE_BUDGETS[name] // 32 if name in SHARE_BUDGETS else total
        # The default bins, given: the single process then keeps to the selection as the split
        # does (with them implied it may sort every pair instead, in another summation order).
        bins = gaussreg._native.module_for(z.device).ks_distances_bin_count(n, 0) - 2
        single, single_stats = engine.cdf_pairs(z, 1, capacity, bins=bins, with_stats=True, **source)
        single.backward()
        refined = {stats["refined_bins"] for stats, _, _ in got}
        assert refined == {single_stats["refined_bins"]}, (name, refined, single_stats)
        assert (single_stats["refined_bins"] > 0) == (name in REFINED_SHARES), (name, single_stats)
        for _, value, _ in got:
            assert value == float(single.detach()), (name, value, float(single.detach()))
        # Each rank's backward is world_size times its pairs' share (the gather's convention).
        summed = sum(grad for _, _, grad in got) / world
        assert_close(summed, z.grad, 1e-12, 1e-12 * float(z.grad.abs().max()), what=f"{name} split gradient")


def _check_failures(raised, rank, world):
    expect = {
        "nan": "ValueError: z contains NaN" if rank == 1 else "RuntimeError: process_group: the input checks failed "
                                                             "on rank(s) [1]",
        "nan_cdf": "ValueError: z contains NaN",  # checked after the gather: the same on every rank
        "memory": "MemoryError" if rank == world - 1 else f"RuntimeError: process_group: the input checks failed on "
                                                          f"rank(s) [{world - 1}]",
        "dtype": "ValueError: process_group: the ranks' points differ in dtype",
    }
    for name, start in expect.items():
        assert raised[name].startswith(start), (rank, name, raised[name])


def test_pair_shares_cover_every_pair_once():
    from gaussreg.engines.pair_sum import pair_shares

    for n in (1, 2, 3, 5, 17, 40):
        for world in (1, 2, 3, 4, 7):
            for m in (None, 3, n):
                seen = []
                for pieces in pair_shares(n, m, world):
                    for piece in pieces:
                        for i in range(piece.row_start, piece.row_stop):
                            cols = range(i + 1, piece.row_stop) if piece.is_triangle else \
                                range(piece.col_start, piece.col_stop)
                            seen += [(i, j) if m is not None else (min(i, j), max(i, j)) for j in cols]
                expected = [(i, j) for i in range(n) for j in (range(i + 1, n) if m is None else range(m))]
                assert sorted(seen) == expected, (n, world, m)


def test_process_group_needs_an_initialized_backend():
    with pytest.raises(RuntimeError, match="not initialized"):
        gaussreg.cw_distance(random_points(10, 3), process_group="world")


def test_ddp_example_runs_with_torchrun():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(root / "examples" / "ddp_train.py"), "--steps", "3"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step    2  reconstruction" in result.stdout and "global batch 256 latents" in result.stdout


def test_dlpack_inputs_from_numpy():
    """Arrays from other frameworks come in through DLPack (CuPy and JAX on a GPU alike)."""
    import numpy as np

    array = np.random.default_rng(0).standard_normal((64, 5))
    z = torch.from_dlpack(array)
    assert z.data_ptr() == array.__array_interface__["data"][0]  # shared, not copied
    assert_close(gaussreg.cdf_attraction(z), gaussreg.cdf_attraction(torch.tensor(array)), 0, 0)
    assert_close(gaussreg.cw_distance(z), gaussreg.cw_distance(torch.tensor(array)), 0, 0)
