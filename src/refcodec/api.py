"""The public ``refcodec.compress``: a fixed quality, or rate control to a target bpp, PSNR or MS-SSIM."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from . import codec, images, ratecontrol
from .models.base import CompressionModel


def compress(
    image: str | Path | Image.Image,
    model: CompressionModel | str | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    max_pixels: int = images.MAX_PIXELS,
    effort: str = "default",
    target_ms_ssim: float | None = None,
    strict: bool = False,
    device: str | None = None,
) -> bytes:
    """Compress an image into a refcodec bitstream.

    ``quality`` is any float in a variable-rate model's range (an integer for fixed-rate
    models); ``target_bpp``, ``target_psnr`` or ``target_ms_ssim`` instead finds the quality by bisection on real
    encodes (``ratecontrol``; use ``ratecontrol.search`` to get the chosen quality as well).
    ``effort="fast"`` or ``"slow"`` refines each image's latents for smaller files (``refine``), decoder unchanged.
    A target beyond the model's range on the image gives the nearest end's file and a ``TargetWarning`` saying
    what it reached; ``strict=True`` raises ``ratecontrol.TargetError`` instead. ``device`` (for example
    ``"cuda"``) is where a model given by name encodes (the file decodes anywhere).
    """
    if target_bpp is None and target_psnr is None and target_ms_ssim is None:
        return codec.compress(image, model, quality, max_pixels, effort, device)
    if quality is not None:
        raise ValueError("give a quality or a target, not both")
    if device is not None:  # the candidates on the device: a given model must be there already
        codec.check_device(device)
        if isinstance(model, CompressionModel):
            codec.resolve_model(model, None, device)
        else:
            model = ratecontrol.candidates(model)
            for net in {id(net): net for net, _, _ in model}.values():
                net.to(device)
    choice = ratecontrol.search(image, model, target_bpp, target_psnr, max_pixels=max_pixels, effort=effort,
                                target_ms_ssim=target_ms_ssim, strict=strict)  # fmt: skip
    if choice.note:
        warnings.warn(choice.note, ratecontrol.TargetWarning, stacklevel=2)
    return choice.data
