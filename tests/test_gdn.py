"""GSDN / IGSDN (paper eq. 5 and 6) and their GDN / IGDN special cases."""

from __future__ import annotations

import pytest
import torch

from refcodec.layers.gdn import GDN, GSDN, IGDN, IGSDN, NonNegativeParametrizer

N = 16


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def trained_like(layer: GSDN | IGSDN) -> GSDN | IGSDN:
    """Set parameters to values typical of a trained layer."""
    beta = torch.empty(N).uniform_(0.5, 2.0)
    gamma = 0.1 * torch.eye(N) + torch.empty(N, N).uniform_(0.0, 0.05) / N
    with torch.no_grad():
        layer.beta.copy_(layer.beta_reparam.init(beta))
        layer.gamma.copy_(layer.gamma_reparam.init(gamma))
        if layer.subtractive:
            layer.nu.normal_(0.0, 0.1)
            layer.tau.normal_(0.0, 0.02 / N)
    return layer


def eq5(u: torch.Tensor, beta, gamma, nu, tau) -> torch.Tensor:
    """Eq. 5 with explicit sums over channels."""
    mean = nu.view(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", tau, u)
    var = beta.view(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma, u**2)
    return (u - mean) / var.sqrt()


def eq6(w: torch.Tensor, beta, gamma, nu, tau) -> torch.Tensor:
    """Eq. 6 with explicit sums over channels."""
    var = beta.view(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma, w**2)
    return w * var.sqrt() + nu.view(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", tau, w)


def test_parametrizer_round_trip_and_bound() -> None:
    p = NonNegativeParametrizer(minimum=1e-6)
    x = torch.tensor([0.0, 1e-7, 0.5, 2.0])
    assert torch.allclose(p(p.init(x)), x.clamp_min(1e-6), atol=1e-9)
    v = torch.zeros(1, requires_grad=True)  # below the bound
    p(v).sum().neg().backward()  # loss decreases as x grows: gradient must reach v
    assert v.grad.item() != 0.0
    v.grad = None
    p(v).sum().backward()  # would push x further below the bound: blocked
    assert v.grad.item() == 0.0


def test_parameter_count() -> None:
    assert sum(p.numel() for p in GSDN(N).parameters()) == 2 * (N + N * N)
    assert sum(p.numel() for p in IGSDN(N).parameters()) == 2 * (N + N * N)
    assert sum(p.numel() for p in GDN(N).parameters()) == N + N * N
    assert sum(p.numel() for p in IGDN(N).parameters()) == N + N * N


def test_gdn_matches_formula() -> None:
    gdn = trained_like(GDN(N))
    u = torch.randn(2, N, 8, 8)
    beta, gamma = gdn.effective()
    expected = eq5(u, beta, gamma, torch.zeros(N), torch.zeros(N, N))
    assert torch.allclose(gdn(u), expected, atol=1e-6)


def test_gsdn_matches_formula() -> None:
    gsdn = trained_like(GSDN(N))
    u = torch.randn(2, N, 8, 8)
    beta, gamma = gsdn.effective()
    assert torch.allclose(gsdn(u), eq5(u, beta, gamma, gsdn.nu, gsdn.tau), atol=1e-6)


def test_gsdn_without_shift_equals_gdn() -> None:
    gdn = trained_like(GDN(N))
    gsdn = GSDN(N)
    with torch.no_grad():
        gsdn.beta.copy_(gdn.beta)
        gsdn.gamma.copy_(gdn.gamma)
    u = torch.randn(2, N, 8, 8)
    assert torch.allclose(gsdn(u), gdn(u), atol=1e-6)


def test_from_gdn_and_from_igdn_keep_outputs() -> None:
    u = torch.randn(2, N, 8, 8)
    gdn = trained_like(GDN(N))
    gsdn = GSDN.from_gdn(gdn)
    assert gsdn.subtractive and torch.count_nonzero(gsdn.nu) == 0 and torch.count_nonzero(gsdn.tau) == 0
    assert torch.allclose(gsdn(u), gdn(u), atol=1e-6)
    igdn = trained_like(IGDN(N))
    assert torch.allclose(IGSDN.from_igdn(igdn)(u), igdn(u), atol=1e-6)
    with pytest.raises(ValueError):
        GSDN.from_gdn(gsdn)


def test_igsdn_one_iteration_is_eq6() -> None:
    igsdn = trained_like(IGSDN(N, iterations=1))
    w = torch.randn(2, N, 8, 8)
    beta, gamma = igsdn.effective()
    assert torch.allclose(igsdn(w), eq6(w, beta, gamma, igsdn.nu, igsdn.tau), atol=1e-6)


@pytest.mark.parametrize("subtractive", [True, False])
def test_inverse_of_recovers_input(subtractive: bool) -> None:
    gsdn = trained_like(GSDN(N, subtractive=subtractive))
    inverse = IGSDN.inverse_of(gsdn, iterations=50)
    u = torch.randn(2, N, 8, 8)
    with torch.no_grad():
        error = (inverse(gsdn(u)) - u).abs().max().item()
    assert error < 1e-4


def test_inverse_of_copies_parameters() -> None:
    gsdn = trained_like(GSDN(N))
    inverse = IGSDN.inverse_of(gsdn)
    for name, p in gsdn.named_parameters():
        q = dict(inverse.named_parameters())[name]
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


@pytest.mark.parametrize(
    "layer", [GSDN(N), IGSDN(N, iterations=3), GDN(N), IGDN(N)], ids=["GSDN", "IGSDN-3", "GDN", "IGDN"]
)
def test_gradients_flow(layer: GSDN | IGSDN) -> None:
    x = torch.randn(2, N, 8, 8, requires_grad=True)
    layer(x).square().mean().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
