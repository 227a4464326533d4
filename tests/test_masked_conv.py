"""Masked convolution (van den Oord et al., 2016) and raster causal masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refcodec.layers.masked_conv import MaskedConv2d, causal_mask

EXPECTED = {
    (3, "A"): [[1, 1, 1], [1, 0, 0], [0, 0, 0]],
    (3, "B"): [[1, 1, 1], [1, 1, 0], [0, 0, 0]],
    (5, "A"): [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ],
    (5, "B"): [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ],
}


@pytest.mark.parametrize(("kernel_size", "mask_type"), list(EXPECTED))
def test_causal_mask_patterns(kernel_size: int, mask_type: str) -> None:
    expected = torch.tensor(EXPECTED[kernel_size, mask_type], dtype=torch.float32)
    assert torch.equal(causal_mask(kernel_size, mask_type), expected)


def test_causal_mask_rejects_unknown_type() -> None:
    with pytest.raises(ValueError):
        causal_mask(3, "C")


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_output_depends_only_on_visible_positions(kernel_size: int, mask_type: str) -> None:
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, kernel_size, mask=causal_mask(kernel_size, mask_type))
    h = w = 7
    x = torch.randn(1, 2, h, w)
    r, c = 3, 3
    target = r * w + c
    for pos in range(h * w):
        visible = pos < target or (pos == target and mask_type == "B")
        if visible:
            continue
        y = x.clone()
        y[0, :, pos // w, pos % w] += 10.0
        assert torch.equal(conv(y)[0, :, r, c], conv(x)[0, :, r, c]), pos


def test_matches_plain_conv_with_masked_weights() -> None:
    torch.manual_seed(0)
    mask = causal_mask(5, "A")
    conv = MaskedConv2d(4, 6, 5, mask=mask)
    x = torch.randn(2, 4, 9, 11)
    expected = F.conv2d(x, conv.weight.detach() * mask, conv.bias.detach(), padding=2)
    out = conv(x)
    assert out.shape == x.shape[:1] + (6,) + x.shape[2:]
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(conv.masked_weight, conv.weight * mask)


def test_mask_is_a_buffer_and_masked_taps_get_no_gradient() -> None:
    mask = causal_mask(3, "B").bool()  # any 0/1 or boolean mask is accepted
    conv = MaskedConv2d(1, 1, 3, mask=mask)
    assert "mask" in dict(conv.named_buffers()) and "mask" in conv.state_dict()
    conv(torch.randn(1, 1, 5, 5)).sum().backward()
    assert torch.count_nonzero(conv.weight.grad[0, 0][~mask]) == 0


def test_rejects_bad_mask_shape() -> None:
    with pytest.raises(ValueError):
        MaskedConv2d(1, 1, 3, mask=torch.ones(5, 5))
