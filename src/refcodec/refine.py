"""Encoder effort: refine one image's latents for the model's own RD objective, decoder unchanged.

The analysis transform predicts y and z in one pass (amortized inference); for a given image they
are not the best that the fixed decoder, hyper decoder and entropy model can code. ``fast`` and
``slow`` effort optimize y and z of the image for L = R + lambda * D (eq. 1) at the model's quality and lambda, with
everything else frozen, by stochastic Gumbel annealing (SGA; Yang, Bamler and Mandt, NeurIPS 2020,
"Improving Inference for Neural Image Compression", section 3.2): each latent is relaxed to a random
soft choice between its floor and its ceiling, with probabilities that sharpen towards rounding as
the temperature anneals, so rate and distortion see (nearly) the values that will be coded and the
gradient stays informative. Refinement runs in float; the refined latents are then rounded and coded
through the exact path, so a file of any effort is a normal file.

D is the distortion the model was trained for (``distortion``): 255^2 * MSE, or 1 - MS-SSIM for the
MS-SSIM models, with their own lambdas.

The levels differ in steps only, the annealing schedule spread over them. ``fast`` takes 40 steps,
chosen on photos/val (not Kodak): on 384x256 center crops of two images (every tenth) with
grm/small/q1-q4, BD-rate against ``default`` was -4.2% at 20 steps, -7.6% at 40 and -12.6% at 120
(``slow``) (results/effort/steps-photos-val.md): 40 steps keep nearly the saving per step of 20 (0.19
and 0.21% a step) and give 60% of ``slow``'s saving in a third of its steps, whose last 80 steps give
0.06% a step.

Every ``CHECK_EVERY`` steps the rounded objective (the coding stage's estimated bits and the D of
the decoder's reconstruction) is evaluated, and the best iterate is kept, the unrefined latents
included. :func:`encode` then codes the kept latents and, unless they are the unrefined ones, also the
unrefined latents, and writes whichever real file has the lower R + lambda * D (its bytes, and the
D of the 8-bit image it decodes to): a file of any effort is never worse than the ``default`` file
in that objective. This holds exactly, for whole and tiled refinement alike.

Images of more than ``WHOLE_PIXELS`` are refined in tiles, so that memory stays bounded whatever the
image size: tiles of ``TILE`` pixels aligned to the grid of z (64 pixels), one after the other, each
refining the latents of its crop extended by a halo of ``HALO`` pixels and writing back the latents of
its core. A tile sees the refined cores of the tiles before it; its objective takes the reference
(section 3) and the context from its crop only, so the tiles' estimates are not the image's, which is
why the comparison of real files above decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from tqdm import tqdm

from .efforts import EFFORTS
from .errors import RefcodecError
from .layers.gain import interpolate_log
from .metrics import MS_SSIM_MIN_SIDE
from .models import registry
from .models.base import ALIGNMENT, STRIDE, CompressionModel
from .tiling import spans

LEARNING_RATE = 5e-3  # Adam, on the latents (Yang et al. use 5e-3)
TAU_START = 0.5  # SGA temperature at the start, annealed exponentially ...
TAU_END = 0.05  # ... to this at the last step
CHECK_EVERY = 10  # steps between evaluations of the rounded objective
WHOLE_PIXELS = 1 << 21  # refinement holds every activation of g_s for the backward pass, about 0.8 GB per megapixel
# for grm/small (peak 794 MiB at 768x512, 1735 MiB at 1536x1024): larger images are refined in tiles
TILE = 1024  # pixels, a multiple of 64: the core of a tile
HALO = 128  # pixels, a multiple of 64: the crop of a tile extends its core by this much on each side


class EffortError(RefcodecError):
    """An effort this model or call cannot use."""


@dataclass
class Refined:
    """Refined latents and what each tile's refinement did (its rounded objective before and after, in bpp
    and D of its crop, and the step of the kept iterate); one tile covers the whole image when untiled."""

    y: torch.Tensor
    z: torch.Tensor | None
    steps: int
    tiles: list[dict]

    @property
    def changed(self) -> bool:
        return any(t["best_step"] for t in self.tiles)


def model_metric(model: CompressionModel) -> str:
    """The distortion the model was trained for: ``mse`` or ``ms-ssim``."""
    return getattr(model, "config", {}).get("metric", "mse")


def model_lambda(model: CompressionModel) -> float:
    """The lambda the model was trained for at its coding quality, in its objective R + lambda * D (``distortion``)."""
    config = getattr(model, "config", {})
    table = registry.LAMBDAS if model_metric(model) == "mse" else registry.LAMBDAS_MS_SSIM
    if model.levels:
        levels = [table[q] for q in range(model.levels)]
        return float(interpolate_log(levels, torch.tensor(model.quality, dtype=torch.float64)))
    return float(config.get("lambda", table[config.get("quality", registry.DEFAULT_QUALITY)]))


def distortion(metric: str, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D of the objective the model was trained for, of images in [0, 1]: 255^2 * MSE (eq. 1, CompressAI's
    scaling of lambda), or 1 - MS-SSIM for a model trained for MS-SSIM (section 5.1)."""
    if metric == "ms-ssim":
        return 1 - ms_ssim(x_hat, x, data_range=1.0)
    return 255**2 * torch.mean((x_hat - x) ** 2)


