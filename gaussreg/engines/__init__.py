"""The compiled engines' Python side: one module per engine, named like its C++/CUDA sources.

- ``cdf_attraction``: the ranked pair distances of ``cdf_attraction`` (``gaussreg::cdf_pairs``)
  and the key bins of ``diagnostics.ks_distances`` (``csrc/*/cdf_attraction.*``).
- ``pair_sum``: kernel sums over point pairs for ``gaussian_l2``, ``mmd`` and ``cw_distance``
  (``gaussreg::pair_sum``, ``csrc/*/pair_sum.*`` and one file per kernel).
- ``segmented``: per-segment sorts against targets for the sliced, coordinate and GMM losses
  (``gaussreg::sorted_gaps``, ``csrc/*/segmented.*``).
- ``epps_pulley``: the characteristic-function moments of ``epps_pulley``.

Each wraps its compiled entry points as ``torch.library`` custom ops (with fake
implementations for ``torch.compile``) and says from sizes alone what a call needs in
memory. The loss fronts in ``gaussreg.losses`` check their inputs and call these.
"""
