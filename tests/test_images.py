"""Image files: finding them in folders, reading them, converting modes (refcodec.images)."""

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image

from refcodec import images
from refcodec.errors import RefcodecError
from refcodec.train.data import ImageFolder


def test_find_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/z.PNG", "a.jpg", "b/c.webp"):
        natural_image(16, 16).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.relative_to(tmp_path).as_posix() for p in images.find_images(tmp_path)] == ["a.jpg", "b/c.webp", "b/z.PNG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        images.find_images([tmp_path, tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        images.find_images(tmp_path / "a.jpg")


def test_our_pixel_limit_replaces_pillows(tmp_path, monkeypatch):
    natural_image(40, 30).save(tmp_path / "a.png")  # 1,200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse beyond 200
    assert images.load_image(tmp_path / "a.png", max_pixels=2000).size == (40, 30)
    with pytest.raises(RefcodecError, match="limit of 500 pixels"):  # Pillow's error, in our words
        images.load_image(tmp_path / "a.png", max_pixels=500)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored



def test_alpha_is_refused_for_coding_and_dropped_for_training(tmp_path):
    rgba = Image.fromarray(np.dstack([np.asarray(natural_image(64, 64)), np.full((64, 64), 7, np.uint8)]), "RGBA")
    rgba.save(tmp_path / "a.png")
    with pytest.raises(RefcodecError, match="transparency"):
        images.read_rgb(tmp_path / "a.png")
    rgb = images.read_rgb(tmp_path / "a.png", drop_alpha=True)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.asarray(rgba)[..., :3])
    assert np.array_equal(ImageFolder(tmp_path, crop=64)[0].permute(1, 2, 0).mul(255).round().byte().numpy(), np.asarray(rgb))


def test_an_opaque_alpha_channel_is_dropped_with_a_note_and_a_real_one_refused_with_a_hint(tmp_path):
    """Issue 38: fully opaque RGBA (most screenshots and exports) was refused."""
    pixels = np.asarray(natural_image(32, 24))
    for mode, alpha in (("RGBA", pixels), ("LA", pixels[..., :1])):
        opaque = Image.fromarray(np.dstack([alpha, np.full((24, 32), 255, np.uint8)]).squeeze(), mode)
        with pytest.warns(images.InputWarning, match="opaque everywhere: dropped"):
            rgb, kept = images.to_rgb(opaque)
        assert kept == ("L" if mode == "LA" else "RGB") and np.array_equal(np.asarray(rgb)[..., : alpha.shape[2]], alpha)
    holed = np.dstack([pixels, np.full((24, 32), 255, np.uint8)])
    holed[3, 4, 3] = 254  # one pixel not quite opaque
    with pytest.raises(RefcodecError, match=r"transparency \(RGBA\) are not supported: flatten them onto a background first"):
        images.to_rgb(Image.fromarray(holed, "RGBA"))


def test_the_bit_depth_comes_from_the_mode_not_the_values(tmp_path):
    """Issue 38: a 16-bit PNG whose values stay at or below 255 (near black) was read as 8-bit."""
    dark = np.full((8, 8), 166, np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as im:
        rgb, mode = images.to_rgb(im)
    assert mode == "L" and np.asarray(rgb).max() == round(166 / 65535 * 255) == 1


def test_sixteen_bit_images_are_scaled_to_eight_bits_gray():
    ramp = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 16-bit gray, 0..65535
    rgb, mode = images.to_rgb(ramp)
    assert mode == "L" and rgb.mode == "RGB"
    assert np.array_equal(np.asarray(rgb)[..., 0].ravel(), np.arange(256))
