"""GSDN and IGSDN (paper section 4, eq. 5 and 6), with GDN and IGDN as special cases.

GSDN (eq. 5), for channel i at one spatial position::

    w_i = (u_i - (nu_i + sum_j tau_ij u_j)) / sqrt(beta_i + sum_j gamma_ij u_j^2)

IGSDN (eq. 6)::

    u_i = w_i * sqrt(beta^_i + sum_j gamma^_ij w_j^2) + (nu^_i + sum_j tau^_ij w_j)

Without the subtractive term (nu = tau = 0) they are GDN and IGDN (Ballé et al.,
2016a). The sums over j are 1x1 convolutions, so parameters are shared across
space. beta and gamma are kept non-negative by :class:`NonNegativeParametrizer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bound import lower_bound


class NonNegativeParametrizer(nn.Module):
    """Reparametrization x = max(v, sqrt(minimum + pedestal))^2 - pedestal >= minimum.

    The stored value is v = sqrt(x + pedestal), pedestal = reparam_offset^2: the
    square gives non-negativity and the pedestal keeps the gradient non-zero near
    x = 0 (Ballé et al., 2018, as used for GDN).
    """

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2.0**-18) -> None:
        super().__init__()
        self.minimum = minimum
        self.pedestal = reparam_offset**2
        self.bound = (minimum + self.pedestal) ** 0.5

    def init(self, x: torch.Tensor) -> torch.Tensor:
        """Stored value v representing x."""
        return torch.sqrt(torch.clamp_min(x + self.pedestal, self.pedestal))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Value x represented by the stored v."""
        return lower_bound(v, self.bound) ** 2 - self.pedestal


def _channel_mix(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """bias_i + sum_j matrix_ij x_j at every position: a 1x1 convolution."""
    return F.conv2d(x, matrix[:, :, None, None], bias)


class _Normalization(nn.Module):
    """Parameters shared by GSDN and IGSDN: beta (N), gamma (N x N) and, if subtractive, nu (N), tau (N x N).

    ``beta`` and ``gamma`` hold reparametrized values; use :meth:`effective` for
    the actual beta >= beta_min and gamma >= 0. Initialization: beta = 1,
    gamma = gamma_init * identity, nu = 0, tau = 0.
    """

    def __init__(
        self, channels: int, subtractive: bool = True, beta_min: float = 1e-6, gamma_init: float = 0.1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.subtractive = subtractive
        self.beta_min = beta_min
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))
        if subtractive:
            self.nu = nn.Parameter(torch.zeros(channels))
            self.tau = nn.Parameter(torch.zeros(channels, channels))
        else:
            self.register_parameter("nu", None)
            self.register_parameter("tau", None)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The actual (beta, gamma)."""
        return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(beta_i + sum_j gamma_ij x_j^2)."""
        beta, gamma = self.effective()
        return _channel_mix(x * x, gamma, beta).sqrt_()  # in place on a fresh tensor: autograd allows it

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        """nu_i + sum_j tau_ij x_j (subtractive layers only)."""
        return _channel_mix(x, self.tau, self.nu)

    def _copy_divisive_from(self, other: _Normalization) -> None:
        """Copy beta and gamma from ``other`` (nu and tau are left as they are)."""
        with torch.no_grad():
            self.beta.copy_(other.beta)
            self.gamma.copy_(other.gamma)

    def extra_repr(self) -> str:
        return f"{self.channels}, subtractive={self.subtractive}"


