"""gaussreg.nn: modules equal their functional losses; Regularizer; autocast; torch.compile of a model + loss."""
import pytest
import torch
from _helpers import assert_close, value_and_grads

import gaussreg
from gaussreg import nn as gnn
from gaussreg.targets import Chi2
from gaussreg.testing import random_points


def _generator(device="cpu"):
    return torch.Generator(device=device).manual_seed(3)


MODULES = {
    "cdf": (lambda device="cpu": gnn.CDFAttraction(p=2, distances_weight=2.0),
            lambda z: gaussreg.cdf_attraction(z, p=2, distances_weight=2.0)),
    "l2_normal": (lambda device="cpu": gnn.GaussianL2ToNormal(sigma=0.7), lambda z: gaussreg.gaussian_l2_to_normal(z, 0.7)),
    "l2_mean_field": (lambda device="cpu": gnn.GaussianL2ToNormal(sigma="mean_field"),
                      lambda z: gaussreg.gaussian_l2_to_normal(z, "mean_field")),
    "mmd": (lambda device="cpu": gnn.MMD(kernel="rbf", generator=_generator(device)),
            lambda z: gaussreg.mmd(z, kernel="rbf", generator=_generator())),
    "cw": (lambda device="cpu": gnn.CramerWold(log=True), lambda z: gaussreg.cw_distance(z, log=True)),
    "coord": (lambda device="cpu": gnn.CoordinateCDFAttraction(marginal="torus", bits=3, p=1),
              lambda z: gaussreg.coordinate_cdf_attraction(z, marginal="torus", bits=3, p=1)),
    "swae": (lambda device="cpu": gnn.SlicedWasserstein(num_projections=20, generator=_generator(device)),
             lambda z: gaussreg.sliced_wasserstein(z, num_projections=20, generator=_generator())),
    "epps_pulley": (lambda device="cpu": gnn.EppsPulley(num_slices=20, generator=_generator(device)),
                    lambda z: gaussreg.epps_pulley(z, num_slices=20, generator=_generator())),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_equals_functional(name):
    make_module, functional = MODULES[name]
    z = random_points(60, 5, seed=1)
    v_mod, g_mod = value_and_grads(make_module(), [z])
    v_fn, g_fn = value_and_grads(functional, [z])
    assert_close(v_mod, v_fn, 0, 0, what=f"{name} value")
    assert_close(g_mod[0], g_fn[0], 0, 0, what=f"{name} gradient")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_repeated_calls_are_bitwise_identical(name):
    make_module, _ = MODULES[name]
    z = random_points(300, 6, seed=3, dtype=torch.float32)
    first = value_and_grads(make_module(), [z])
    again = value_and_grads(make_module(), [z])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1][0], again[1][0])


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(MODULES))
def test_cuda_deterministic_mode_repeats_bitwise(name):
    make_module, _ = MODULES[name]
    z = random_points(300, 6, seed=3, dtype=torch.float32, device="cuda")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = value_and_grads(make_module("cuda"), [z])
        again = value_and_grads(make_module("cuda"), [z])
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1][0], again[1][0])


def test_two_sample_modules():
    x, y = random_points(40, 3, seed=1), random_points(30, 3, seed=2)
    assert_close(gnn.GaussianL2(sigma=0.5)(x, y), gaussreg.gaussian_l2(x, y, 0.5), 0, 0)
    assert_close(gnn.MMD()(x, y), gaussreg.mmd(x, y), 0, 0)


def test_extra_repr_shows_the_options():
    text = repr(gnn.CDFAttraction(p=2, distances_target=Chi2(3)))
    assert "p=2" in text and "Chi2(df=3)" in text
    assert "sigma=Tensor(shape=(4,)" in repr(gnn.GaussianL2ToNormal(sigma=torch.ones(4)))


def test_regularizer_sums_weighted_parts():
    z = random_points(50, 4, seed=2, requires_grad=True)
    reg = gnn.Regularizer(cdf=(0.5, gnn.CDFAttraction()), cw=(2.0, gnn.CramerWold()))
    total, parts = reg(z)
    expected = 0.5 * gaussreg.cdf_attraction(z) + 2.0 * gaussreg.cw_distance(z)
    assert_close(total, expected, 1e-15, 0, what="total")
    assert sorted(parts) == ["cdf", "cw"] and not any(p.requires_grad for p in parts.values())
    assert_close(parts["cw"], gaussreg.cw_distance(z), 0, 0)
    total.backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
    assert "cdf: weight=0.5" in repr(reg)


