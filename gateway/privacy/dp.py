"""Differential privacy with OpenDP: noise on released counts, and what it costs in accuracy.

Counts get discrete Laplace noise (OpenDP's `make_laplace` on integers), with scale
sensitivity / epsilon, where the sensitivity is the most one device can change a count in one
window (`Noise.max_contribution`, enforced by counting each pseudonym once per window).

The measurement is built once per noise setting (`measurement`, cached) and used for every
release of the streams that share that setting. What a release costs is what OpenDP's privacy
map says the measurement costs (`epsilon`), so the ledger books the guarantee OpenDP proves,
not a number copied from the policy.
"""

from __future__ import annotations

import functools
from typing import Any

# OpenDP's modules that this file uses, not opendp.prelude: the prelude also imports the
# transformations, combinators, context and extras (numpy, sklearn, polars probing), about
# 1.4 MB more resident memory on the Raspberry Pi for nothing the gateway calls.
from opendp.accuracy import discrete_laplacian_scale_to_accuracy
from opendp.domains import atom_domain
from opendp.measurements import make_laplace
from opendp.metrics import absolute_distance
from opendp.mod import enable_features

from .policy import Noise

enable_features("contrib")  # OpenDP marks its measurements "contrib" (not yet vetted)


def scale(noise: Noise) -> float:
    return noise.max_contribution / noise.epsilon


def accuracy(noise: Noise, alpha: float = 0.05) -> float:
    """The +/- bound that a released count stays within with probability 1 - alpha."""
    return float(discrete_laplacian_scale_to_accuracy(scale(noise), alpha))


@functools.lru_cache(maxsize=64)
def measurement(noise: Noise) -> Any:
    """OpenDP's discrete Laplace measurement on integer counts for this noise setting."""
    return make_laplace(atom_domain(T=int), absolute_distance(T=int), scale=scale(noise))


def epsilon(noise: Noise) -> float:
    """The privacy loss of one release: the measurement's privacy map at the sensitivity."""
    return float(measurement(noise).map(noise.max_contribution))


def noisy_count(true_count: int, noise: Noise) -> int:
    """A count with discrete Laplace noise, post-processed: an integer, never below 0.

    Post-processing (clamping, and the small-count suppression the engine applies to the
    result) cannot weaken the differential privacy of the noisy value.
    """
    return max(0, int(measurement(noise)(int(true_count))))
