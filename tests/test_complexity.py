"""scripts/complexity.py: module counts on meta tensors agree with the layer arithmetic."""

import pytest
import torch
from conftest import load_script


def test_counts_match_the_layer_arithmetic():
    m = load_script("complexity").modules("grm", 1024, 512)  # latents 32 x 64
    positions, M = 32 * 64, 384
    assert m["context model"]["gmacs"] == pytest.approx(positions * 5 * 5 * M * 2 * M / 1e9, abs=0.01)
    # wavefront (step 3r + c): every query against the keys of smaller steps, patches of 4 taps
    steps = (3 * torch.arange(32).view(-1, 1) + torch.arange(64)).flatten()
    pairs = int((steps.view(1, -1) < steps.view(-1, 1)).sum())
    assert m["reference search alone"]["gmacs"] == pytest.approx(pairs * 4 * M / 1e9, abs=0.01)
    assert m["reference search, all N^2 pairs"]["gmacs"] == pytest.approx(positions**2 * 4 * M / 1e9, abs=0.01)
    assert m["parameter networks"]["parameters"] > 0 and m["encoder"]["gmacs"] > 0
