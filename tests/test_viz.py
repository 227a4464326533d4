"""refcodec viz: the bit map adds up to the coded latent stream, and the command draws it."""

import pytest
from conftest import natural_image, save_tiny
from PIL import Image

from refcodec import cli, codec
from refcodec.bitstream import unpack
from refcodec.eval.viz import bit_map
from refcodec.models import registry


def test_bit_map_adds_up_to_the_latent_stream(tiny_model):
    data = codec.compress(natural_image(96, 64, seed=4), tiny_model)
    image, bits = bit_map(data, tiny_model)
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
