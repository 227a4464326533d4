"""Gaussian conditional entropy model (paper eq. 2) and its exact coding-time form.

Each latent is modelled as N(mu, sigma^2) convolved with U(-1/2, 1/2), so the
probability of an integer y is Phi((y - mu + 1/2) / sigma) - Phi((y - mu - 1/2) / sigma).

Networks predict log-sigma (a stable parametrization: no overflow, and stages can
refine it additively). For training, sigma = exp(log-sigma) with a lower bound
that still lets gradients push it up. For coding, log-sigma (exact, on the
fixed-point grid) is rounded to a table of SCALES_PER_E steps per unit, and the
scale is read from SCALE_TABLE: a comparison and a lookup, bit-identical in the
encoder and the decoder.
"""

from __future__ import annotations

import math

import torch

from ..fixedpoint import snap
from ..layers.bound import lower_bound

SCALE_MIN = 0.11
SCALE_MAX = 256.0
LIKELIHOOD_MIN = 1e-9
SCALES_PER_E = 64
_LOG_LO = round(math.log(SCALE_MIN) * SCALES_PER_E)
_LOG_HI = round(math.log(SCALE_MAX) * SCALES_PER_E)
SCALE_TABLE = snap(torch.exp(torch.arange(_LOG_LO, _LOG_HI + 1, dtype=torch.float64) / SCALES_PER_E), 24)


def scale_from_log(log_scale: torch.Tensor) -> torch.Tensor:
    """sigma = exp(log-sigma), bounded to [SCALE_MIN, SCALE_MAX]."""
    return torch.exp(lower_bound(log_scale, math.log(SCALE_MIN)).clamp_max(math.log(SCALE_MAX)))


def _std_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))


def likelihood(y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Eq. 2: probability of (noisy or rounded) y, lower-bounded by LIKELIHOOD_MIN."""
    scale = scale_from_log(log_scale)
    v = (y - mean).abs()  # symmetric form: evaluate the tail side for precision
    p = _std_cdf((0.5 - v) / scale) - _std_cdf((-0.5 - v) / scale)
    return lower_bound(p, LIKELIHOOD_MIN)


def scale_index(log_scale: torch.Tensor) -> torch.Tensor:
    """Index into SCALE_TABLE of an exact log-sigma (rounding is exact on the fixed-point grid)."""
    return (torch.round(log_scale.double() * SCALES_PER_E).clamp(_LOG_LO, _LOG_HI) - _LOG_LO).long()


def coding_scale(log_scale: torch.Tensor) -> torch.Tensor:
    """The scale the entropy coder uses for an exact log-sigma."""
    return SCALE_TABLE.to(log_scale.device)[scale_index(log_scale)]


# Phi on [-8, 8] at 1/128 steps; linear interpolation between entries uses only
# correctly rounded operations, so coding-time probabilities are reproducible.
_PHI_STEPS = 128
_PHI_RANGE = 8
_PHI_TABLE = snap(
    torch.tensor(
        [0.5 * math.erfc(-(k / _PHI_STEPS) / math.sqrt(2)) for k in range(-_PHI_RANGE * _PHI_STEPS, _PHI_RANGE * _PHI_STEPS + 1)],
        dtype=torch.float64,
    ),
    40,
)


def _exact_std_cdf(x: torch.Tensor) -> torch.Tensor:
    pos = (x.clamp(-_PHI_RANGE, _PHI_RANGE) + _PHI_RANGE) * _PHI_STEPS
    idx = pos.floor().clamp_max(len(_PHI_TABLE) - 2)
    frac = pos - idx
    table = _PHI_TABLE.to(x.device)
    lo = table[idx.long()]
    hi = table[idx.long() + 1]
    return lo + (hi - lo) * frac


def exact_likelihood(y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Eq. 2 at coding time: table scale, interpolated Phi, result on a 2**-24 grid.

    ``y`` are integers and ``mean`` lies on the fixed-point grid, so y - mean is
    exact; every later step is one correctly rounded operation. The snapped
    result can be summed in any order without rounding.
    """
    scale = coding_scale(log_scale)
    v = (y.double() - mean.double()).abs()
    p = _exact_std_cdf((0.5 - v) / scale) - _exact_std_cdf((-0.5 - v) / scale)
    return snap(p, 24)

