"""Baselines without a context model: factorized prior (Ballé et al. 2017) and mean-scale hyperprior (Ballé et al. 2018 / Minnen et al. 2018).

The joint context + hyperprior model of Minnen et al. (2018) is ``GRM`` with the
reference off and a single parameter network (see ``models.grm``).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .. import profiling
from ..entropy.coder import SYMBOL_MAX, Decoder, Encoder
from ..entropy.factorized import FactorizedDensity
from ..entropy.gaussian import coding_scale, likelihood
from ..fixedpoint import ExactNet
from .base import (
    STRIDE,
    CompressionModel,
    add_noise,
    analysis_transform,
    decode_factorized,
    encode_factorized,
    hyper_analysis,
    hyper_synthesis,
    ste_round,
    synthesis_transform,
)


class FactorizedPrior(CompressionModel):
    """y coded with a per-channel learned density; no side information."""

    def __init__(self, N: int = 128, M: int = 192, gsdn: bool = False):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = analysis_transform(N, M, gsdn)
        self.g_s = synthesis_transform(N, M, gsdn)
        self.density = FactorizedDensity(M)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        y_rate = add_noise(y) if self.training else torch.round(y)
        return {"x_hat": self.g_s(ste_round(y)), "likelihoods": {"y": [self.density.likelihood(y_rate)]}}

    def stream_count(self) -> int:
        return 1

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        y_hat = self.density.clamp_to_support(torch.round(self.analysis(x)))
        with profiling.stage("coder"):
            return [encode_factorized(self.density, y_hat)], y_hat

    @torch.no_grad()
    def decode(self, streams: list[bytes], height: int, width: int, progress: tqdm | None = None) -> torch.Tensor:
        with profiling.stage("coder"):
            y_hat = decode_factorized(self.density, streams[0], height // STRIDE, width // STRIDE)
        if progress is not None:
            progress.update(1)
        return y_hat


class MeanScaleHyperprior(CompressionModel):
    """Gaussian (mu, sigma) for y predicted from side information z alone."""

    def __init__(self, N: int = 128, M: int = 192, gsdn: bool = False):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = analysis_transform(N, M, gsdn)
        self.g_s = synthesis_transform(N, M, gsdn)
        self.h_a = hyper_analysis(N, M)
        self.h_s = hyper_synthesis(N, M)
        self.density = FactorizedDensity(N)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        z_rate, y_rate = (add_noise(z), add_noise(y)) if self.training else (torch.round(z), torch.round(y))
        mean, log_scale = self.h_s(ste_round(z)).chunk(2, 1)
        return {
            "x_hat": self.g_s(ste_round(y)),
            "likelihoods": {"y": [likelihood(y_rate, mean, log_scale)], "z": self.density.likelihood(z_rate)},
        }

    def stream_count(self) -> int:
        return 2

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        y = self.analysis(x)
        with profiling.stage("hyper"):
            z_hat = self.density.clamp_to_support(torch.round(self.h_a(y)))
            z_stream = encode_factorized(self.density, z_hat)
            mean, log_scale = ExactNet(self.h_s)(z_hat).chunk(2, 1)
        y_hat = torch.round(y).clamp(-SYMBOL_MAX, SYMBOL_MAX)
        with profiling.stage("coder"):
            enc = Encoder()
            enc.gaussian(y_hat, mean, coding_scale(log_scale))
            return [z_stream, enc.finish()], y_hat

    @torch.no_grad()
    def decode(self, streams: list[bytes], height: int, width: int, progress: tqdm | None = None) -> torch.Tensor:
        with profiling.stage("hyper"):
            z_hat = decode_factorized(self.density, streams[0], height // 64, width // 64)
            mean, log_scale = ExactNet(self.h_s)(z_hat).chunk(2, 1)
        with profiling.stage("coder"):
            symbols = Decoder(streams[1]).gaussian(mean, coding_scale(log_scale))
        if progress is not None:
            progress.update(1)
        return torch.from_numpy(symbols).float().view(mean.shape).to(mean.device)
