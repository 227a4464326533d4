"""Image files in and out of refcodec: finding images in folders, reading them, converting modes.

One place for what the codec, training, evaluation and the Pillow plugin all do with image
files. Reading applies the EXIF orientation and refuses more than ``max_pixels`` from the
header, before any pixel is decoded. The codec codes RGB: grayscale and 16-bit images are coded
as RGB and given back as grayscale, palette, CMYK and the other colour modes are converted, and
images with transparency are refused (the alpha channel would be lost).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RefcodecError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}  # what a folder search finds
MAX_PIXELS = 8192 * 8192  # default limit on width x height, checked before any pixel is decoded or allocated
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_CONVERTIBLE = {"P", "CMYK", "YCbCr", "LAB", "HSV", "1"}  # coded as RGB


class ImageInputError(RefcodecError):
    """The input is not an image refcodec can code."""


def find_images(roots: str | Path | list) -> list[Path]:
    """Image files under one or more folders (recursively), sorted: a fixed order keeps runs reproducible."""
    files = []
    for root in [roots] if isinstance(roots, (str, Path)) else roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not found:
            raise FileNotFoundError(f"{root}: no images ({', '.join(sorted(EXTENSIONS))})")
        files += found
    return files


def load_image(source: str | Path | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (and EXIF-orient) an image file, or pass a PIL image through; refuse more than ``max_pixels``."""
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels)
        return source
    path = Path(source)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if not path.is_file():
        raise ImageInputError(f"{path}: not a file")
    pillow_limit = Image.MAX_IMAGE_PIXELS  # Pillow's own bomb check, lifted to ours while we open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None if pillow_limit is None else max(pillow_limit, max_pixels)
            with Image.open(path) as im:
                _check_size(im.width, im.height, max_pixels, f"{path}: ")  # from the header, before decoding
                im.load()
                return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:  # Pillow refuses from twice its limit, before we see the size
        raise ImageInputError(f"{path}: image exceeds the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        detail = str(e).replace(f"'{path}'", "").replace(str(path), "").strip(" :")  # the path is said once, first
        raise ImageInputError(f"{path}: not a readable image ({detail})" if detail else f"{path}: not a readable image") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _check_size(width: int, height: int, max_pixels: int, where: str = "") -> None:
    if width * height > max_pixels:
        raise ImageInputError(f"{where}image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")


class InputWarning(UserWarning):
    """Something of an input that is not coded but carries nothing (an alpha channel that is opaque everywhere)."""


def to_rgb(image: Image.Image, drop_alpha: bool = False) -> tuple[Image.Image, str]:
    """The RGB image to code and the mode to give back ("RGB" or "L"), with the input's ICC profile
    (``info["icc_profile"]``), which the file keeps.

    An alpha channel that is opaque everywhere (most screenshots and exports) is dropped with an
    InputWarning; a real one is refused, or with ``drop_alpha`` (training data) dropped. The bit depth
    comes from the mode: 16-bit gray ("I;16", and "I", which Pillow gives 16-bit PNGs) spans 0-65535,
    whatever its values.
    """
    rgb, mode = _rgb(image, drop_alpha)
    profile = image.info.get("icc_profile")
    if profile and rgb.info.get("icc_profile") != profile:
        rgb = rgb.copy() if rgb is image else rgb
        rgb.info["icc_profile"] = profile
    return rgb, mode


def _rgb(image: Image.Image, drop_alpha: bool) -> tuple[Image.Image, str]:
    """:func:`to_rgb`'s pixels and mode."""
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] == 255:
            warnings.warn(f"the alpha channel ({image.mode}) is opaque everywhere: dropped", InputWarning, stacklevel=2)
        elif not drop_alpha:
            raise ImageInputError(f"images with transparency ({image.mode}) are not supported: flatten them onto a background "
                                  "first (Pillow: Image.alpha_composite(Image.new('RGBA', im.size, 'white'), im.convert('RGBA')))")  # fmt: skip
        return rgba.convert("RGB"), "L" if image.mode in ("LA", "La") else "RGB"
    if image.mode == "RGB":
        return image, "RGB"
    if image.mode == "L":
        return image.convert("RGB"), "L"
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 255.0 if image.mode == "F" else 65535.0
        gray = Image.fromarray(np.clip(np.round(arr / top * 255), 0, 255).astype(np.uint8))
        return gray.convert("RGB"), "L"
    if image.mode in _CONVERTIBLE:
        return image.convert("RGB"), "RGB"
    raise ImageInputError(f"unsupported image mode {image.mode}")


def read_rgb(source: str | Path | Image.Image, max_pixels: int = MAX_PIXELS, drop_alpha: bool = False) -> Image.Image:
    """The RGB image that refcodec codes for a file or PIL image (``load_image``, then ``to_rgb``)."""
    return to_rgb(load_image(source, max_pixels), drop_alpha)[0]
