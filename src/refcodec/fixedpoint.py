"""Bit-exact inference for everything that selects a probability or a reference.

An encoder and a decoder that compute a mean, a scale or a reference position
differently by one bit produce a corrupt image. Floating-point convolutions are
not reproducible across thread counts, kernels or machines, because summation
order changes the rounding. This module removes the rounding instead of trying
to control the order: weights are snapped to a grid of 2**-WEIGHT_BITS,
activations to 2**-ACT_BITS, and products are summed in float64. Every product
is then an exact multiple of 2**-(WEIGHT_BITS + ACT_BITS), and as long as every
partial sum stays below 2**53 of those units (checked once per layer by
:func:`exact_params`), every sum is exact, so any order, any thread count, a full
convolution in the encoder and a per-position matrix product in the decoder all
give the same bits. Element-wise operations (one IEEE operation each: +, *, /,
sqrt, comparisons) are correctly rounded and therefore reproducible too;
transcendental functions are not, so none is used on the coding path (scales
come from a fixed table, see ``entropy.gaussian``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")

WEIGHT_BITS = 16
ACT_BITS = 12
ACT_MAX = 2.0**12  # activations are clamped to [-ACT_MAX, ACT_MAX] before each layer
_EXACT_LIMIT = 2.0 ** (53 - WEIGHT_BITS - ACT_BITS)
ROW_ALIGN = 4  # row counts of the decoder's products are rounded up to this (``ExactLinear``) ...
PAD_FROM = 2**19  # ... in layers of at least this many weights (4 MiB in float64: more than a core's cache)


def snap(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    """Round to the grid 2**-bits in float64 (scaling by a power of two is exact)."""
    scale = float(1 << bits)
    return (x.double() * scale).round_().div_(scale)  # in place on the product: a third of the memory traffic


def cached(owner: object, name: str, tensors: list[torch.Tensor], compute: Callable[[], T]) -> T:
    """``compute()``, kept on ``owner`` until one of ``tensors`` is replaced or changed in place
    (torch counts in-place writes in ``_version``), so that coding many images prepares it once."""
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    hit = owner.__dict__.get(name)
    if hit is None or hit[0] != key:
        owner.__dict__[name] = hit = (key, compute())
    return hit[1]


def exact_params(layer: nn.Conv2d | nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Snapped float64 weight (masked, for a masked convolution) and bias of a layer, checked for exactness (cached)."""
    tensors = [t for t in (layer.weight, layer.bias, getattr(layer, "mask", None)) if t is not None]
    return cached(layer, "_exact_params", tensors, lambda: _snap_params(layer))


def _snap_params(layer: nn.Conv2d | nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = getattr(layer, "masked_weight", layer.weight)
    w = snap(weight.detach(), WEIGHT_BITS)
    b = None if layer.bias is None else snap(layer.bias.detach(), WEIGHT_BITS + ACT_BITS)
    # Worst case over outputs of sum |w| * ACT_MAX + |b|; for a transposed conv the
    # outputs are indexed by dim 1, so sum over everything else of that slice.
    out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    worst = w.abs().transpose(0, out_dim).flatten(1).sum(1) * ACT_MAX
    if b is not None:
        worst = worst + b.abs()
    if float(worst.max()) >= _EXACT_LIMIT:
        raise ValueError(f"{type(layer).__name__} too large for exact fixed-point inference")
    return w, b


class ExactLinear:
    """x @ w.T + b for rows x of activations (a 1x1 convolution, or a convolution at given
    positions from their patches), clamped to the activation range and snapped like every layer.

    On a CPU, a layer of at least ``PAD_FROM`` weights pads more than two rows with zero rows to
    a multiple of ``ROW_ALIGN``: torch's float64 matrix product (MKL) is much faster for such
    counts when the weights come from memory, not from cache (measured on the 13 layers of the
    paper preset's entropy model, 2 AVX2 cores: 11 rows 19.4 ms, 12 rows 12.5-14.5 ms; 15 rows
    22.7 ms, 16 rows 17 ms; a whole Kodak decode 3-7% faster). The decoder multiplies a few rows at
    every step. Smaller layers, which stay in cache, gain nothing and pay for the extra rows
    (the shipped small models: 0% and 5% slower with padding), so they are not padded.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        self.w, self.b = w, b
        self.align = ROW_ALIGN if w.numel() >= PAD_FROM else 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = len(x)
        pad = -rows % self.align if rows > 2 and x.device.type == "cpu" else 0
        x = F.pad(x, (0, 0, 0, pad)) if pad else x
        return snap(F.linear(x.clamp(-ACT_MAX, ACT_MAX), self.w, self.b)[:rows])


def exact_rows(layer: nn.Conv2d) -> ExactLinear:
    """A convolution as an :class:`ExactLinear` of patch rows (its visible taps, for a masked
    convolution, in the order of ``layers.reference.patches_at``; a 1x1 convolution's rows are
    its input features). Cached until the layer's tensors change."""
    mask = getattr(layer, "mask", None)
    tensors = [t for t in (layer.weight, layer.bias, mask) if t is not None]

    def build() -> ExactLinear:
        w, b = exact_params(layer)
        return ExactLinear(w.flatten(1) if mask is None else w[:, :, mask.bool()].flatten(1), b)

    return cached(layer, "_exact_rows", tensors, build)


def activation(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Apply ReLU / LeakyReLU (one correctly rounded multiply) and snap back to the grid."""
    if isinstance(layer, nn.ReLU):
        return torch.clamp_min(x, 0.0)
    if isinstance(layer, nn.LeakyReLU):
        return snap(torch.where(x >= 0, x, x * layer.negative_slope))
    raise TypeError(f"no exact version of {type(layer).__name__}")


class ExactNet:
    """A frozen, bit-exact float64 copy of a feed-forward network.

    Supports nn.Sequential of Conv2d (including masked), ConvTranspose2d, ReLU,
    LeakyReLU and Identity. Inputs are snapped to the activation grid; every layer
    output is snapped again, so results are identical for any thread count and
    for a full convolution or the same layer evaluated at a few positions.
    """

    def __init__(self, net: nn.Module):
        layers = list(net) if isinstance(net, nn.Sequential) else [net]
        self.ops: list[tuple[str, object]] = []
        for layer in layers:
            if isinstance(layer, nn.Identity):
                continue
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                rows = exact_rows(layer) if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) else None
                self.ops.append(("conv", (layer, *exact_params(layer), rows)))
            else:
                activation(torch.zeros(1, dtype=torch.float64), layer)  # fail early if unsupported
                self.ops.append(("act", layer))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # cuDNN may pick FFT or Winograd kernels, which round; the native ones multiply and add
            with torch.backends.cudnn.flags(enabled=False):
                return self._run(x)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = snap(x)
        for kind, op in self.ops:
            if kind == "act":
                x = activation(x, op)
                continue
            layer, w, b, rows = op
            if x.dim() == 2:  # rows of features: a 1x1 conv as a matrix product
                x = rows(x)
                continue
            x = x.clamp(-ACT_MAX, ACT_MAX)
            if isinstance(layer, nn.ConvTranspose2d):
                y = F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding)
            else:
                y = F.conv2d(x, w, b, layer.stride, layer.padding)
            x = snap(y)
        return x