def sga(tau: float):
    """The SGA relaxation of rounding at temperature ``tau`` (Yang et al. 2020, eq. 5): floor or ceiling with
    logits -atanh(distance) / tau, drawn as a Gumbel-softmax sample, soft."""

    def quantize(v: torch.Tensor) -> torch.Tensor:
        floor = torch.floor(v).detach()
        up = (v - floor).clamp(1e-5, 1 - 1e-5)  # distance to the floor
        logits = torch.stack([-torch.atanh(up), -torch.atanh(1 - up)], -1) / tau
        return floor + F.gumbel_softmax(logits, tau=tau, hard=False)[..., 1]

    return quantize


def objective(model, x: torch.Tensor, y, z, lmbda: float, quantize, height: int, width: int) -> tuple[torch.Tensor, float, float]:
    """(loss, bpp, D) of latents quantized by ``quantize``; the distortion is taken on the image, not its padding."""
    out = model.quantized(y, z, quantize)
    bits = -torch.log2(out["likelihoods"]["y"][0]).sum()
    if "z" in out["likelihoods"]:
        bits = bits + -torch.log2(out["likelihoods"]["z"]).sum()
    bpp = bits / (height * width)
    d = distortion(model_metric(model), out["x_hat"][..., :height, :width].clamp(0, 1), x[..., :height, :width])
    return bpp + lmbda * d, float(bpp.detach()), float(d.detach())


def steps_of(effort: str) -> int:
    """Refinement steps of an effort level; a one-line EffortError for an unknown one."""
    if effort not in EFFORTS:
        raise EffortError(f"unknown effort {effort!r} (choose one of {', '.join(EFFORTS)})")
    return EFFORTS[effort]


