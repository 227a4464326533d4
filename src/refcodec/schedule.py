"""Decode schedules: which latent positions are decoded before which.

A schedule assigns every latent position (row r, column c) a decode step t(r, c).
Positions with the same step are decoded together; a position may only depend on
positions with a strictly smaller step. This one object is the single source of
truth for causality: the masked convolutions of the context model, the causal
mask of the global reference search (section 3, "we can only see the decoded
latents") and the coding loop all read it.

- ``raster``: t = r * W + c, one position per step (the paper's order).
- ``wavefront``: t = 3 r + c. With a 5x5 causal context every neighbour that the
  raster mask shows (the two rows above, columns c-2..c+2, and the two positions
  to the left) has a smaller step, so this is the earliest order in which every
  context is decoded; a 32x48 latent (a Kodak image) takes 141 steps instead of
  1536.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """A decode order given by the step of an offset: t(r, c) = row_step * r + c (* W for raster)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")

    def steps(self, height: int, width: int) -> torch.Tensor:
        """Step index of every position, shape (height, width), int64."""
        r = torch.arange(height).view(-1, 1)
        c = torch.arange(width).view(1, -1)
        row_step = width if self.name == "raster" else 3
        return row_step * r + c

    def num_steps(self, height: int, width: int) -> int:
        """Decode steps for a latent of height x width (wavefront: about 3H + W)."""
        return int(self.steps(height, width).max()) + 1

    def order(self, height: int, width: int) -> list[torch.Tensor]:
        """Positions (flat raster indices, ascending) decoded at each step, in step order."""
        t = self.steps(height, width).flatten()
        sorted_t, idx = torch.sort(t, stable=True)
        counts = torch.bincount(sorted_t).tolist()
        return [chunk for chunk in torch.split(idx, counts) if chunk.numel()]

    def coding_permutation(self, height: int, width: int) -> torch.Tensor:
        """Flat raster indices in the order their symbols are written to the bitstream."""
        return torch.cat(self.order(height, width))

    def visible(self, kernel_size: int, include_centre: bool) -> torch.Tensor:
        """Kernel mask of the neighbours decoded strictly before the centre.

        The step difference of an offset (dr, dc) does not depend on the position
        (for raster, on any image wider than the kernel), so one mask serves the
        whole image. ``include_centre`` gives van den Oord's type B mask, else type A.
        """
        k = kernel_size
        d = torch.arange(k) - k // 2
        row_step = 1 << 20 if self.name == "raster" else 3
        dt = row_step * d.view(-1, 1) + d.view(1, -1)
        mask = dt < 0
        if include_centre:
            mask[k // 2, k // 2] = True
        return mask.float()


SCHEDULES = ("raster", "wavefront")
