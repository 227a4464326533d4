"""Gain units: one model for a continuous range of qualities (Cui et al., CVPR 2021,
"Asymmetric Gained Deep Image Compression With Continuous Rate Adaptation").

A gain unit holds, for every trained quality level l, a gain vector m_l and a separate
inverse gain vector m'_l over the channels of a latent (asymmetric: m'_l is learned, not
1 / m_l). The encoder scales the latent by m before quantization and the decoder scales
the quantized latent by m' before synthesis, so a larger gain means a finer quantizer and
more bits. Between two levels r and r+1 a quality q = r + t takes the exponential
interpolation of Cui et al. (eq. 6), m = m_r^(1-t) m_{r+1}^t, so the rate varies smoothly
with q. The vectors are stored as logarithms, which makes the interpolation linear and
keeps every gain positive.

At coding time the gains select probabilities (the inverse hyper gain feeds the exact
hyper decoder), so they must be the same bits on every machine: :meth:`GainUnit.exact`
computes them with Python's ``decimal`` module, whose exp is correctly rounded in
software, from the stored float32 values and the file's float64 quality, and rounds the
result to the fixed-point grid of the weights.
"""

from __future__ import annotations

import decimal
import math

import torch
from torch import nn

from ..fixedpoint import WEIGHT_BITS

_DECIMAL = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)


def level_position(quality: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower level r (0 .. levels-2) and fraction t in [0, 1] of qualities in [0, levels - 1]."""
    r = quality.floor().clamp(0, levels - 2)
    return r.long(), quality - r


def interpolate_log(values: list[float], quality: torch.Tensor) -> torch.Tensor:
    """exp of the linear interpolation of log ``values`` (one per level) at ``quality``: lambda(q)."""
    logs = torch.tensor([math.log(v) for v in values], dtype=torch.float64, device=quality.device)
    r, t = level_position(quality.double(), len(values))
    return torch.exp((1 - t) * logs[r] + t * logs[r + 1]).to(quality.dtype)


class GainUnit(nn.Module):
    """Gain m and inverse gain m' per level and channel (Cui et al. 2021), as logarithms."""

    def __init__(self, channels: int, levels: int):
        super().__init__()
        self.levels = levels
        self.log_gain = nn.Parameter(torch.zeros(levels, channels))
        self.log_inverse = nn.Parameter(torch.zeros(levels, channels))

    def _log_at(self, table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        r, t = level_position(quality, self.levels)
        t = t.to(table.dtype).unsqueeze(1)
        return (1 - t) * table[r] + t * table[r + 1]

    def forward(self, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (gain, inverse gain) of shape (N, C, 1, 1) for a quality per image (N,)."""
        gain = self._log_at(self.log_gain, quality).exp()
        inverse = self._log_at(self.log_inverse, quality).exp()
        return gain[:, :, None, None], inverse[:, :, None, None]

    @torch.no_grad()
    def exact(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Coding: (gain, inverse gain) of shape (1, C, 1, 1) in float64 on the 2**-WEIGHT_BITS grid,
        the same bits on every machine (correctly rounded decimal arithmetic, see the module doc)."""
        q = decimal.Decimal(quality)
        r = min(max(int(math.floor(quality)), 0), self.levels - 2)
        t = q - r
        grid = decimal.Decimal(2**WEIGHT_BITS)

        def at(table: torch.Tensor) -> torch.Tensor:
            lo, hi = table[r].float().cpu().tolist(), table[r + 1].float().cpu().tolist()
            values = []
            for a, b in zip(lo, hi):
                log = _DECIMAL.add(_DECIMAL.multiply(1 - t, decimal.Decimal(a)), _DECIMAL.multiply(t, decimal.Decimal(b)))
                units = _DECIMAL.multiply(_DECIMAL.exp(log), grid).to_integral_value(decimal.ROUND_HALF_EVEN)
                values.append(max(int(units), 1) / 2**WEIGHT_BITS)  # exact in float64
            return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)

        return at(self.log_gain), at(self.log_inverse)

    @torch.no_grad()
    def initialize(self, log_slope: list[float], inverse_slope: list[float] | None = None) -> None:
        """Set every channel of level l to log gain ``log_slope[l]`` (and log inverse gain
        ``inverse_slope[l]``, by default the negative): a start from a fixed-rate model."""
        self.log_gain.copy_(torch.tensor(log_slope).view(-1, 1).expand_as(self.log_gain))
        inverse = [-s for s in log_slope] if inverse_slope is None else inverse_slope
        self.log_inverse.copy_(torch.tensor(inverse).view(-1, 1).expand_as(self.log_inverse))
