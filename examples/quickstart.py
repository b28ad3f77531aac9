"""Evaluate every available gaussreg loss on one random batch: value, backend, time.

Run:  python3 examples/quickstart.py [--n 2048] [--dim 32] [--device cpu]

Each loss gets a latent batch z ~ N(0, I) (what a well-regularized encoder produces)
and a batch uniform on [-1, 1]^D (the starting point of Duda's Fig. 1, which it should
penalize); the table shows both values, which backend ran, and the forward+backward
time of the compiled kernels next to the plain-PyTorch reference (skipped for the
exact Cramer-Wold kernel, whose reference evaluates 1F1 with mpmath point by point).
The first cdf_attraction call also computes (and caches) its chi-squared quantile anchors.
"""
import argparse
import time

import torch

import gaussreg


def losses(generator_seed: int):
    """(name, callable(z, backend), time the reference?) for every loss that has landed."""
    def seeded():
        return torch.Generator().manual_seed(generator_seed)

    # (name, loss, whether timing the reference is affordable at quickstart sizes)
    return [
        ("gaussian_l2_to_normal(sigma=1)", lambda z, b: gaussreg.gaussian_l2_to_normal(z, 1.0, backend=b), True),
        ("gaussian_l2_to_normal(mean_field)", lambda z, b: gaussreg.gaussian_l2_to_normal(z, "mean_field", backend=b), True),
        ("gaussian_l2(z, prior sample)", lambda z, b: gaussreg.gaussian_l2(
            z, torch.randn(z.shape, generator=seeded()).to(z), backend=b), True),
        ("mmd(imq)", lambda z, b: gaussreg.mmd(z, kernel="imq", generator=seeded(), backend=b), True),
        ("mmd(rbf, analytic prior)", lambda z, b: gaussreg.mmd(z, "analytic", kernel="rbf", backend=b), True),
        ("cw_distance(approx)", lambda z, b: gaussreg.cw_distance(z, backend=b), True),
        ("cw_distance(exact)", lambda z, b: gaussreg.cw_distance(z, kernel="exact", backend=b), False),
        ("cdf_attraction(p=1)", lambda z, b: gaussreg.cdf_attraction(z, backend=b), True),
        ("coordinate_cdf_attraction(normal)", lambda z, b: gaussreg.coordinate_cdf_attraction(z, backend=b), True),
        ("coordinate_cdf_attraction(torus,4)", lambda z, b: gaussreg.coordinate_cdf_attraction(
            z, marginal="torus", bits=4, backend=b), True),
        ("sliced_wasserstein(50 directions)", lambda z, b: gaussreg.sliced_wasserstein(
            z, generator=seeded(), backend=b), True),
        ("epps_pulley(256 slices)", lambda z, b: gaussreg.epps_pulley(z, generator=seeded(), backend=b), True),
        ("gmm_ks_loss(4 components)", lambda z, b: gaussreg.gmm_ks_loss(
            z, gaussreg.GaussianMixture.separated(4, z.shape[1], dtype=z.dtype), backend=b), True),
    ]


def timed(fn, z, backend):
    z = z.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    value = fn(z, backend)
    value.backward()
    if z.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return value.item(), elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="batch size (default 2048)")
    parser.add_argument("--dim", type=int, default=32, help="latent dimension D (default 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-reference", action="store_true", help="do not time reference.py (O(n^2 D) memory)")
    args = parser.parse_args()

    print("backends:", {k: ("available" if v["available"] else v["detail"]) for k, v in gaussreg.backends().items()})
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(args.n, args.dim, generator=g).to(args.device)
    uniform = (torch.rand(args.n, args.dim, generator=g) * 2 - 1).to(args.device)
    native = gaussreg.backends()["cuda" if normal.device.type == "cuda" else "cpu"]["available"]
    backend = "native" if native else "reference"
    print(f"n = {args.n}, D = {args.dim}, float32, device {normal.device}; compiled backend: "
          f"{'yes' if native else 'NO (reference fallback)'}\n")
    header = f"{'loss':36s} {'N(0,I) batch':>14s} {'uniform batch':>14s} {'backend':>9s} {'fwd+bwd':>10s} {'reference':>10s}"
    print(header)
    print("-" * len(header))
    for name, fn, reference_affordable in losses(1):
        timed(fn, normal[:64], backend)  # warm-up (first call loads kernels, caches quantiles)
        v_normal, t_native = timed(fn, normal, backend)
        v_uniform, _ = timed(fn, uniform, backend)
        if args.skip_reference or not reference_affordable:
            ref = "skipped"
        else:
            ref = f"{timed(fn, normal, 'reference')[1] * 1e3:.1f}ms"
        print(f"{name:36s} {v_normal:14.6g} {v_uniform:14.6g} {backend:>9s} {t_native * 1e3:8.1f}ms {ref:>10s}")


if __name__ == "__main__":
    main()
