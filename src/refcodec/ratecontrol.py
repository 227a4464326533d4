"""Rate control: the quality that meets a target bpp, PSNR or MS-SSIM, found on real encodes.

A target bpp B asks for the largest file of at most B bits per pixel; a target PSNR P for the
smallest file of at least P dB, and a target MS-SSIM M (of an image larger than 160 px on each side)
for the smallest file of at least that MS-SSIM, the metric of the MS-SSIM models. Candidates are
ordered by quality: every quality of a variable-rate model on a grid of 1/QUALITY_GRID (continuous
for practical purposes), or the shipped fixed-rate models of one name. Rate and PSNR grow with
quality, log-rate and PSNR nearly linearly, so the search is the secant method on the grid (regula falsi
between the nearest files on either side, bisection where that does not halve the interval): it starts
where the model's Kodak curve (its card) meets the target and typically needs 3-4 encodes of 513 candidates,
where bisection took about 11. The encodes of a variable-rate model share one analysis g_a(x) (a quality
only changes its gain). It returns a quality that meets the target
next to one that misses it: the best file where the curve is monotone. PSNR may wobble between
neighbouring grid qualities (by up to 0.07 dB on a 128x96 image near the top of the range), and
there a lower quality elsewhere may meet a PSNR target too. Every candidate is a real encode (the file's
exact size); for a PSNR or MS-SSIM target its distortion comes from the latents the file codes, synthesized
as the decoder does (a bpp target synthesizes none), and the chosen file is decoded once to report what a
user gets.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import codec, images, metrics
from .errors import RefcodecError
from .models.base import CompressionModel
from .models.registry import DEFAULT_MODEL, LAMBDAS, default_preset, load_model, model_id, shipped_ids, weights_path

QUALITY_GRID = 64  # a variable-rate model's qualities are searched on steps of 1/64 (about 1% in rate)
SLOPES = {"bpp": math.log(1.3), "psnr": 1.0, "ms-ssim": 1.0}  # per quality, of log-rate, dB and MS-SSIM dB: without a card
CARD_KEYS = {"bpp": "bpp", "psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}


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


def candidates(model: CompressionModel | str | None, preset: str | None = None, metric: str = "mse") -> Candidates:
    """(model, coding quality, nominal quality) of every candidate, in increasing quality.

    A variable-rate model (object, name with a shipped variable-rate model, id or file) gives
    its whole range on the QUALITY_GRID; a name without one gives its shipped fixed-rate models.
    """
    if isinstance(model, CompressionModel):
        if not model.levels:
            raise TargetError("rate control needs a variable-rate model or a model name with several shipped qualities")
        return [(model, q / QUALITY_GRID, q / QUALITY_GRID) for q in range((model.levels - 1) * QUALITY_GRID + 1)]
    name = model or DEFAULT_MODEL
    if "/" in name or name.endswith(".safetensors"):  # a model id or a weights file
        return candidates(load_model(name, metric=metric))
    preset = preset or default_preset(name, metric)
    if model_id(name, preset, None, metric) in shipped_ids():
        return candidates(load_model(name, preset=preset, metric=metric), preset)
    fixed = {i: model_id(name, preset, i, metric) for i in range(max(LAMBDAS) + 1)}
    qualities = [q for q, i in fixed.items() if i in shipped_ids()]
    if len(qualities) < 2:
        raise TargetError(f"rate control needs a variable-rate model or several shipped qualities of {name}/{preset}")
    return [(load_model(fixed[q]), None, float(q)) for q in qualities]


def scale(kind: str, value: float) -> float:
    """A target or a measurement on the axis where it is nearly linear in quality: log-rate, dB, MS-SSIM in dB."""
    return {"bpp": math.log, "psnr": float, "ms-ssim": lambda m: -10 * math.log10(max(1 - m, 1e-12))}[kind](value)


@functools.lru_cache(maxsize=None)
def card_points(model_ref: str) -> tuple[dict, ...] | None:
    """The Kodak points of a shipped model's card (read once per process); None without one."""
    try:
        return tuple(json.loads(weights_path(model_ref).with_suffix(".json").read_text())["evaluation"]["qualities"])
    except (OSError, KeyError, ValueError, TypeError, RefcodecError):  # no card, another card, or no model id
        return None


def prior(options: Candidates, kind: str):
    """The model's mean curve on Kodak (its card's qualities), on the ``scale`` axis, as a function of quality;
    None for a model without a card (a user's weights file) or a list of fixed-rate models."""
    nets = {id(net): net for net, _, _ in options}
    points = card_points(next(iter(nets.values())).id) if len(nets) == 1 and next(iter(nets.values())).levels else None
    if not points:
        return None
    qualities = [p["quality"] for p in points]
    values = [scale(kind, p[CARD_KEYS[kind]]) for p in points]
    return lambda q: float(np.interp(q, qualities, values))


