"""Rate control: the quality that meets a target bpp, PSNR or MS-SSIM, found by bisection on real encodes.

A target bpp B asks for the largest file of at most B bits per pixel; a target PSNR P for the
smallest file of at least P dB, and a target MS-SSIM M (of an image larger than 160 px on each side)
for the smallest file of at least that MS-SSIM, the metric of the MS-SSIM models. Candidates are
ordered by quality: every quality of a variable-rate model on a grid of 1/QUALITY_GRID (continuous
for practical purposes), or the shipped fixed-rate models of one name. Rate and PSNR grow with
quality, so bisection needs about log2(candidates) encodes after the two ends. It returns a quality that meets the target
next to one that misses it: the best file where the curve is monotone. PSNR may wobble between
neighbouring grid qualities (by up to 0.07 dB on a 128x96 image near the top of the range), and
there a lower quality elsewhere may meet a PSNR target too. Every candidate is a real encode (the file's
exact size); for a PSNR or MS-SSIM target its distortion comes from the latents the file codes, synthesized
as the decoder does (a bpp target synthesizes none), and the chosen file is decoded once to report what a
user gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import codec, images, metrics
from .errors import RefcodecError
from .models.base import CompressionModel
from .models.registry import DEFAULT_MODEL, DEFAULT_PRESET, LAMBDAS, load_model, model_id, shipped_ids

QUALITY_GRID = 64  # a variable-rate model's qualities are searched on steps of 1/64 (about 1% in rate)


class TargetError(RefcodecError):
    """A target that no quality of the model meets on this image (with ``strict``), or that is not a number."""


class TargetWarning(UserWarning):
    """A target beyond the model's range on an image: the nearest end's file was given (``refcodec.compress``)."""


@dataclass
class Choice:
    """The file rate control chose, with its quality, rate, distortion and the number of encodes it took."""

    data: bytes
    quality: float
    bpp: float
    psnr: float
    encodes: int
    ms_ssim: float | None = None  # with an MS-SSIM target
    note: str | None = None  # where the target lies beyond the model's range on this image: the end given instead


Candidates = list[tuple[CompressionModel, float | None, float]]  # (model, coding quality, nominal quality)


def candidates(model: CompressionModel | str | None, preset: str = DEFAULT_PRESET, metric: str = "mse") -> Candidates:
    """(model, coding quality, nominal quality) of every candidate, in increasing quality.

    A variable-rate model (object, name with a shipped variable-rate model, id or file) gives
    its whole range on the QUALITY_GRID; a name without one gives its shipped fixed-rate models.
    """
    if isinstance(model, CompressionModel):
        if not model.levels:
            raise TargetError("rate control needs a variable-rate model or a model name with several shipped qualities")
        return [(model, q / QUALITY_GRID, q / QUALITY_GRID) for q in range((model.levels - 1) * QUALITY_GRID + 1)]
    name = model or DEFAULT_MODEL
    if "/" in name or name.endswith(".safetensors") or model_id(name, preset, None, metric) in shipped_ids():
        return candidates(load_model(name, preset=preset, metric=metric), preset)
    fixed = {i: model_id(name, preset, i, metric) for i in range(max(LAMBDAS) + 1)}
    qualities = [q for q, i in fixed.items() if i in shipped_ids()]
    if len(qualities) < 2:
        raise TargetError(f"rate control needs a variable-rate model or several shipped qualities of {name}/{preset}")
    return [(load_model(fixed[q]), None, float(q)) for q in qualities]


def _span(low: float, high: float, digits: int, unit: str) -> str:
    """The range ``low``-``high`` rounded inwards, so that a target outside it never prints inside it."""
    scale = 10**digits
    return f"{math.ceil(low * scale) / scale:.{digits}f}-{math.floor(high * scale) / scale:.{digits}f} {unit}"


def search(
    image: str | Path | Image.Image,
    model: CompressionModel | str | Candidates | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    preset: str = DEFAULT_PRESET,
    max_pixels: int = images.MAX_PIXELS,
    effort: str = "default",
    target_ms_ssim: float | None = None,
    strict: bool = False,
) -> Choice:
    """The file that meets ``target_bpp`` (largest at most that rate), ``target_psnr`` or ``target_ms_ssim``
    (smallest of at least that PSNR or MS-SSIM), exactly one of them. A target beyond the model's range on
    this image gets the file of the nearest end, with a one-line ``note`` saying what it reached; with
    ``strict``, a TargetError that says what the range is. ``model`` may also be the list of
    :func:`candidates`, prepared once for many images. Every encode of the search runs at ``effort``."""
    given = {k: v for k, v in (("bpp", target_bpp), ("psnr", target_psnr), ("ms-ssim", target_ms_ssim)) if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of target_bpp, target_psnr and target_ms_ssim")
    [(kind, target)] = given.items()
    if not np.isfinite(target) or target <= 0 or kind == "ms-ssim" and target >= 1:
        raise TargetError(f"the target must be a positive number{' below 1' if kind == 'ms-ssim' else ''}, got {target:g}")
    rgb, mode = images.to_rgb(images.load_image(image, max_pixels))
    if kind == "ms-ssim" and min(rgb.size) <= metrics.MS_SSIM_MIN_SIDE:
        raise TargetError(f"an MS-SSIM target needs an image larger than {metrics.MS_SSIM_MIN_SIDE} px on each side "
                          f"(its five scales), got {rgb.width}x{rgb.height}")  # fmt: skip
    score = metrics.ms_ssim if kind == "ms-ssim" else codec.psnr
    options = model if isinstance(model, list) else candidates(model, preset)
    pixels = rgb.width * rgb.height
    tried: dict[int, tuple[bytes, float, torch.Tensor]] = {}
    scored: dict[int, float] = {}

    def encode(i: int) -> tuple[bytes, float, torch.Tensor]:
        """(file, bpp, quantized latents) of candidate ``i``."""
        if i not in tried:
            net, quality, _ = options[i]
            data, y_hat = codec.encode_rgb(rgb, mode, net, quality, effort)
            tried[i] = (data, 8 * len(data) / pixels, y_hat)
        return tried[i]

    def distortion(i: int) -> float:
        """PSNR or MS-SSIM of candidate ``i``, synthesized from its latents as the decoder does (only for a
        distortion target: a rate target needs no synthesis but that of the file it returns)."""
        if i not in scored:
            net, quality, _ = options[i]
            with codec.at_quality(net, quality):
                x_hat = net.synthesize(encode(i)[2])
            scored[i] = score(rgb, codec.tensor_to_image(x_hat[:, :, : rgb.height, : rgb.width]))
        return scored[i]

    def meets(i: int) -> bool:  # monotone: true for low qualities (bpp), for high ones (PSNR, MS-SSIM)
        return encode(i)[1] <= target if kind == "bpp" else distortion(i) >= target

    lo, hi = 0, len(options) - 1
    low, high = encode(lo), encode(hi)
    span = {"bpp": lambda: _span(low[1], high[1], 4, "bpp"), "psnr": lambda: _span(distortion(lo), distortion(hi), 2, "dB"),
            "ms-ssim": lambda: _span(distortion(lo), distortion(hi), 4, "MS-SSIM")}[kind]()  # fmt: skip
    where = f"quality {options[lo][2]:g}-{options[hi][2]:g} gives {span} on this image"
    wanted = {"bpp": f"{target:g} bpp", "psnr": f"{target:g} dB", "ms-ssim": f"MS-SSIM {target:g}"}[kind]
    value = (lambda i: encode(i)[1]) if kind == "bpp" else distortion
    # beyond the range: below it (even the lowest quality passes a rate target, or exceeds a distortion one), above it
    end = None
    if kind == "bpp" and not meets(lo) or kind != "bpp" and meets(lo) and value(lo) > target:
        end = lo
    elif kind == "bpp" and value(hi) < target or kind != "bpp" and not meets(hi):
        end = hi
    if end is not None and strict:
        raise TargetError(f"target {wanted} is out of range: {where}")
    if end is not None:
        best = end
    elif kind == "bpp":
        while hi - lo > 1:  # invariant: meets(lo); the answer is below hi unless hi meets too
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if meets(mid) else (lo, mid)
        best = hi if meets(hi) else lo
    else:
        while hi - lo > 1:  # invariant: meets(hi)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        best = lo if meets(lo) else hi
    data, bpp, _ = encode(best)
    decoded = codec.decompress(data, options[best][0], max_pixels=max_pixels).convert("RGB")
    ms_ssim = metrics.ms_ssim(rgb, decoded) if kind == "ms-ssim" else None
    note = None
    if end is not None:
        reached = f"{bpp:.4f} bpp" if kind == "bpp" else f"{codec.psnr(rgb, decoded):.2f} dB" if kind == "psnr" else f"MS-SSIM {ms_ssim:.4f}"
        note = f"target {wanted} is out of range ({where}): quality {options[best][2]:g} gives {reached}"
    return Choice(data, options[best][2], bpp, codec.psnr(rgb, decoded), len(tried), ms_ssim, note)
