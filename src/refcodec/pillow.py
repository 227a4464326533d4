"""A Pillow plugin: ``Image.open`` reads .rfc files and ``Image.save`` writes them.

Importing this module registers the format ``REFCODEC`` (extension ``.rfc``, MIME type
``image/x-refcodec``) with Pillow, as ``pillow_heif.register_heif_opener()`` does for HEIF::

    import refcodec.pillow                                # or refcodec.register_pillow()
    im = Image.open("photo.rfc")                          # size and mode from the header
    im.load()                                             # decodes (refcodec.decompress)
    im.save("photo.rfc", quality=75)                      # Pillow's 0-100; or rfc_quality=6 (the model's 0-8),
                                                          # target_bpp=, target_psnr=, target_ms_ssim=, effort=, model=, strict=
    refcodec.register_pillow(models=["run/weights.safetensors"])  # also decode files of your own weights

``quality`` follows Pillow's convention (JPEG, WebP, AVIF and pillow-heif all take 0-100): it maps linearly
onto the model's quality range, 0 to 0 and 100 to the top (8), so ``quality=75`` codes at refcodec quality 6;
``rfc_quality`` takes the model's own scale (any number in 0-8 for a variable-rate model, exactly as
``refcodec.compress``'s ``quality``).

``Image.open`` recognizes a file by its magic number and checks the whole container (header
and checksum) from the bytes alone, without torch; the pixels are decoded on ``load()``. A
damaged file raises ``UnidentifiedImageError`` on open, and a file that cannot be decoded
(another model's weights, a corrupt stream) ``OSError`` on load, with refcodec's one-line reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from PIL import Image, ImageFile, UnidentifiedImageError

from .bitstream import MAGIC, read_header
from .errors import RefcodecError
from .models.presets import LAMBDAS

FORMAT = "REFCODEC"
EXTENSION = ".rfc"
MIME = "image/x-refcodec"
SAVE_OPTIONS = ("model", "target_bpp", "target_psnr", "target_ms_ssim", "effort", "strict")  # keywords of refcodec.compress as they are
PILLOW_QUALITY = 100  # Pillow's top quality, mapped onto the model's top (QUALITY_TOP)
QUALITY_TOP = max(LAMBDAS)  # the top quality of the shipped models
_models: list = []  # weights files (loaded on first use) or models that decode files of weights not shipped


def _accept(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


class RefcodecImageFile(ImageFile.ImageFile):
    """An .rfc file: size, mode and ``info["refcodec"]`` (the header) at open, pixels on ``load()``."""

    format = FORMAT
    format_description = "refcodec learned image codec"

    def _open(self) -> None:
        data = self.fp.read()
        try:
            header = read_header(data)
        except RefcodecError as e:
            raise UnidentifiedImageError(f"refcodec: {e}") from None
        self._mode = header.mode
        self._size = (header.width, header.height)
        self.info["refcodec"] = header.to_dict()
        if header.icc_profile:
            self.info["icc_profile"] = header.icc_profile
        self.tile = [ImageFile._Tile(FORMAT, (0, 0) + self.size, 0, (data,))]


class RefcodecDecoder(ImageFile.PyDecoder):
    """Decodes a whole file at once (``refcodec.decompress``); the file's bytes come as the tile's argument."""

    _pulls_fd = True  # called once, and reads nothing more: the bytes were read at open

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        from .codec import decompress

        try:
            image = decompress(self.args[0], _model_for(read_header(self.args[0])))
        except RefcodecError as e:
            raise OSError(f"refcodec: {e}") from None
        self.set_as_raw(image.tobytes())
        return -1, 0


def _model_for(header):
    """The registered model that wrote a file (same model id and weights hash), or None: a shipped one."""
    from .models.registry import load_model

    for i, model in enumerate(_models):
        if isinstance(model, (str, Path)):
            model = _models[i] = load_model(str(model))
        if model.id == header.model and model.weights_hash() == header.weights_hash:
            return model
    return None


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Encode with ``refcodec.compress``, taking its keyword arguments from ``im.save(...)``."""
    from .api import compress

    options = {k: im.encoderinfo[k] for k in SAVE_OPTIONS if im.encoderinfo.get(k) is not None}
    given = {k: im.encoderinfo[k] for k in ("quality", "rfc_quality") if im.encoderinfo.get(k) is not None}
    if len(given) == 2:
        raise OSError("refcodec: give quality (Pillow's 0-100) or rfc_quality (the model's 0-8), not both")
    if "quality" in given:
        q = given["quality"]
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= PILLOW_QUALITY:
            raise OSError(f"refcodec: quality is Pillow's 0-{PILLOW_QUALITY}, got {q!r} (rfc_quality takes the model's 0-{QUALITY_TOP})")
        options["quality"] = q / PILLOW_QUALITY * QUALITY_TOP
    elif "rfc_quality" in given:
        options["quality"] = given["rfc_quality"]
    try:
        data = compress(im, **options)
    except RefcodecError as e:
        raise OSError(f"refcodec: {e}") from None
    fp.write(data)


def register(models: list = ()) -> None:
    """Register the format with Pillow (done on import; calling it again changes nothing).

    ``models``: weights files (``.safetensors``) or loaded models, to decode files written with
    weights that refcodec does not ship; each file is decoded by the one whose id and weights hash it names.
    """
    _models.extend(m for m in models if m not in _models)
    Image.register_open(FORMAT, RefcodecImageFile, _accept)
    Image.register_decoder(FORMAT, RefcodecDecoder)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)


register()
