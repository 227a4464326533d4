"""Masked convolution (van den Oord et al., 2016) for the context and reference models (Table 1, "Masked")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """Raster-order causal mask of shape (k, k), 1 where a neighbour is visible.

    Type "A" sees the neighbours strictly before the centre in raster order (all
    rows above, and the left part of the centre row); type "B" also sees the
    centre.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    centre = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:centre] = 1
    mask[centre, : centre + (mask_type == "B")] = 1
    return mask


class MaskedConv2d(nn.Conv2d):
    """Stride-1, same-size k x k convolution whose weight is multiplied by a fixed (k, k) mask.

    The mask (1 = visible neighbour) is chosen by the caller, normally the decode
    schedule, so that the output at a position depends only on latents decoded
    before it (type A) or on those and the position itself (type B); see
    :func:`causal_mask` for the raster masks.
    """

    mask: torch.Tensor

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, mask: torch.Tensor, bias: bool = True
    ) -> None:
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        if mask.shape != (kernel_size, kernel_size):
            raise ValueError(f"mask must have shape ({kernel_size}, {kernel_size}), got {tuple(mask.shape)}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.register_buffer("mask", mask.detach().clone().float())

    @property
    def masked_weight(self) -> torch.Tensor:
        """The weight with invisible taps zeroed."""
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight, self.bias, padding=self.padding)
