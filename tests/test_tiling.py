"""Transforms in overlapping tiles: the same result as the whole image (up to float rounding), and a seamless codec."""

import numpy as np
import pytest
import torch

from refcodec import codec
from refcodec.models import base, registry
from refcodec.tiling import grid, halo_for, receptive_radius, run_tiled, spans

from conftest import natural_image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return registry.build("grm", "small").eval()


def test_receptive_radius_of_the_paper_transforms(model):
    assert receptive_radius(model.g_a) == 2 * (1 + 2 + 4 + 8)  # four 5x5 stride-2 convolutions: 30 px
    assert halo_for(model.g_a, 16) == 32
    assert 1 < receptive_radius(model.g_s) <= 4  # latents


@torch.no_grad()
def test_tiled_analysis_and_synthesis_match_the_whole_image(model):
    x = torch.rand(1, 3, 160, 224)
    whole = model.g_a(x)
    tiled = run_tiled(model.g_a, x, 64, halo_for(model.g_a, 16), 1 / 16, align=16)
    assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-5)
    cut = run_tiled(model.g_a, x, 64, 0, 1 / 16, align=16)  # without a halo the tiles show
    assert (cut - whole).abs().max() > 1e-2

    y = torch.round(whole * 4)
    whole_x = model.g_s(y)
    tiled_x = run_tiled(model.g_s, y, 4, halo_for(model.g_s, 1), 16)
    assert torch.allclose(tiled_x, whole_x, atol=1e-5)
    assert (run_tiled(model.g_s, y, 4, 0, 16) - whole_x).abs().max() > 1e-3


def test_tile_grid_is_balanced_and_splits_small_images():
    assert grid(32, 48, 64, 1) == (1, 2)  # a Kodak latent: two tiles, one per core
    assert grid(135, 240, 64, 1) == (3, 4)  # 4K
    assert grid(1, 1, 64, 1) == (1, 1)
    assert [s[:2] for s in spans(48, 2, 4, 1)] == [(0, 24), (24, 48)]
    assert spans(48, 2, 4, 1)[1][2:] == (20, 48)  # the halo reaches back, clipped at the border
    assert [s[:2] for s in spans(100, 3, 32, 16)] == [(0, 48), (48, 96), (96, 100)]


def test_an_exact_transform_is_split_only_to_share_the_threads():
    """exact=True: on one thread a one-tile input runs whole (no halo's work); on two, in two tiles as before."""
    assert grid(32, 48, 64, 1, share=False) == (1, 1) and grid(135, 240, 64, 1, share=False) == (3, 4)
    calls = []

    def fn(x):
        calls.append(tuple(x.shape[2:]))
        return x.repeat_interleave(2, 2).repeat_interleave(2, 3)

    y = torch.rand(1, 2, 32, 48)
    threads = torch.get_num_threads()
    try:
        for n, tiles in ((1, [(32, 48)]), (2, [(32, 28), (32, 28)])):
            torch.set_num_threads(n)
            calls.clear()
            assert torch.equal(run_tiled(fn, y, 64, 4, 2, exact=True), fn(y))
            assert calls[:-1] == tiles  # the last call is the reference above
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def test_transforms_give_the_same_bits_for_any_thread_count(model):
    """One thread per tile, a grid fixed by the image size: 1, 2 or 3 threads agree bit for bit."""
    x = torch.rand(1, 3, 192, 320)
    y = torch.round(model.g_a(x) * 4)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((model.analysis(x), model.synthesize(y)))
            assert torch.get_num_threads() == n  # restored after the workers finish
    finally:
        torch.set_num_threads(threads)
    for analysis, synthesis in results[1:]:
        assert torch.equal(analysis, results[0][0]) and torch.equal(synthesis, results[0][1])


def test_codec_in_tiles_is_seamless(tiny_model, monkeypatch):
    image = natural_image(256, 192, seed=3)
    data = codec.compress(image, tiny_model)
    whole = codec.decompress(data, tiny_model)
    monkeypatch.setattr(base, "ANALYSIS_TILE", 64)
    monkeypatch.setattr(base, "SYNTHESIS_TILE", 4)
    tiled = codec.decompress(data, tiny_model)  # the same bitstream, synthesized in 4 x 4-latent tiles
    diff = np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int))
    assert diff.max() <= 1 and diff.mean() < 1e-3
    data_tiled = codec.compress(image, tiny_model)  # analysis in 64-px tiles: the same latents, up to rare rounding ties
    assert abs(len(data_tiled) - len(data)) <= 0.01 * len(data) + 8
    assert abs(codec.psnr(image, codec.decompress(data_tiled, tiny_model)) - codec.psnr(image, whole)) < 0.05
