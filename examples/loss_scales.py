"""The value of every loss on an N(0, I) batch and on an untrained encoder's first batch.

What a weight multiplies: each loss at its defaults (those of ``gaussreg train``) on
N(0, I) batches of n points in D dimensions, which is where training should end, and on
the first batch of the untrained ``gaussreg train`` autoencoder on the digits (D = 8,
n = 128), which is where it starts. Prints a markdown table (README, "Choosing a weight").

    python3 examples/loss_scales.py
"""
import statistics

import torch

import gaussreg
from gaussreg import train

SIZES = ((128, 8), (1024, 8), (128, 64), (1024, 64))
REPEATS = 5


def losses(generator: torch.Generator):
    """(name, loss of z) at the defaults ``gaussreg train`` uses."""
    return [
        ("cdf_attraction", lambda z: gaussreg.cdf_attraction(z)),
        ("mmd (imq, fresh prior sample)", lambda z: gaussreg.mmd(z, generator=generator)),
        ("cw_distance(log=True)", lambda z: gaussreg.cw_distance(z, log=True)),
        ("sliced_wasserstein", lambda z: gaussreg.sliced_wasserstein(z, generator=generator)),
        ("coordinate_cdf_attraction", lambda z: gaussreg.coordinate_cdf_attraction(z)),
        ("gaussian_l2_to_normal", lambda z: gaussreg.gaussian_l2_to_normal(z)),
        ("epps_pulley", lambda z: gaussreg.epps_pulley(z, generator=generator)),
    ]


def first_batch(n: int = 128) -> torch.Tensor:
    """Latents of the untrained ``gaussreg train`` autoencoder (its seed 0) for n digits."""
    torch.manual_seed(0)
    data, _, _ = train.load_data(None)
    model = train.Autoencoder(data.shape[1], 8)
    with torch.no_grad():
        z, _ = model(data[:n])
    return z.double()


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    start = first_batch()
    header = ["loss"] + [f"N(0, I) n={n} D={d}" for n, d in SIZES] + ["first batch n=128 D=8"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, loss in losses(generator):
        cells = []
        for n, d in SIZES:
            values = [float(loss(torch.randn(n, d, generator=generator, dtype=torch.float64)))
                      for _ in range(REPEATS)]
            cells.append(f"{statistics.median(values):.3g}")
        cells.append(f"{float(loss(start)):.3g}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n(medians of {REPEATS} batches; first batch: mean |z| = {float(start.norm(dim=1).mean()):.3g})")


if __name__ == "__main__":
    main()
