"""The interface every model shares, quantization, and the transforms of Minnen et al. (2018).

A model has two faces:
- ``forward(x)`` for training: reconstruction and likelihoods (the rate of each
  entropy-model stage and of z), with the mixed quantization of section 3
  (Minnen & Singh 2020): additive uniform noise for the rate terms, rounding with
  a straight-through gradient for everything the decoder sees.
- ``compress(x) -> streams`` and ``decompress(streams, shape) -> x_hat`` for coding.
  Everything that selects a probability runs bit-exactly (see ``fixedpoint``).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import profiling
from ..entropy.coder import Decoder, Encoder
from ..entropy.factorized import FactorizedDensity
from ..fixedpoint import cached
from ..layers.gdn import GSDN, IGSDN
from ..schedule import Schedule
from ..synthesis import exact_synthesis
from ..tiling import ANALYSIS_TILE, SYNTHESIS_TILE, halo_for, run_tiled

ALIGNMENT = 64  # image sides are padded to a multiple of this (16x analysis, 4x hyper analysis)
STRIDE = 16  # pixels per latent


def add_noise(x: torch.Tensor) -> torch.Tensor:
    """Training proxy of rounding for the rate: x + U(-1/2, 1/2); rounding in eval mode."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    """A k x k convolution with 'same' padding (downsampling by ``stride``)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """A k x k transposed convolution upsampling by exactly ``stride``."""
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


def analysis_transform(n: int, m: int, gsdn: bool) -> nn.Sequential:
    """g_a: four stride-2 5x5 convolutions with GSDN (or GDN) between them (Table 1)."""
    return nn.Sequential(
        conv(3, n), GSDN(n, subtractive=gsdn),
        conv(n, n), GSDN(n, subtractive=gsdn),
        conv(n, n), GSDN(n, subtractive=gsdn),
        conv(n, m),
    )  # fmt: skip


def synthesis_transform(n: int, m: int, gsdn: bool) -> nn.Sequential:
    """g_s: four stride-2 5x5 transposed convolutions with IGSDN (or IGDN) between them."""
    return nn.Sequential(
        deconv(m, n), IGSDN(n, subtractive=gsdn),
        deconv(n, n), IGSDN(n, subtractive=gsdn),
        deconv(n, n), IGSDN(n, subtractive=gsdn),
        deconv(n, 3),
    )  # fmt: skip


def hyper_analysis(n: int, m: int) -> nn.Sequential:
    """h_a of Minnen et al. (2018)."""
    return nn.Sequential(
        conv(m, n, 3, 1), nn.LeakyReLU(inplace=True),
        conv(n, n), nn.LeakyReLU(inplace=True),
        conv(n, n),
    )  # fmt: skip


