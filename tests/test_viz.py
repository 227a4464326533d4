"""refcodec viz: the bit map adds up to the coded latent stream, and the command draws it."""

import numpy as np
import pytest
from conftest import natural_image, save_tiny
from PIL import Image

from refcodec import cli, codec
from refcodec.bitstream import unpack
from refcodec.eval.viz import analyse, latent_histograms, relevance_pairs
from refcodec.models import registry


def test_bit_map_adds_up_to_the_latent_stream(tiny_model):
    data = codec.compress(natural_image(96, 64, seed=4), tiny_model)
    found = analyse(data, tiny_model)
    image, bits = found["image"], found["bits"]
    assert image.shape == (64, 96, 3) and bits.shape == (4, 8)  # the padded latent and (bits >= 0).all()
    stream = unpack(data)[1][-1]
    assert bits.sum() / 8 == pytest.approx(len(stream), abs=8)  # the range coder's overhead: a few bytes


def test_viz_bits_command(tiny_model, tiny_weights, tmp_path, capsys):
    (tmp_path / "a.rfc").write_bytes(codec.compress(natural_image(96, 64, seed=4), tiny_model))
    assert cli.main(["viz", "bits", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "bits.png"), "--model", str(tiny_weights)]) == 0
    assert Image.open(tmp_path / "bits.png").size[0] > 300


def test_bit_map_needs_a_context_model(tmp_path, capsys):
    model = registry.load_model(str(save_tiny(tmp_path / "h.safetensors", name="hyperprior")))
    (tmp_path / "h.rfc").write_bytes(codec.compress(natural_image(32, 32), model))
    rc = cli.main(["viz", "bits", str(tmp_path / "h.rfc"), "-o", str(tmp_path / "h.png"), "--model", str(tmp_path / "h.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().startswith("refcodec: error:") and "context model" in err
    assert not (tmp_path / "h.png").exists()


def test_viz_reference_draws_pairs_and_maps_for_grm_only(tiny_model, tiny_weights, tmp_path, capsys):
    (tmp_path / "a.rfc").write_bytes(codec.compress(natural_image(96, 64, seed=4), tiny_model))
    assert cli.main(["viz", "reference", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "r.png"), "--model", str(tiny_weights)]) == 0
    assert Image.open(tmp_path / "r.png").size[0] > 500
    joint = save_tiny(tmp_path / "j.safetensors", name="joint")
    (tmp_path / "j.rfc").write_bytes(codec.compress(natural_image(32, 32), registry.load_model(str(joint))))
    rc = cli.main(["viz", "reference", str(tmp_path / "j.rfc"), "-o", str(tmp_path / "j.png"), "--model", str(joint)])
    assert rc == 1 and "no global reference" in capsys.readouterr().err


def test_relevance_pairs_are_far_apart_and_best_first():
    S = np.zeros((6, 8))
    U = np.ones((6, 8))
    index = np.zeros((6, 8), dtype=np.int64)
    S[5, 7], index[5, 7] = 0.9, 0  # far from its reference (0, 0)
    S[0, 1], index[0, 1] = 1.0, 0  # its reference is a neighbour: skipped
    S[5, 6], index[5, 6] = 0.8, 2  # too close to the first target: skipped
    S[2, 7], index[2, 7] = 0.5, 8  # (1, 0): far enough
    assert relevance_pairs(index, S, U) == [((5, 7), (0, 0)), ((2, 7), (1, 0))]


def test_stage_bits_end_in_the_bit_map_and_stages_refine_the_mean(tiny_model):
    found = analyse(codec.compress(natural_image(96, 64, seed=4), tiny_model), tiny_model)
    bits, mu, y = found["stage_bits"], found["stage_mu"], found["y"]
    assert bits.shape == mu.shape == (3, 24, 4, 8) and y.shape == (24, 4, 8)
    assert np.allclose(bits[-1].sum(0), found["bits"])  # the last stage is the one the coder used
    assert (bits >= 0).all() and np.isfinite(mu).all()


def test_viz_progressive_command(tiny_model, tiny_weights, tmp_path, capsys):
    (tmp_path / "a.rfc").write_bytes(codec.compress(natural_image(96, 64, seed=4), tiny_model))
    assert cli.main(["viz", "progressive", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "p.png"), "--model", str(tiny_weights)]) == 0
    assert Image.open(tmp_path / "p.png").size[0] > 500


def test_latent_histograms_pick_the_highest_entropy_channels(tiny_model, tmp_path):
    for i in range(2):
        natural_image(64, 64, seed=i).save(tmp_path / f"{i}.png")
    found = latent_histograms(tiny_model, sorted(tmp_path.glob("*.png")), channels=3)
    assert len(found["values"]) == 3 and all(v.shape == (2 * 4 * 4,) for v in found["values"].values())
    assert found["off_centre"] >= 0


def test_viz_histograms_command(tiny_weights, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    natural_image(64, 64).save(tmp_path / "imgs" / "a.png")
    gdn = save_tiny(tmp_path / "j.safetensors", name="joint")
    argv = ["viz", "histograms", str(tmp_path / "imgs"), "-o", str(tmp_path / "h.png"), "--models", str(gdn), str(tiny_weights)]
    assert cli.main(argv) == 0
    assert Image.open(tmp_path / "h.png").size[0] > 500
    rc = cli.main(["viz", "histograms", str(tmp_path / "none"), "-o", str(tmp_path / "x.png")])
    assert rc == 1 and capsys.readouterr().err.startswith("refcodec: error:")
