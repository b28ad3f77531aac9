"""gaussreg: latent-distribution regularizers for generative autoencoders.

Every loss takes a batch of latents ``z`` of shape (n, D) and returns a differentiable
0-dim tensor; the formulas are those of docs/formulas.md (section in each docstring). The O(n^2)
work runs in fused C++/OpenMP or CUDA kernels (``gaussreg.backends()`` says which are
built); ``gaussreg.reference`` holds the plain-PyTorch version of every formula.
"""
from . import diagnostics, nn, targets
from ._native import release_workspace, set_workspace_cache
from .engines import backends
from .losses.cdf_attraction import cdf_attraction
from .losses.coordinate_cdf_attraction import coordinate_cdf_attraction
from .losses.cramer_wold import cw_distance
from .losses.epps_pulley import epps_pulley
from .losses.gaussian_l2 import gaussian_l2, gaussian_l2_to_normal, mean_field_sigma
from .losses.gmm import GaussianMixture, gmm_cov_loss, gmm_ks_loss, gmm_loss_weights
from .losses.mmd import mmd
from .losses.sliced_wasserstein import sliced_wasserstein

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "backends",
    "cdf_attraction",
    "coordinate_cdf_attraction",
    "cw_distance",
    "diagnostics",
    "epps_pulley",
    "gaussian_l2",
    "gaussian_l2_to_normal",
    "gmm_cov_loss",
    "gmm_ks_loss",
    "gmm_loss_weights",
    "mean_field_sigma",
    "mmd",
    "nn",
    "release_workspace",
    "set_workspace_cache",
    "sliced_wasserstein",
    "targets",
]
