"""Every landed loss as one row of a table, for the hardening tests (issue 8).

test_properties.py, test_hostile.py, test_memory.py and test_concurrency.py run each of
their checks over ``CASES``; a new loss joins all of them with one more row (a ``case(...)``
line below). A row holds the compiled call, its reference.py twin and what the checks must
know about it: its point arguments, the smallest D, whether it ranks values (sort-based:
gradients compared up to the order of ties), whether second derivatives are supported,
bad options and the errors they must raise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import gaussreg
from gaussreg import reference as ref
from gaussreg.engines import cdf_attraction as cdf_engine
from gaussreg.targets import Chi2, Empirical

# (keyword options, exception type(s), regex the message must match)
BadOption = Tuple[dict, object, str]


@dataclass(frozen=True)
class LossCase:
    name: str
    call: Callable[..., torch.Tensor]       # call(*points, **options): the compiled loss
    reference: Callable[..., torch.Tensor]  # reference(*points): reference.py in float64
    args: Tuple[str, ...] = ("z",)          # the point arguments' names, as errors must name them
    optional_args: Tuple[str, ...] = ()     # point arguments that may be None (a default applies)
    min_dim: int = 1                        # smaller D raises ValueError
    min_rows: int = 2                       # fewer points raise ValueError (1: no pairs involved)
    ranked: bool = False                    # sort-based: ties may be ranked in any order (SPEC 1)
    second_order: bool = False              # True: gradgradcheck passes; False: refused with an error
    bad_options: Tuple[BadOption, ...] = ()
    term_size: float = 1.0                  # size of the terms whose difference the loss is (atol scale)
    huge_rows: int = 2**36                  # an expanded input this long cannot fit anywhere
    linear_memory: bool = False             # sort-based but O(n D) memory (segmented), not O(n^2)
    # Errors a valid input may raise as documented (exception type, message regex), e.g. a
    # multi-pass sort whose budget is smaller than a bucket of tied distances.
    documented_errors: Tuple[Tuple[type, str], ...] = ()
    backend_option: bool = True             # call accepts backend= (modules do not)
    equal_rows: bool = False                # every point argument has z's number of rows
    compiled: bool = True                   # runs a compiled engine (False: torch ops, no workspace of its own)
    # The loss takes cos/sin of phases up to phase_scale * ||z_i||: float64 rounds a phase to
    # about eps * phase_scale * ||z_i||, which then bounds any two implementations' agreement.
    phase_scale: float = 0.0


def _valid_points(z) -> bool:
    return isinstance(z, torch.Tensor) and z.dim() == 2 and z.is_floating_point() and z.shape[0] >= 2


def _ref_cdf(z, **options):
    """reference.cdf_attraction with the library's Chi2 tables as default targets: the tables
    agree with scipy to ~2e-10 (torch's gammainc; tested in test_targets.py), and these
    tests compare the ranking and the sums."""
    target = Chi2(z.shape[1])
    return ref.cdf_attraction(z, **{"radii_target": target, "distances_target": target, **options})


def _cdf(**options):
    def call(z, **extra):
        return gaussreg.cdf_attraction(z, **{"backend": "native", **options, **extra})
    return call


def _cdf_multi_pass(z, **extra):
    """Tiny buckets: a sort budget of a quarter of the pairs (at least 64 entries), several passes."""
    budget = 1024  # bad inputs: any budget, the error comes first
    if _valid_points(z):
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        device = z.device if z.device.type == "cuda" else torch.device("cpu")  # meta: the error comes first
        entry = cdf_engine.entry_bytes(device, dtype, z.shape[0])
        budget = entry * max(64, cdf_engine.pair_count(z.shape[0]) // 4)
    return gaussreg.cdf_attraction(z, p=2, max_sort_bytes=budget, **{"backend": "native", **extra})


def _per_point_sigma(z):
    if not _valid_points(z):  # bad inputs: the error about z comes first
        return 1.0
    if z.shape[0] > 1 << 20:  # the memory tests' giant expanded z: widths expanded alike
        return torch.ones(1, dtype=z.dtype, device=z.device).expand(z.shape[0])
    return torch.linspace(0.6, 1.7, z.shape[0], dtype=z.dtype, device=z.device)


_CDF_BAD = (
    (dict(p=3), ValueError, "p must be 1 or 2"),
    (dict(p=0.5), ValueError, "p must be 1 or 2"),
    (dict(p="2"), ValueError, "p must be 1 or 2"),
    (dict(p=torch.tensor(2)), ValueError, "p must be 1 or 2"),
    (dict(radii_weight=float("inf")), ValueError, "radii_weight"),
    (dict(distances_weight=None), TypeError, "distances_weight"),
    (dict(distances_target="chi2"), TypeError, "distances_target"),
    (dict(max_sort_bytes=-5), ValueError, "max_sort_bytes"),
    (dict(max_sort_bytes=1.5e6), ValueError, "max_sort_bytes"),
    (dict(backend="cuda"), ValueError, "backend"),
)
_SIGMA_BAD = (
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=float("inf")), ValueError, "sigma"),
    (dict(sigma="wide"), ValueError, "sigma"),
    (dict(sigma=None), TypeError, "sigma"),
    (dict(backend="gpu"), ValueError, "backend"),
)
_GL2N_BAD = _SIGMA_BAD + (
    (dict(sigma=-torch.ones(5, dtype=torch.float64)), ValueError, "sigma"),
    (dict(sigma=torch.ones(4, dtype=torch.float64)), ValueError, "sigma.*shape"),
    (dict(sigma=torch.ones(5, dtype=torch.int64)), TypeError, "sigma.*floating"),
    (dict(sigma=torch.ones(5, dtype=torch.complex64)), TypeError, "sigma.*floating"),
    (dict(sigma=torch.ones(5, dtype=torch.float64, requires_grad=True)), ValueError, "sigma"),
    (dict(sigma=torch.ones(5, dtype=torch.float64, device="meta")), ValueError, "sigma.*device"),
    (dict(sigma=torch.full((5,), 1e-200, dtype=torch.float64)), ValueError, "sigma"),
)
_GL2_BAD = _SIGMA_BAD[:4] + (
    (dict(sigma="wide"), TypeError, "sigma"),  # one width for every point: a number only
    (dict(sigma=torch.tensor(1.0)), TypeError, "sigma"),
    (dict(sigma=None), TypeError, "sigma"),
    (dict(backend="gpu"), ValueError, "backend"),
)
_MMD_BAD = (
    (dict(kernel="gaussian"), ValueError, "kernel"),
    (dict(kernel="IMQ"), ValueError, "kernel"),
    (dict(kernel=None), ValueError, "kernel"),
    (dict(scales=()), ValueError, "scales"),
    (dict(scales=(1.0, 0.0)), ValueError, "scale"),
    (dict(scales=(-2.0,)), ValueError, "scale"),
    (dict(scales=1.0), TypeError, "scales"),
    (dict(generator=3), TypeError, "generator"),
    (dict(backend="bogus"), ValueError, "backend"),
)
_CW_BAD = (
    (dict(gamma=0.0), ValueError, "gamma"),
    (dict(gamma=-0.5), ValueError, "gamma"),
    (dict(gamma=float("nan")), ValueError, "gamma"),
    (dict(gamma="1"), TypeError, "gamma"),
    (dict(kernel="exact_1f1"), ValueError, "kernel"),
    (dict(log="yes"), TypeError, "log"),
    (dict(backend="bogus"), ValueError, "backend"),
)


def case(name, call, reference, **kw) -> LossCase:
    return LossCase(name=name, call=call, reference=reference, **kw)


def _with_backend(fn, **options):
    def call(*points, **extra):
        return fn(*points, **{"backend": "native", **options, **extra})
    return call


def _module_call(module_factory):
    def call(*points, **extra):
        return module_factory(**extra)(*points)
    return call


def _regularizer(**extra):
    return gaussreg.nn.Regularizer(cdf=(0.7, gaussreg.nn.CDFAttraction(p=2, **extra)),
                                   cw=(1.3, gaussreg.nn.CramerWold(kernel="exact", **extra)))


_COORD_BAD = (
    (dict(marginal="cauchy"), ValueError, "marginal"),
    (dict(marginal="normal", bits=3), ValueError, "bits"),
    (dict(marginal="uniform", bits=0), ValueError, "bits"),
    (dict(marginal="torus", bits=2.0), TypeError, "bits"),
    (dict(p=3), ValueError, "p must be 1 or 2"),
    (dict(p=torch.tensor(2)), ValueError, "p must be 1 or 2"),
    (dict(backend="bogus"), ValueError, "backend"),
)
_SLICED_BAD = (
    (dict(p=0), ValueError, "p must be 1 or 2"),
    (dict(p="2"), ValueError, "p must be 1 or 2"),
    (dict(p=torch.tensor(2)), ValueError, "p must be 1 or 2"),
    (dict(generator=3), TypeError, "generator"),
    (dict(directions=torch.zeros(3, 4, dtype=torch.float64)), ValueError, "directions"),
    (dict(backend="bogus"), ValueError, "backend"),
)
_EP_BAD = (
    (dict(num_points=1), ValueError, "num_points"),
    (dict(num_points=65), ValueError, "num_points"),
    (dict(t_max=-1.0), ValueError, "t_max"),
    (dict(backend="bogus"), ValueError, "backend"),
)


def _directions(z, count=7):
    """Fixed directions of z's width (bad inputs: any width, the error about z comes first)."""
    d = z.shape[1] if isinstance(z, torch.Tensor) and z.dim() == 2 else 4
    return torch.randn(count, max(d, 1), generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _mixture(z):
    d = z.shape[1] if isinstance(z, torch.Tensor) and z.dim() == 2 and z.shape[1] >= 1 else 4
    g = torch.Generator().manual_seed(6)
    means = torch.randn(3, d, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(3, d, generator=g, dtype=torch.float64)
    return means, stds, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


def _prior_for(z):
    """_mixture(z) as a GaussianMixture on z's device and compute dtype (CPU float64 for bad z)."""
    prior = gaussreg.GaussianMixture(*_mixture(z))
    if isinstance(z, torch.Tensor) and z.is_floating_point() and not z.is_complex():
        prior = prior.to(dtype=z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32,
                         device=z.device if z.device.type in ("cpu", "cuda") else "cpu")
    return prior


def _gmm_ks(z, **extra):
    return gaussreg.gmm_ks_loss(z, _prior_for(z), **{"backend": "native", **extra})


def _swae_prior_p1(z, prior_sample, **extra):
    return gaussreg.sliced_wasserstein(z, **{"prior_sample": prior_sample, "p": 1, "directions": _directions(z),
                                             "backend": "native", **extra})


_MMD_ARGS = ("z", "prior_sample")
_BIG_TIE_BUCKET = ((MemoryError, "share one bucket"),)  # documented: the budget is below a bucket of ties

# One row per loss and option that takes its own code path. Add new losses here.
CASES: List[LossCase] = [
    case("cdf_attraction_p1", _cdf(), lambda z: _ref_cdf(z), ranked=True, bad_options=_CDF_BAD,
         huge_rows=2**22),
    case("cdf_attraction_p2", _cdf(p=2), lambda z: _ref_cdf(z, p=2), ranked=True, huge_rows=2**22),
    case("cdf_attraction_weights_empirical", _cdf(radii_weight=0.3, distances_weight=1.7,
                                                  distances_target=Empirical(torch.linspace(0.0, 12.0, 41))),
         lambda z: _ref_cdf(z, radii_weight=0.3, distances_weight=1.7,
                                      distances_target=ref.EmpiricalTarget(torch.linspace(0.0, 12.0, 41))),
         ranked=True, huge_rows=2**22),
    case("cdf_attraction_multi_pass", _cdf_multi_pass, lambda z: _ref_cdf(z, p=2), ranked=True,
         huge_rows=2**22, documented_errors=_BIG_TIE_BUCKET),
    case("cdf_attraction_radii_only", _cdf(p=2, distances_weight=0.0),
         lambda z: _ref_cdf(z, p=2, distances_weight=0.0), ranked=True, second_order=True,
         huge_rows=0),
    case("gaussian_l2_to_normal", _with_backend(gaussreg.gaussian_l2_to_normal),
         lambda z: ref.gaussian_l2_to_normal(z), bad_options=_GL2N_BAD, term_size=2.0),
    case("gaussian_l2_to_normal_sigma", _with_backend(gaussreg.gaussian_l2_to_normal, sigma=1.9),
         lambda z: ref.gaussian_l2_to_normal(z, 1.9), term_size=2.0),
    case("gaussian_l2_to_normal_per_point",
         lambda z, **kw: gaussreg.gaussian_l2_to_normal(z, _per_point_sigma(z), **{"backend": "native", **kw}),
         lambda z: ref.gaussian_l2_to_normal(z, _per_point_sigma(z)), term_size=2.0),
    case("gaussian_l2_to_normal_mean_field", _with_backend(gaussreg.gaussian_l2_to_normal, sigma="mean_field"),
         lambda z: ref.gaussian_l2_to_normal(z, "mean_field"), term_size=2.0),
    case("gaussian_l2", _with_backend(gaussreg.gaussian_l2, sigma=0.7), lambda x, y: ref.gaussian_l2(x, y, 0.7),
         args=("x", "y"), bad_options=_GL2_BAD, term_size=3.0),
    case("mmd_imq", _with_backend(gaussreg.mmd), lambda z, y: ref.mmd(z, y), args=_MMD_ARGS,
         optional_args=("prior_sample",), bad_options=_MMD_BAD, term_size=21.0),
    case("mmd_rbf", _with_backend(gaussreg.mmd, kernel="rbf", scales=(0.3, 2.0)),
         lambda z, y: ref.mmd(z, y, kernel="rbf", scales=(0.3, 2.0)), args=_MMD_ARGS,
         optional_args=("prior_sample",), term_size=6.0),
    case("mmd_rbf_analytic", lambda z, **kw: gaussreg.mmd(z, "analytic", **{"kernel": "rbf", "backend": "native",
                                                                                 **kw}),
         lambda z: ref.mmd(z, "analytic", kernel="rbf"), term_size=21.0),
    case("cw_distance", _with_backend(gaussreg.cw_distance), lambda z: ref.cw_distance(z), min_dim=2,
         bad_options=_CW_BAD, term_size=10.0),
    case("cw_distance_log", _with_backend(gaussreg.cw_distance, log=True, gamma=0.8),
         lambda z: ref.cw_distance(z, log=True, gamma=0.8), min_dim=2, term_size=1e3),
    case("cw_distance_exact", _with_backend(gaussreg.cw_distance, kernel="exact"),
         lambda z: ref.cw_distance(z, kernel="exact"), term_size=10.0),
    case("coordinate_normal_p2", _with_backend(gaussreg.coordinate_cdf_attraction),
         lambda z: ref.coordinate_cdf_attraction(z), ranked=True, bad_options=_COORD_BAD, huge_rows=2**30,
         linear_memory=True, min_rows=1),
    case("coordinate_torus_bits3_p2", _with_backend(gaussreg.coordinate_cdf_attraction, marginal="torus", bits=3),
         lambda z: ref.coordinate_cdf_attraction(z, marginal="torus", bits=3), ranked=True, huge_rows=2**30,
         linear_memory=True, min_rows=1),
    case("sliced_wasserstein_p2",
         lambda z, **kw: gaussreg.sliced_wasserstein(z, **{"directions": _directions(z), "backend": "native", **kw}),
         lambda z: ref.sliced_wasserstein(z, directions=_directions(z)), ranked=True, bad_options=_SLICED_BAD,
         huge_rows=2**30, linear_memory=True, min_rows=1),
    case("epps_pulley",
         lambda z, **kw: gaussreg.epps_pulley(z, **{"directions": _directions(z), "backend": "native", **kw}),
         lambda z: ref.epps_pulley(z, directions=_directions(z)), bad_options=_EP_BAD, term_size=10.0, phase_scale=3.0,
         huge_rows=2**30, min_rows=1),
    case("gmm_ks_loss", _gmm_ks, lambda z: ref.gmm_ks_loss(z, *_mixture(z)), second_order=True, huge_rows=2**30,
         linear_memory=True, min_rows=1),
    case("gmm_cov_loss", lambda z, **kw: gaussreg.gmm_cov_loss(z, _prior_for(z), **kw),
         lambda z: ref.gmm_cov_loss(z, *_mixture(z)), second_order=True, backend_option=False, huge_rows=2**36,
         compiled=False),
    case("coordinate_uniform_bits2_p1",
         _with_backend(gaussreg.coordinate_cdf_attraction, marginal="uniform", bits=2, p=1),
         lambda z: ref.coordinate_cdf_attraction(z, marginal="uniform", bits=2, p=1), ranked=True, second_order=True,
         huge_rows=2**30, linear_memory=True, min_rows=1),
    case("sliced_wasserstein_prior_sample_p1", _swae_prior_p1,
         lambda z, y: ref.sliced_wasserstein(z, prior_sample=y, p=1, directions=_directions(z)),
         args=("z", "prior_sample"), optional_args=("prior_sample",), ranked=True, equal_rows=True,
         second_order=True, huge_rows=2**30, linear_memory=True, min_rows=1),
    # The nn modules: the same engines behind module objects (options fixed at construction).
    case("nn.CDFAttraction", _module_call(lambda **kw: gaussreg.nn.CDFAttraction(p=2, **kw)),
         lambda z: _ref_cdf(z, p=2), ranked=True, backend_option=False, huge_rows=2**22),
    case("nn.GaussianL2", _module_call(lambda **kw: gaussreg.nn.GaussianL2(sigma=1.3, **kw)),
         lambda x, y: ref.gaussian_l2(x, y, 1.3), args=("x", "y"), backend_option=False, term_size=3.0),
    case("nn.MMD", _module_call(lambda **kw: gaussreg.nn.MMD(kernel="rbf", **kw)),
         lambda z, y: ref.mmd(z, y, kernel="rbf"), args=_MMD_ARGS, optional_args=("prior_sample",),
         backend_option=False, term_size=21.0),
    case("nn.SlicedWasserstein",
         lambda z, y, **kw: gaussreg.nn.SlicedWasserstein(directions=_directions(z), **kw)(z, y),
         lambda z, y: ref.sliced_wasserstein(z, prior_sample=y, directions=_directions(z)),
         args=("z", "prior_sample"), optional_args=("prior_sample",), ranked=True, equal_rows=True,
         backend_option=False, huge_rows=2**30, linear_memory=True, min_rows=1),
    case("nn.GMMKS", lambda z, **kw: gaussreg.nn.GMMKS(_prior_for(z), **kw)(z),
         lambda z: ref.gmm_ks_loss(z, *_mixture(z)), second_order=True, backend_option=False, huge_rows=2**30,
         linear_memory=True, min_rows=1),
    case("nn.Regularizer", lambda z, **kw: _regularizer(**kw)(z)[0],
         lambda z: 0.7 * _ref_cdf(z, p=2) + 1.3 * ref.cw_distance(z, kernel="exact"), ranked=True,
         backend_option=False, term_size=10.0, huge_rows=2**22),
]

CASE_IDS = [c.name for c in CASES]
BY_NAME: Dict[str, LossCase] = {c.name: c for c in CASES}


def points_for(case_: LossCase, n: int = 9, d: int = 4, seed: int = 0, dtype=torch.float64) -> List[torch.Tensor]:
    """Float64 point inputs for ``case_`` (the second input, when any, has n + 2 rows unless the
    case needs equal rows); valid when d >= case_.min_dim."""
    g = torch.Generator().manual_seed(seed)
    extra = 0 if case_.equal_rows else 2
    return [torch.randn(n + extra * k, d, generator=g, dtype=torch.float64).to(dtype) for k in range(len(case_.args))]


def value_and_grads(fn: Callable, inputs: Sequence[torch.Tensor]):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), [g.detach() for g in grads]


def run_case(name: str, inputs: Sequence[torch.Tensor], threads: Optional[int] = None):
    """Value and gradients of case ``name`` (a module-level function: picklable for spawned processes)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return value_and_grads(BY_NAME[name].call, inputs)


def run_all(inputs_by_case: Dict[str, List[torch.Tensor]], threads: Optional[int] = None) -> Dict[str, tuple]:
    return {name: run_case(name, inputs, threads) for name, inputs in inputs_by_case.items()}


@dataclass
class Recorder:
    """Records the last argument (the thread count on the CPU) of every compiled entry point called."""
    calls: List[Tuple[str, object]] = field(default_factory=list)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            self.calls.append((name, args[-1] if args else None))
            return fn(*args, **kwargs)
        return wrapper
