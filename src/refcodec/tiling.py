"""The transforms g_a and g_s on large images, in overlapping tiles, in bounded memory, on every core.

A fully convolutional network computes every output from a bounded window of its input
(its receptive field). Cut the input into tiles, extend each by a halo at least as wide
as that window's radius, run the network on the extended tile and keep the tile's part
of the output: every kept output then saw exactly the inputs it sees in the whole image,
so tiling changes nothing but the rounding of the floating-point arithmetic (seamless:
differences near 1e-6 in float32). Peak memory is that of one tile per worker, whatever
the image size.

Tiles also make the transforms reproducible. A multi-threaded convolution splits its sums
in a way that depends on the thread count, which moves a few 8-bit pixels per megapixel
(measured: up to 5e-6 between 1 and 2 threads on a 1080p synthesis). Here every tile runs
on one thread, the tiles are spread over the workers, and the tile grid depends on the
image size only: the output is the same bits for any number of threads.

An exact transform (``synthesis``) gives the same bits whatever the tiles and threads, so it is
tiled to bound memory and to share the cores (``exact=True``): on one thread an image of one tile is
not split, which saves the halos' work.

The entropy model is not tiled: the reference searches the whole latent (section 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from tqdm import tqdm

ANALYSIS_TILE = 1024  # pixels: g_a's activations for a 1024 x 1024 tile of the paper preset take ~1 GB
SYNTHESIS_TILE = 64  # latents (1024 pixels): the same for g_s, in float32


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


def spans(size: int, count: int, halo: int, align: int) -> list[tuple[int, int, int, int]]:
    """``count`` tiles of (nearly) equal size, multiples of ``align``, along one side:
    (kept start, kept end, extended start, extended end) of each, in input units."""
    step = math.ceil(size / count / align) * align
    return [(a, min(size, a + step), max(0, a - halo), min(size, a + step + halo)) for a in range(0, size, step)]


def grid(height: int, width: int, tile: int, align: int, share: bool = True) -> tuple[int, int]:
    """Tiles along each side: at most ``tile`` units each, and (``share``) at least two along the
    longer side when it holds two aligned tiles, so that two cores share even a small image."""
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    if share and rows * cols == 1:
        if width >= height and width >= 2 * align:
            cols = 2
        elif height >= 2 * align:
            rows = 2
    return rows, cols


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, halo: int, scale: float, align: int = 1,
              exact: bool = False, progress: tqdm | None = None) -> torch.Tensor:  # fmt: skip
    """``fn(x)`` computed tile by tile, each tile on one thread, as many tiles at a time as torch
    has threads; ``fn`` maps an input of H x W to one of H*scale x W*scale. ``exact``: ``fn`` gives
    the same bits for any thread count, so on one thread one tile is not split. ``progress`` (a bar)
    grows by the tiles and advances as each is placed.

    ``tile`` and ``halo`` are in input units; ``align * scale`` and ``halo * scale`` must be
    whole numbers (for a downsampling fn, ``align`` and ``halo`` multiples of its stride), as
    must the input size.
    """
    _, _, h, w = x.shape
    threads = torch.get_num_threads()
    rows, cols = grid(h, w, tile, align, share=not exact or threads > 1)
    tiles = [(r, c) for r in spans(h, rows, halo, align) for c in spans(w, cols, halo, align)]
    if progress is not None:
        progress.total += len(tiles)
        progress.refresh()

    def out_(v: int) -> int:
        return round(v * scale)

    def run(t):
        (r0, r1, a0, a1), (c0, c1, b0, b1) = t
        torch.set_num_threads(1)  # this thread's own setting: one thread per tile
        y = fn(x[:, :, a0:a1, b0:b1])
        return y[:, :, out_(r0 - a0) : out_(r1 - a0), out_(c0 - b0) : out_(c1 - b0)]

    out = None
    try:
        with ThreadPoolExecutor(min(threads, len(tiles))) as pool:
            for ((r0, r1, *_), (c0, c1, *_)), y in zip(tiles, pool.map(run, tiles)):
                if out is None:
                    out = y.new_empty(y.shape[0], y.shape[1], out_(h), out_(w))
                out[:, :, out_(r0) : out_(r1), out_(c0) : out_(c1)] = y
                if progress is not None:
                    progress.update(1)
    finally:
        torch.set_num_threads(threads)
    return out


def halo_for(net: nn.Sequential, align: int) -> int:
    """The receptive radius rounded up to a multiple of ``align`` (the net's stride, for g_a)."""
    return math.ceil(receptive_radius(net) / align) * align
