"""Decode schedules: step counts, coverage, and the masks they induce."""

import pytest
import torch

from refcodec.layers.masked_conv import causal_mask
from refcodec.schedule import Schedule


def test_wavefront_steps_on_a_kodak_latent():
    assert Schedule("wavefront").num_steps(32, 48) == 141
    assert Schedule("raster").num_steps(32, 48) == 1536


@pytest.mark.parametrize("name", ["raster", "wavefront"])
def test_order_covers_every_position_once_in_step_order(name):
    s = Schedule(name)
    order = s.order(7, 11)
    flat = torch.cat(order)
    assert sorted(flat.tolist()) == list(range(77))
    steps = s.steps(7, 11).flatten()
    assert all(len(set(steps[p].tolist())) == 1 for p in order)
    assert [int(steps[p[0]]) for p in order] == sorted(int(steps[p[0]]) for p in order)
    assert torch.equal(s.coding_permutation(7, 11), flat)


@pytest.mark.parametrize("name", ["raster", "wavefront"])
@pytest.mark.parametrize("k", [3, 5])
def test_visible_masks_are_the_classic_causal_masks(name, k):
    s = Schedule(name)
    assert torch.equal(s.visible(k, False), causal_mask(k, "A"))
    assert torch.equal(s.visible(k, True), causal_mask(k, "B"))


def test_wavefront_context_is_decoded_first():
    """Every neighbour in the 5x5 type-A mask has a strictly smaller wavefront step."""
    s = Schedule("wavefront")
    steps = s.steps(9, 9)
    mask = s.visible(5, False).bool()
    for dr in range(5):
        for dc in range(5):
            if mask[dr, dc]:
                assert steps[4 + dr - 2, 4 + dc - 2] < steps[4, 4]


def test_wavefront_hides_positions_a_7x7_kernel_would_need_too_early():
    mask = Schedule("wavefront").visible(7, False)
    assert mask[2, 6] == 0  # (-1, +3): same step as the centre, not yet decoded


def test_unknown_schedule():
    with pytest.raises(ValueError):
        Schedule("zigzag")
