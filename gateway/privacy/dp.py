"""Differential privacy with OpenDP: noise on released counts, and what it costs in accuracy.

Counts get discrete Laplace noise (OpenDP's `make_laplace` on integers), with scale
sensitivity / epsilon, where the sensitivity is the most one device can change a count in one
window (`Noise.max_contribution`, enforced by counting each pseudonym once per window).
"""

from __future__ import annotations

import opendp.prelude as dp

from .policy import Noise

dp.enable_features("contrib")  # OpenDP marks its measurements "contrib" (not yet vetted)


def scale(noise: Noise) -> float:
    return noise.max_contribution / noise.epsilon


def accuracy(noise: Noise, alpha: float = 0.05) -> float:
    """The +/- bound that a released count stays within with probability 1 - alpha."""
    return float(dp.discrete_laplacian_scale_to_accuracy(scale(noise), alpha))