def bracket(qualities: list[float], value, target: float, below, curve=None, slope: float = 1.0) -> tuple[int, int]:
    """The last index k whose ``value`` is ``below`` the ``target`` (-1 where none is) and the first that is not
    (``len(qualities)`` where none), for a value that grows with the index, both measured unless they lie beyond
    the ends. A secant method on the model's curve: the value is predicted as ``curve`` (the card's mean curve,
    else ``slope`` per quality) plus this image's deviation from it, interpolated linearly between the two sides'
    nearest measurements, or before there are both the two nearest the target (a constant with one point, or
    where the two do not rise: a wobble), and the next measurement is the predicted crossing's other side than
    the last measurement's; one step of bisection follows two that did not halve a two-sided
    interval. Every measurement narrows the interval."""
    q = np.asarray(qualities, dtype=np.float64)
    base = np.array([curve(x) for x in q]) if curve is not None else slope * q
    lo, hi = -1, len(q)
    seen: dict[int, float] = {}
    slow = 0
    guess = int(np.searchsorted(base, target, side="right")) - 1 if curve is not None else len(q) // 2
    while hi - lo > 1:
        width = hi - lo
        i = min(max(guess, lo + 1), hi - 1)
        seen[i] = value(i)
        lo, hi = (i, hi) if below(seen[i]) else (lo, i)
        if hi - lo <= 1:
            break
        # regula falsi between the two sides once both are measured, else the secant through the two nearest
        near = sorted([lo, hi] if lo in seen and hi in seen else sorted(seen, key=lambda j: abs(seen[j] - target))[:2])
        nearest = min(near, key=lambda j: abs(seen[j] - target))
        predicted = base + seen[nearest] - base[nearest]  # the curve through the nearest point
        if len(near) == 2 and np.isfinite(seen[near[0]] - seen[near[1]]):
            (a, b), rise = near, (seen[near[1]] - seen[near[0]]) / (q[near[1]] - q[near[0]])
            if rise > (base[b] - base[a]) / (q[b] - q[a]) / 16:  # rising, not a wobble: linear deviation through both
                da, db = seen[a] - base[a], seen[b] - base[b]
                predicted = base + da + (db - da) * (q - q[a]) / (q[b] - q[a])
        k = int(np.searchsorted(np.maximum.accumulate(predicted), target, side="right")) - 1  # the last predicted below
        guess = k + 1 if lo == i else k  # the crossing's other side than the last measurement's: it closes the interval
        slow = slow + 1 if lo in seen and hi in seen and hi - lo > width / 2 else 0
        if not np.all(np.isfinite(predicted)) or slow > 1:  # two steps that did not halve the interval
            guess, slow = (lo + hi) // 2, 0
    return lo, hi


def _span(low: float, high: float, digits: int, unit: str) -> str:
    """The range ``low``-``high`` rounded inwards, so that a target outside it never prints inside it."""
    scale = 10**digits
    return f"{math.ceil(low * scale) / scale:.{digits}f}-{math.floor(high * scale) / scale:.{digits}f} {unit}"


def search(
    image: str | Path | Image.Image,
    model: CompressionModel | str | Candidates | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
    preset: str | None = None,
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
    analysed: dict[int, torch.Tensor] = {}  # a variable-rate model's g_a(x) before the gain, by model

    def encode(i: int) -> tuple[bytes, float, torch.Tensor]:
        """(file, bpp, quantized latents) of candidate ``i``."""
        if i not in tried:
            net, quality, _ = options[i]
            ungained = None
            if net.levels and effort == "default":  # refined latents (a higher effort) differ by quality
                if id(net) not in analysed:
                    x = codec.padded_tensor(rgb).to(next(net.parameters()).device)
                    analysed[id(net)] = CompressionModel.analysis(net, x)
                ungained = analysed[id(net)]
            data, y_hat = codec.encode_rgb(rgb, mode, net, quality, effort, ungained=ungained)
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

    value = (lambda i: encode(i)[1]) if kind == "bpp" else distortion
    # the last candidate below the target and the first that is not: a rate target takes the first, a distortion
    # target the second; beyond the ends, the nearest end's file
    below = (lambda v: v <= scale(kind, target)) if kind == "bpp" else (lambda v: v < scale(kind, target))
    qualities = [nominal for _, _, nominal in options]
    lo, hi = bracket(qualities, lambda i: scale(kind, value(i)), scale(kind, target), below, prior(options, kind), SLOPES[kind])
    last = len(options) - 1
    if kind == "bpp":  # beyond the range: even quality 0 is too large, or the top is smaller than the target
        best, end = lo, 0 if lo < 0 else last if hi > last and value(last) < target else None
    else:  # no quality reaches the target, or quality 0 passes it
        best, end = hi, last if hi > last else 0 if hi == 0 and value(0) > target else None
    if end is not None:
        span = {"bpp": lambda: _span(encode(0)[1], encode(last)[1], 4, "bpp"), "psnr": lambda: _span(distortion(0), distortion(last), 2, "dB"),
                "ms-ssim": lambda: _span(distortion(0), distortion(last), 4, "MS-SSIM")}[kind]()  # fmt: skip
        where = f"quality {options[0][2]:g}-{options[last][2]:g} gives {span} on this image"
        wanted = {"bpp": f"{target:g} bpp", "psnr": f"{target:g} dB", "ms-ssim": f"MS-SSIM {target:g}"}[kind]
        if strict:
            raise TargetError(f"target {wanted} is out of range: {where}")
        best = end
    data, bpp, _ = encode(best)
    decoded = codec.decompress(data, options[best][0], max_pixels=max_pixels).convert("RGB")
    ms_ssim = metrics.ms_ssim(rgb, decoded) if kind == "ms-ssim" else None
    note = None
    if end is not None:
        reached = f"{bpp:.4f} bpp" if kind == "bpp" else f"{codec.psnr(rgb, decoded):.2f} dB" if kind == "psnr" else f"MS-SSIM {ms_ssim:.4f}"
        note = f"target {wanted} is out of range ({where}): quality {options[best][2]:g} gives {reached}"
    return Choice(data, options[best][2], bpp, codec.psnr(rgb, decoded), len(tried), ms_ssim, note)
