"""Exact fixed-point inference: full convolution == per-position evaluation, any thread count."""

import pytest
import torch
from torch import nn

from refcodec import fixedpoint
from refcodec.fixedpoint import ExactNet, exact_params, exact_rows, snap
from refcodec.layers.masked_conv import MaskedConv2d, causal_mask
from refcodec.layers.reference import patches_at


def test_snap_is_on_the_grid():
    x = torch.randn(100)
    s = snap(x, 12)
    assert torch.equal(s * 4096, torch.round(s * 4096))
    assert (s - x.double()).abs().max() <= 2**-13


def test_full_convolution_equals_per_position_products():
    torch.manual_seed(0)
    conv = MaskedConv2d(6, 10, 5, mask=causal_mask(5, "A"))
    y = torch.randint(-20, 21, (1, 6, 9, 12)).double()
    full = ExactNet(conv)(y)[0]
    pad = torch.nn.functional.pad(y[0], (2, 2, 2, 2))
    rows, cols = torch.meshgrid(torch.arange(9), torch.arange(12), indexing="ij")
    patches = patches_at(pad, rows.flatten(), cols.flatten(), conv.mask.bool())
    at = torch.cat([exact_rows(conv)(p) for p in patches.split(5)])  # a few rows at a time, as the decoder
    assert torch.equal(full.flatten(1).T, at)


def test_thread_count_does_not_change_results():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(64, 96, 1), nn.LeakyReLU(), nn.Conv2d(96, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 1))
    x = torch.randn(1, 64, 20, 20) * 10
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ExactNet(net)(x)
        torch.set_num_threads(2)
        b = ExactNet(net)(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert (a - net(x).double()).abs().max() < 1e-2  # close to the float network


def test_layers_that_could_round_are_refused():
    conv = nn.Conv2d(4, 4, 1)
    with torch.no_grad():
        conv.weight.fill_(1e6)
    with pytest.raises(ValueError):
        exact_params(conv)


def test_unsupported_layers_are_refused():
    with pytest.raises(TypeError):
        ExactNet(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sigmoid()))


def test_exact_params_are_kept_until_the_weights_change():
    layer = nn.Conv2d(3, 4, 1)
    w1, b1 = exact_params(layer)
    assert exact_params(layer)[0] is w1  # snapped once
    with torch.no_grad():
        layer.weight.mul_(2)  # in place
    w2, _ = exact_params(layer)
    assert torch.equal(w2, snap(layer.weight.detach(), 16))
    layer.bias = nn.Parameter(torch.ones(4))  # replaced
    assert torch.equal(exact_params(layer)[1], torch.ones(4, dtype=torch.float64))


def test_few_row_products_pad_without_changing_a_bit(monkeypatch):
    torch.manual_seed(2)
    layer = nn.Conv2d(300, 70, 1)
    monkeypatch.setattr(fixedpoint, "PAD_FROM", 0)  # pad this small layer too
    linear = exact_rows(layer)
    assert linear.align == fixedpoint.ROW_ALIGN
    x = snap(torch.randn(23, 300) * 50)
    whole = linear(x)
    assert whole.shape == (23, 70)
    for rows in range(1, 10):  # row counts that are padded to a multiple of four, and those that are not
        assert torch.equal(linear(x[:rows]), whole[:rows])
    assert torch.equal(whole, ExactNet(layer)(x.T.reshape(1, 300, 23, 1))[0, :, :, 0].T)
