"""The transforms g_a and g_s on large images, in overlapping tiles, in bounded memory.

A fully convolutional network computes every output from a bounded window of its input
(its receptive field). Cut the input into tiles, extend each by a halo at least as wide
as that window's radius, run the network on the extended tile and keep the tile's part
of the output: every kept output then saw exactly the inputs it sees in the whole image,
so tiling changes nothing but the summation order of the floating-point arithmetic
(seamless: differences near 1e-6 in float32, 1e-15 in float64). Peak memory is that of
one tile, whatever the image size.

The entropy model is not tiled: the reference searches the whole latent (section 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

ANALYSIS_TILE = 1024  # pixels: g_a's activations for a 1024 x 1024 tile of the paper preset take ~1 GB
SYNTHESIS_TILE = 48  # latents (768 pixels): g_s runs in float64, ~1 GB per tile for the paper preset


def receptive_radius(net: nn.Sequential) -> float:
    """How far (in the net's input units) an output reaches into the input, at most.

    Conv2d (k, stride s): k // 2 of its own input units. ConvTranspose2d (k, stride s):
    an output depends on inputs within (k // 2) / s of its position, plus one for rounding.
    Other layers (GDN, activations) are pointwise in space.
    """
    radius, unit = 0.0, 1.0  # unit: size of the current layer's input sample in net-input units
    for layer in net:
        if isinstance(layer, nn.ConvTranspose2d):
            radius += ((layer.kernel_size[0] // 2) / layer.stride[0] + 1) * unit
            unit /= layer.stride[0]
        elif isinstance(layer, nn.Conv2d):
            radius += (layer.kernel_size[0] // 2) * unit
            unit *= layer.stride[0]
    return radius


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, halo: int, scale: float) -> torch.Tensor:
    """``fn(x)`` computed tile by tile; ``fn`` maps an input of H x W to one of H*scale x W*scale.

    ``tile`` and ``halo`` are in input units, and ``tile * scale``, ``halo * scale`` must be
    whole numbers (for a downsampling fn, multiples of its stride), as must the input size.
    """
    _, _, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)

    def spans(size: int):  # (kept start, kept end, extended start, extended end) per tile, in input units
        return [(a, min(size, a + tile), max(0, a - halo), min(size, a + tile + halo)) for a in range(0, size, tile)]

    def out_(v: int) -> int:
        return round(v * scale)

    out = None
    for r0, r1, a0, a1 in spans(h):
        for c0, c1, b0, b1 in spans(w):
            y = fn(x[:, :, a0:a1, b0:b1])
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], out_(h), out_(w))
            out[:, :, out_(r0) : out_(r1), out_(c0) : out_(c1)] = y[:, :, out_(r0 - a0) : out_(r1 - a0), out_(c0 - b0) : out_(c1 - b0)]
    return out


def halo_for(net: nn.Sequential, align: int) -> int:
    """The receptive radius rounded up to a multiple of ``align`` (the net's stride, for g_a)."""
    return math.ceil(receptive_radius(net) / align) * align
