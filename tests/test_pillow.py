"""The Pillow plugin: Image.open and Image.save of .rfc files (refcodec.pillow)."""

import io

import numpy as np
import pytest
from conftest import natural_image, save_tiny
from PIL import Image, UnidentifiedImageError

import refcodec
from refcodec import codec
from refcodec import pillow as plugin


@pytest.fixture(scope="module")
def variable_weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("weights") / "grm-test-vr.safetensors", scale=20, levels=9)


@pytest.fixture(scope="module")
def registered(tiny_weights, variable_weights):
    refcodec.register_pillow(models=[tiny_weights, variable_weights])
    yield
    plugin._models.clear()


@pytest.fixture(scope="module")
def image():
    return natural_image(72, 56, seed=5)


@pytest.fixture(scope="module")
def saved(registered, tiny_weights, image, tmp_path_factory):
    path = tmp_path_factory.mktemp("rfc") / "a.rfc"
    image.save(path, model=str(tiny_weights))
    return path


def test_extension_mime_and_format_are_registered():
    assert Image.registered_extensions()[".rfc"] == "REFCODEC"
    assert Image.MIME["REFCODEC"] == "image/x-refcodec"
    assert "REFCODEC" in Image.SAVE and "REFCODEC" in Image.OPEN


def test_round_trip_through_pillow_equals_decompress(saved, tiny_weights, tiny_model, image):
    data = saved.read_bytes()
    assert data == refcodec.compress(image, model=str(tiny_weights))  # Image.save wrote what compress writes
    with Image.open(saved) as im:
        assert im.format == "REFCODEC" and im.get_format_mimetype() == "image/x-refcodec"
        assert np.array_equal(np.asarray(im), np.asarray(codec.decompress(data, tiny_model)))


def test_open_and_save_with_file_objects(registered, saved, variable_weights, image):
    with Image.open(io.BytesIO(saved.read_bytes())) as im:
        assert im.size == image.size and np.asarray(im).shape == (56, 72, 3)
    buf = io.BytesIO()
    image.save(buf, format="REFCODEC", model=str(variable_weights), rfc_quality=2.5)
    assert buf.getvalue() == refcodec.compress(image, model=str(variable_weights), quality=2.5)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.info["refcodec"]["quality"] == 2.5
        im.load()


def test_quality_follows_pillows_0_to_100(registered, variable_weights, image, tmp_path):
    """Issue 38: quality=90, as for JPEG, WebP or AVIF, failed (refcodec's 0-8). 0-100 maps onto 0-8."""
    for pillow, own in ((0, 0), (75, 6), (90, 7.2), (100, 8)):
        buf = io.BytesIO()
        image.save(buf, format="REFCODEC", model=str(variable_weights), quality=pillow)
        assert buf.getvalue() == refcodec.compress(image, model=str(variable_weights), quality=own)
    for bad in (101, -1, "high"):
        with pytest.raises(OSError, match="^refcodec: quality is Pillow's 0-100"):
            image.save(tmp_path / "a.rfc", model=str(variable_weights), quality=bad)
    with pytest.raises(OSError, match="not both"):
        image.save(tmp_path / "a.rfc", model=str(variable_weights), quality=50, rfc_quality=4)
    assert not (tmp_path / "a.rfc").exists()


def test_rate_control_keywords_are_those_of_compress(registered, variable_weights, image):
    low = len(refcodec.compress(image, model=str(variable_weights), quality=1))
    high = len(refcodec.compress(image, model=str(variable_weights), quality=7))
    target = 8 * (low + high) / 2 / (image.width * image.height)
    buf = io.BytesIO()
    image.save(buf, format="REFCODEC", model=str(variable_weights), target_bpp=target)
    assert buf.getvalue() == refcodec.compress(image, model=str(variable_weights), target_bpp=target)
    assert 8 * len(buf.getvalue()) / (image.width * image.height) <= target


def test_size_and_mode_are_known_before_decoding(saved, monkeypatch):
    calls = []
    real = codec.decompress
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: calls.append(1) or real(*a, **k))
    im = Image.open(saved)
    assert (im.size, im.mode, calls) == ((72, 56), "RGB", [])
    assert im.info["refcodec"]["model"] == "grm/test/q3"
    im.load()
    assert calls == [1]
    im.load()  # decoded once
    assert calls == [1]


def test_grayscale_comes_back_grayscale(registered, tiny_weights, image, tmp_path):
    image.convert("L").save(tmp_path / "g.rfc", model=str(tiny_weights))
    with Image.open(tmp_path / "g.rfc") as im:
        assert im.mode == "L" and np.asarray(im).shape == (56, 72)


def test_damaged_files_raise_pillows_errors_with_refcodecs_reason(saved, tmp_path):
    data = saved.read_bytes()
    flipped = bytearray(data)
    flipped[-10] ^= 1
    for bad, reason in [(bytes(flipped), "checksum mismatch"), (data[:-7], "truncated file"), (data[:6], "truncated file")]:
        with pytest.raises(UnidentifiedImageError, match=f"^refcodec: {reason}"):
            Image.open(io.BytesIO(bad))
    plugin._models.clear()  # the file's weights are no longer known: the container is fine, decoding is not
    with Image.open(saved) as im:
        assert im.size == (72, 56)
        with pytest.raises(OSError, match="^refcodec: file needs model 'grm/test/q3'"):
            im.load()


def test_other_files_are_left_to_the_other_plugins(registered, image, tmp_path):
    image.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG"
    (tmp_path / "x.rfc").write_bytes(b"RFC? not an image at all")
    with pytest.raises(UnidentifiedImageError, match="cannot identify"):
        Image.open(tmp_path / "x.rfc")


def test_a_failed_save_raises_in_one_line_and_leaves_no_file(registered, tiny_weights, image, tmp_path):
    rgba = image.convert("RGBA")
    rgba.putalpha(128)  # really transparent (an opaque alpha is dropped with a note)
    with pytest.raises(OSError, match="^refcodec: images with transparency"):
        rgba.save(tmp_path / "a.rfc", model=str(tiny_weights))
    assert not (tmp_path / "a.rfc").exists()