def windows(height: int, width: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """The tiles of a padded image, in units of z: (kept start, kept end, crop start, crop end) along its
    height and its width; one tile, the whole image, for images of up to ``WHOLE_PIXELS``."""
    h, w = height // ALIGNMENT, width // ALIGNMENT
    if height * width <= WHOLE_PIXELS:
        return [((0, h, 0, h), (0, w, 0, w))]
    tile, halo = TILE // ALIGNMENT, HALO // ALIGNMENT
    return [(r, c) for r in spans(h, math.ceil(h / tile), halo, 1) for c in spans(w, math.ceil(w / tile), halo, 1)]


def refine(model, x: torch.Tensor, steps: int, height: int, width: int, progress: bool = False) -> Refined:
    """Latents of the padded image ``x`` (of ``height`` x ``width`` image pixels) refined for ``steps``
    SGA steps, in tiles for a large image (see the module doc)."""
    if not hasattr(model, "quantized"):
        raise EffortError(f"{type(model).__name__} models have no latent refinement: use the default effort")
    if model_metric(model) == "ms-ssim" and min(height, width) <= MS_SSIM_MIN_SIDE:
        raise EffortError(f"refining for MS-SSIM needs an image larger than {MS_SSIM_MIN_SIDE} px on each side (its five "
                          f"scales), got {width}x{height}: use the default effort")  # fmt: skip
    lmbda = model_lambda(model)
    y, z = model.latents(x)
    tiles = windows(*x.shape[2:])
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    records = []
    try:
        with tqdm(total=steps * len(tiles), desc="refine", unit="step", disable=not progress, leave=False) as bar:
            for (r0, r1, a0, a1), (c0, c1, b0, b1) in tiles:
                ys, zs = [slice(v * (ALIGNMENT // STRIDE), e * (ALIGNMENT // STRIDE)) for v, e in ((a0, a1), (b0, b1))], [slice(a0, a1), slice(b0, b1)]
                crop = x[..., a0 * ALIGNMENT : a1 * ALIGNMENT, b0 * ALIGNMENT : b1 * ALIGNMENT]
                part = [y[..., ys[0], ys[1]], None if z is None else z[..., zs[0], zs[1]]]
                size = (min(height, a1 * ALIGNMENT) - a0 * ALIGNMENT, min(width, b1 * ALIGNMENT) - b0 * ALIGNMENT)
                (y_t, z_t), record = _refine_crop(model, crop, part, lmbda, steps, *size, bar)
                k = ALIGNMENT // STRIDE  # latents of y per latent of z
                y[..., r0 * k : r1 * k, c0 * k : c1 * k] = y_t[..., (r0 - a0) * k : (r1 - a0) * k, (c0 - b0) * k : (c1 - b0) * k]
                if z is not None:
                    z[..., r0:r1, c0:c1] = z_t[..., r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
                records.append(record | {"core": [r0 * ALIGNMENT, r1 * ALIGNMENT, c0 * ALIGNMENT, c1 * ALIGNMENT]})
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    return Refined(y, z, steps, records)


def _refine_crop(model, x, latents, lmbda, steps, height, width, bar) -> tuple[tuple, dict]:
    """SGA on the latents of one crop ``x``: the kept (best rounded) latents and the record of the refinement."""
    # Channels-last latents: every convolution of the step runs channels-last, 12-20% faster on a CPU (measured).
    latents = [t.clone(memory_format=torch.channels_last).requires_grad_(True) for t in latents if t is not None]
    optimizer = torch.optim.Adam(latents, lr=LEARNING_RATE)
    decay = math.log(TAU_START / TAU_END) / max(steps - 1, 1)

    def rounded() -> tuple[float, float, float]:
        with torch.no_grad():
            loss, bpp, d = objective(model, x, *_pair(latents), lmbda, torch.round, height, width)
        return float(loss), bpp, d

    best = rounded()
    before, best_step, kept = best, 0, [t.detach().clone() for t in latents]
    for step in range(1, steps + 1):
        tau = TAU_START * math.exp(-decay * (step - 1))
        loss = objective(model, x, *_pair(latents), lmbda, sga(tau), height, width)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update()
        if step % CHECK_EVERY == 0 or step == steps:
            now = rounded()
            if now[0] < best[0]:
                best, best_step, kept = now, step, [t.detach().clone() for t in latents]
    record = lambda r: {"loss": r[0], "bpp": r[1], "distortion": r[2]}  # noqa: E731
    return _pair([t.contiguous() for t in kept]), {"before": record(before), "after": record(best), "best_step": best_step}


def file_objective(model, x: torch.Tensor, streams: list[bytes], y_hat: torch.Tensor, lmbda: float, height: int, width: int) -> float:
    """R + lambda * D of a coding: its streams' bytes (the header is the same at every effort) and the
    distortion of the 8-bit image that the decoder reconstructs from ``y_hat``."""
    x_hat = torch.round(model.synthesize(y_hat)[..., :height, :width].clamp(0, 1) * 255) / 255
    d = float(distortion(model_metric(model), x_hat.double(), x[..., :height, :width].double()))
    return 8 * sum(map(len, streams)) / (height * width) + lmbda * d


def encode(model, x: torch.Tensor, steps: int, height: int, width: int, progress: bool = False) -> tuple[list[bytes], torch.Tensor, Refined]:
    """Streams and y_hat of the padded image ``x`` at an effort of ``steps`` refinement steps: those of the
    refined latents, or of the unrefined ones where their real file is as good (see the module doc)."""
    refined = refine(model, x, steps, height, width, progress)
    streams, y_hat = model.encode_latents(refined.y, refined.z)
    if refined.changed:
        lmbda = model_lambda(model)
        default = model.encode_latents(*model.latents(x))
        if file_objective(model, x, *default, lmbda, height, width) <= file_objective(model, x, streams, y_hat, lmbda, height, width):
            return *default, refined
    return streams, y_hat, refined


def _pair(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return latents[0], latents[1] if len(latents) > 1 else None
