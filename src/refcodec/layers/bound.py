"""A lower bound that does not trap gradients (Ballé et al. 2018), used for GDN parameters, scales and likelihoods."""

from __future__ import annotations

import torch


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would push x up (Ballé's LowerBound)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)  # descent moves x by -grad: grad < 0 raises x
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Elementwise max(x, bound) with gradients that can lift x back above the bound."""
    return _LowerBound.apply(x, bound)
