"""gaussreg: latent-distribution regularizers for generative autoencoders.

Every loss takes a batch of latents ``z`` of shape (n, D) and returns a differentiable
0-dim tensor; the formulas are those of SPEC.md (section in each docstring). The O(n^2)
work runs in fused C++/OpenMP or CUDA kernels (``gaussreg.backends()`` says which are
built); ``gaussreg.reference`` holds the plain-PyTorch version of every formula.
"""
from . import diagnostics, nn, targets
from ._native import backends
from .losses.cdf_attraction import cdf_attraction
from .losses.cramer_wold import cw_distance
from .losses.gaussian_l2 import gaussian_l2, gaussian_l2_to_normal, mean_field_sigma
from .losses.mmd import mmd

__version__ = "0.1.0"

__all__ = [
    "backends",
    "cdf_attraction",
    "cw_distance",
    "diagnostics",
    "gaussian_l2",
    "gaussian_l2_to_normal",
    "mean_field_sigma",
    "mmd",
    "nn",
    "targets",
]