@pytest.mark.parametrize("terms, error, match", [
    ({}, ValueError, "at least one term"),
    ({"a": gnn.CramerWold()}, TypeError, "must be \\(weight, module\\)"),
    ({"a": (float("nan"), gnn.CramerWold())}, ValueError, "finite"),
    ({"a": (True, gnn.CramerWold())}, ValueError, "finite real"),
])
def test_regularizer_rejects_bad_terms(terms, error, match):
    with pytest.raises(error, match=match):
        gnn.Regularizer(**terms)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_autocast_bfloat16_computes_in_float32(name):
    """Under CPU autocast an encoder emits bfloat16 latents: the loss is computed and returned
    in float32 (the same value as on the upcast latents), the gradient comes back in bfloat16."""
    make_module, _ = MODULES[name]
    encoder = torch.nn.Linear(6, 5)
    x = random_points(48, 6, seed=4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder(x)
        assert z.dtype == torch.bfloat16
        z.retain_grad()
        loss = make_module()(z)
    assert loss.dtype == torch.float32
    assert_close(loss, make_module()(z.detach().float()), 0, 0, what="value vs float32 of the same latents")
    loss.backward()
    assert z.grad.dtype == torch.bfloat16 and bool(torch.isfinite(encoder.weight.grad).all())


@pytest.mark.cuda
@pytest.mark.parametrize("half", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_cuda_autocast_computes_in_float32(name, half):
    make_module, _ = MODULES[name]
    encoder = torch.nn.Linear(6, 5).cuda()
    x = random_points(48, 6, seed=4, dtype=torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=half):
        z = encoder(x)
        assert z.dtype == half
        z.retain_grad()
        loss = make_module("cuda")(z)
    assert loss.dtype == torch.float32
    assert_close(loss, make_module("cuda")(z.detach().float()), 0, 0, what="value vs float32 of the same latents")
    loss.backward()
    assert z.grad.dtype == half and bool(torch.isfinite(encoder.weight.grad).all())


def test_compiled_model_and_regularizer_match_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    target = Chi2(4)
    reg = gnn.Regularizer(cdf=(1.0, gnn.CDFAttraction(p=2, radii_target=target, distances_target=target)),
                          cw=(0.5, gnn.CramerWold(log=True)), l2=(0.1, gnn.GaussianL2ToNormal()))
    x = random_points(64, 6, seed=5)

    def step(x):
        total, _ = reg(encoder(x))
        return total

    def loss_and_grads(fn):
        encoder.zero_grad()
        value = fn(x)
        value.backward()
        return value.detach(), [p.grad.clone() for p in encoder.parameters()]

    eager_v, eager_g = loss_and_grads(step)
    compiled_v, compiled_g = loss_and_grads(torch.compile(step, fullgraph=True, backend="aot_eager"))
    assert_close(compiled_v, eager_v, 1e-12, 1e-14, what="compiled value")
    for g, h in zip(compiled_g, eager_g):
        assert_close(g, h, 1e-10, 1e-13, what="compiled parameter gradient")


def test_docstring_examples_run():
    import doctest

    results = doctest.testmod(gnn, extraglobs={"torch": torch})
    assert results.attempted > 0 and results.failed == 0


def test_a_compiled_loss_can_be_the_first_call_of_a_process():
    """The compiled modules load with gaussreg, not inside the first (traced) call."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch, gaussreg\n"
            "z = torch.randn(300, 4, dtype=torch.float64, requires_grad=True)\n"
            "f = lambda z: gaussreg.cdf_attraction(z) + gaussreg.gaussian_l2_to_normal(z) + gaussreg.mmd(z)\n"
            "torch.compile(f, fullgraph=True, backend='aot_eager')(z).backward()\n"
            "print('ok', bool(torch.isfinite(z.grad).all()))\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0 and result.stdout.strip() == "ok True", result.stderr[-2000:]