def hyper_synthesis(n: int, m: int) -> nn.Sequential:
    """h_s of Minnen et al. (2018): 2M output channels (mean and log-scale features)."""
    return nn.Sequential(
        deconv(n, m), nn.LeakyReLU(inplace=True),
        deconv(m, m * 3 // 2), nn.LeakyReLU(inplace=True),
        conv(m * 3 // 2, 2 * m, 3, 1),
    )  # fmt: skip


def _channels_last(net: nn.Module):
    """``net`` on a channels-last copy of its input: 10-15% faster convolutions on CPU (measured)."""
    return lambda x: net(x.contiguous(memory_format=torch.channels_last))


class CompressionModel(nn.Module):
    """Base class: the coding interface, the decode schedule and the weights hash."""

    N: int
    M: int
    schedule = Schedule("raster")  # models without a context model decode all latents at once
    levels = 0  # quality levels of a variable-rate model (qualities 0 .. levels - 1); 0: one fixed rate
    quality: float | None = None  # the coding quality of a variable-rate model (``use_quality``)

    def use_quality(self, quality: float | None) -> None:
        """Code at ``quality``, any float in [0, levels - 1], with a variable-rate model.

        A fixed-rate model takes None only. Raises ValueError, in one line, otherwise.
        """
        if not self.levels:
            if quality is not None:
                raise ValueError("this model codes at one fixed rate and takes no quality (load another model for another rate)")
            return
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not math.isfinite(quality):
            raise ValueError(f"quality must be a number, got {quality!r}")
        if not 0 <= quality <= self.levels - 1:
            raise ValueError(f"quality {quality:g} is out of this model's range 0-{self.levels - 1}")
        self.quality = float(quality)

    def use_schedule(self, name: str) -> None:
        """Code with another decode schedule; refused if it would change what the model sees."""
        if name != self.schedule.name:
            raise ValueError(f"this model codes with the {self.schedule.name} schedule, not {name}")

    def stream_count(self) -> int:
        """Number of entropy-coded streams in a file of this model (side information first)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        """Streams and quantized latents y_hat of a padded image batch of one."""
        raise NotImplementedError

    def decode(self, streams: list[bytes], height: int, width: int, progress: tqdm | None = None) -> torch.Tensor:
        """Quantized latents y_hat of a padded image of the given size, from the streams; ``progress`` (a bar)
        counts the decode steps (:meth:`decode_steps`)."""
        raise NotImplementedError

    def decode_steps(self, height: int, width: int) -> int:
        """The steps of :meth:`decode` for a padded image of the given size (a model without a context model: one)."""
        return 1

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> list[bytes]:
        """The streams of a padded image batch of one (sides multiples of 64)."""
        return self.encode(x)[0]

    @torch.no_grad()
    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """g_a for coding, in tiles (``tiling``): bounded memory, the same latents for any thread count."""
        with profiling.stage("analysis"):
            return run_tiled(_channels_last(self.g_a), x, ANALYSIS_TILE, halo_for(self.g_a, STRIDE), 1 / STRIDE, align=STRIDE)

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor, exact: bool = True, progress: tqdm | None = None) -> torch.Tensor:
        """g_s for coding, in tiles (``tiling``, bounded memory): exact (``synthesis``: the same pixels on every
        machine, in float64), or the float32 transform of files before format version 3 (the same pixels
        for any thread count, which a tile per thread keeps, but not on every machine). ``progress`` (a bar)
        counts the tiles."""
        with profiling.stage("synthesis"):
            gain = self.synthesis_gain()
            if exact:
                return run_tiled(exact_synthesis(self.g_s, gain), y_hat, SYNTHESIS_TILE, halo_for(self.g_s, 1), STRIDE, exact=True,
                                 progress=progress)  # fmt: skip
            y_hat = y_hat if gain is None else y_hat * gain.to(y_hat)
            return run_tiled(_channels_last(self.g_s), y_hat, SYNTHESIS_TILE, halo_for(self.g_s, 1), STRIDE, progress=progress)

    def synthesis_gain(self) -> torch.Tensor | None:
        """What the quantized latents are multiplied by before g_s at the coding quality (1, M, 1, 1); None: nothing."""
        return None

    @torch.no_grad()
    def decompress(self, streams: list[bytes], height: int, width: int, progress: bool = False, exact: bool = True) -> torch.Tensor:
        """Reconstruction (1, 3, height, width), unclamped, of a padded image (``exact``: see :meth:`synthesize`),
        on the model's device: a model on a GPU runs the exact entropy model and synthesis there, the range
        decoder on the CPU, and gives the CPU's latents and pixels. ``progress`` shows one bar for the whole
        decode: the entropy decoding's steps, then the synthesis's tiles."""
        with tqdm(total=self.decode_steps(height, width), desc="decode", unit="step", disable=not progress, leave=False) as bar:
            return self.synthesize(self.decode(streams, height, width, bar), exact, bar)

    def update(self) -> None:
        """Tabulate every factorized density for coding (call after training)."""
        for module in self.modules():
            if isinstance(module, FactorizedDensity):
                module.update()

    def weights_hash(self) -> bytes:
        """16-byte digest of every parameter and buffer, in name order (stored in each file).

        Cached until a tensor is replaced or changed in place (``fixedpoint.cached``).
        """
        state = sorted(self.state_dict().items())

        def digest() -> bytes:
            h = hashlib.sha256()
            for name, t in state:
                h.update(name.encode())
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            return h.digest()[:16]

        return cached(self, "_weights_hash", [t for _, t in state], digest)


def encode_factorized(density: FactorizedDensity, x_hat: torch.Tensor) -> bytes:
    """Code integer symbols (1, C, H, W) channel by channel with the tabulated pmfs."""
    enc = Encoder()
    symbols = (x_hat[0].flatten(1) - density.pmf_offset.view(-1, 1)).cpu()  # one copy off a GPU, not one per channel
    for c, table in enumerate(density.tables()):
        enc.categorical(symbols[c], table)
    return enc.finish()


def decode_factorized(density: FactorizedDensity, data: bytes, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`encode_factorized`: (1, C, height, width) float integers, on the density's device."""
    dec = Decoder(data)
    rows = [dec.categorical(height * width, table) for table in density.tables()]
    offset = density.pmf_offset.view(-1, 1).long()
    symbols = torch.from_numpy(np.stack(rows).astype(np.int64)).to(offset.device) + offset
    return symbols.view(1, -1, height, width).float()