class GSDN(_Normalization):
    """Generalized subtractive and divisive normalization, eq. 5; GDN when ``subtractive=False``.

    The denominator uses the input u, not the mean-subtracted u - (nu + tau u):
    (a) this is eq. 5 as written; (b) with it, eq. 6 (IGSDN) is exactly the first
    step of the fixed-point iteration u_{k+1} = w sqrt(beta + gamma u_k^2) + nu +
    tau u_k that inverts eq. 5, started at u_0 = w, which is the relation IGDN
    has to GDN (Ballé et al., 2016a). So eq. 5 and eq. 6 are consistent.

    2 (N + N^2) parameters, N + N^2 without the subtractive term.
    """

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        scale = self._scale(u)
        if not self.subtractive:
            return u / scale
        if torch.is_grad_enabled():
            return (u - self._shift(u)) / scale
        return self._shift(u).neg_().add_(u).div_(scale)  # the same, in place: coding at full resolution

    @classmethod
    def from_gdn(cls, gdn: GSDN) -> GSDN:
        """Subtractive GSDN computing the same function as a trained GDN (nu = tau = 0).

        The second stage of the paper's two-stage training (section 5.3).
        """
        if gdn.subtractive:
            raise ValueError("from_gdn expects a non-subtractive layer (GDN)")
        layer = cls(gdn.channels, subtractive=True, beta_min=gdn.beta_min)
        layer._copy_divisive_from(gdn)
        return layer.to(gdn.beta)


class IGSDN(_Normalization):
    """Inverse GSDN, eq. 6, with its own parameters; IGDN when ``subtractive=False``.

    ``iterations = K`` runs K steps of u_{k+1} = w sqrt(beta^ + gamma^ u_k^2) +
    nu^ + tau^ u_k from u_0 = w; K = 1 is exactly eq. 6. With a GSDN's
    parameters (see :meth:`inverse_of`) the fixed point is that GSDN's inverse.
    """

    def __init__(
        self,
        channels: int,
        subtractive: bool = True,
        iterations: int = 1,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
    ) -> None:
        super().__init__(channels, subtractive, beta_min, gamma_init)
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.iterations = iterations

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        u = w
        for _ in range(self.iterations):
            if torch.is_grad_enabled():
                step = w * self._scale(u)
                u = step + self._shift(u) if self.subtractive else step
            else:  # the same, in place: coding at full resolution
                step = self._scale(u).mul_(w)
                u = step.add_(self._shift(u)) if self.subtractive else step
        return u

    @classmethod
    def inverse_of(cls, gsdn: GSDN, iterations: int = 50) -> IGSDN:
        """Layer with copies of ``gsdn``'s parameters that inverts it numerically by fixed-point iteration.

        The iteration converges linearly, per channel at a rate of about
        gamma u^2 / (beta + gamma u^2), so large inputs need more iterations.
        """
        layer = cls(gsdn.channels, gsdn.subtractive, iterations, beta_min=gsdn.beta_min)
        layer.load_state_dict(gsdn.state_dict())
        return layer.to(gsdn.beta)

    @classmethod
    def from_igdn(cls, igdn: IGSDN) -> IGSDN:
        """Subtractive IGSDN computing the same function as a trained IGDN (nu^ = tau^ = 0), section 5.3."""
        if igdn.subtractive:
            raise ValueError("from_igdn expects a non-subtractive layer (IGDN)")
        layer = cls(igdn.channels, subtractive=True, iterations=igdn.iterations, beta_min=igdn.beta_min)
        layer._copy_divisive_from(igdn)
        return layer.to(igdn.beta)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}"


def GDN(channels: int, beta_min: float = 1e-6, gamma_init: float = 0.1) -> GSDN:  # noqa: N802
    """GDN (Ballé et al., 2016a): ``GSDN(channels, subtractive=False)``."""
    return GSDN(channels, subtractive=False, beta_min=beta_min, gamma_init=gamma_init)


def IGDN(channels: int, iterations: int = 1, beta_min: float = 1e-6, gamma_init: float = 0.1) -> IGSDN:  # noqa: N802
    """Inverse GDN (Ballé et al., 2016a): ``IGSDN(channels, subtractive=False)``."""
    return IGSDN(channels, subtractive=False, iterations=iterations, beta_min=beta_min, gamma_init=gamma_init)
