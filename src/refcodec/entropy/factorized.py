"""Non-parametric fully factorized density (Ballé et al. 2018, appendix 6.1).

Each channel has its own univariate cumulative c(x), a small monotone network:
matrices made positive with softplus, biases, and tanh "factors" between layers.
The probability of an integer symbol is c(x + 1/2) - c(x - 1/2) (the density
convolved with a unit uniform, like eq. 2). Used for the hyper-latents z of every
model and for y in the ``factorized`` baseline.

For coding, :meth:`FactorizedDensity.update` tabulates each channel's
probabilities once, as integers, into buffers that are saved with the weights.
Encoder and decoder read the same integers, so their tables cannot differ.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.bound import lower_bound
from .gaussian import LIKELIHOOD_MIN

TAIL_MASS = 1e-6
PMF_BITS = 16
SEARCH_RANGE = 512


class FactorizedDensity(nn.Module):
    """Per-channel learned density with filters (1, 3, 3, 3, 1) and init_scale 10 as in the paper."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # Coding tables (filled by update()): pmf counts, the symbol of column 0, and the length of each row.
        self.register_buffer("pmf", torch.zeros(channels, 1, dtype=torch.int32))
        self.register_buffer("pmf_offset", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("pmf_length", torch.zeros(channels, dtype=torch.int32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pmf"
        if key in state_dict:  # the table width is only known once update() has run
            self.pmf = torch.zeros_like(state_dict[key], dtype=torch.int32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """x: (channels, 1, n) -> logits of c(x), same shape."""
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of each element of x (N, C, H, W) under its channel's density."""
        n, c, h, w = x.shape
        v = x.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cumulative(v - 0.5)
        upper = self._logits_cumulative(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail that keeps precision
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        p = lower_bound(p, LIKELIHOOD_MIN)
        return p.reshape(c, n, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def update(self) -> None:
        """Tabulate integer pmfs over each channel's support (tails beyond TAIL_MASS are clamped)."""
        k = torch.arange(-SEARCH_RANGE, SEARCH_RANGE + 1, dtype=torch.float32)
        cdf = torch.sigmoid(self._logits_cumulative(k.view(1, 1, -1).expand(self.channels, 1, -1) + 0.5)).squeeze(1)
        below = torch.cat([torch.zeros(self.channels, 1), cdf[:, :-1]], 1)
        rows, offsets, lengths = [], [], []
        for c in range(self.channels):
            inside = ((cdf[c] > TAIL_MASS) & (below[c] < 1 - TAIL_MASS)).nonzero().flatten()
            lo, hi = (int(inside[0]), int(inside[-1])) if inside.numel() else (SEARCH_RANGE, SEARCH_RANGE)
            hi = max(hi, lo + 1)  # the coder needs two symbols even for a channel that collapsed to one value
            p = (cdf[c, lo : hi + 1] - below[c, lo : hi + 1]).double()
            p[0] += below[c, lo]
            p[-1] += 1 - cdf[c, hi]
            counts = torch.clamp((p / p.sum() * (1 << PMF_BITS)).round(), min=1).to(torch.int32)
            rows.append(counts)
            offsets.append(lo - SEARCH_RANGE)
            lengths.append(hi - lo + 1)
        width = max(lengths)
        self.pmf = torch.stack([F.pad(r, (0, width - len(r))) for r in rows])
        self.pmf_offset = torch.tensor(offsets, dtype=torch.int32)
        self.pmf_length = torch.tensor(lengths, dtype=torch.int32)

    def clamp_to_support(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp integer symbols (N, C, H, W) to the tabulated range of their channel."""
        lo = self.pmf_offset.view(1, -1, 1, 1).to(x.dtype)
        hi = (self.pmf_offset + self.pmf_length - 1).view(1, -1, 1, 1).to(x.dtype)
        return torch.maximum(torch.minimum(x, hi), lo)

    def tables(self) -> list[np.ndarray]:
        """Per channel, the probability row the coder uses (float64, normalized integer counts)."""
        pmf, length = self.pmf.cpu(), self.pmf_length.cpu()
        rows = [pmf[c, : int(length[c])].double().numpy() for c in range(self.channels)]
        return [r / r.sum() for r in rows]
