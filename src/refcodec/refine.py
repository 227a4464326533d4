"""Encoder effort: refine one image's latents for the model's own RD objective, decoder unchanged.

The analysis transform predicts y and z in one pass (amortized inference); for a given image they
are not the best that the fixed decoder, hyper decoder and entropy model can code. ``slow`` effort
optimizes y and z of the image for L = R + lambda * D (eq. 1) at the model's quality and lambda, with
everything else frozen, by stochastic Gumbel annealing (SGA; Yang, Bamler and Mandt, NeurIPS 2020,
"Improving Inference for Neural Image Compression", section 3.2): each latent is relaxed to a random
soft choice between its floor and its ceiling, with probabilities that sharpen towards rounding as
the temperature anneals, so rate and distortion see (nearly) the values that will be coded and the
gradient stays informative. Refinement runs in float; the refined latents are then rounded and coded
through the exact path, so a file of any effort is a normal file.

Every ``CHECK_EVERY`` steps the rounded objective (the coding stage's estimated bits, which the file
matches within 0.1%, and the MSE of the decoder's reconstruction) is evaluated, and the best iterate
is kept, the unrefined latents included: ``slow`` is never worse than ``default`` in that objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import RefcodecError
from .layers.gain import interpolate_log
from .models import registry
from .models.base import CompressionModel

EFFORTS = {"default": 0, "slow": 120}  # refinement steps of each effort
LEARNING_RATE = 5e-3  # Adam, on the latents (Yang et al. use 5e-3)
TAU_START = 0.5  # SGA temperature at the start, annealed exponentially ...
TAU_END = 0.05  # ... to this at the last step
CHECK_EVERY = 10  # steps between evaluations of the rounded objective
MAX_PIXELS = 3840 * 2160  # refinement holds every activation of g_s for the backward pass: about 0.8 GB per
# megapixel for grm/small (peak 794 MiB at 768x512, 1735 MiB at 1536x1024), so 4K UHD stays within 8 GB


class EffortError(RefcodecError):
    """An effort this model or call cannot use."""


@dataclass
class Refined:
    """Refined latents and what the refinement did (rounded objective before and after, in bpp and MSE)."""

    y: torch.Tensor
    z: torch.Tensor | None
    steps: int
    best_step: int
    before: dict
    after: dict


def model_lambda(model: CompressionModel) -> float:
    """The lambda the model was trained for at its coding quality (MSE: loss = R + lambda * 255^2 * MSE)."""
    config = getattr(model, "config", {})
    if config.get("metric", "mse") != "mse":
        raise EffortError("latent refinement supports MSE models only: use the default effort")
    if model.levels:
        levels = [registry.LAMBDAS[q] for q in range(model.levels)]
        return float(interpolate_log(levels, torch.tensor(model.quality, dtype=torch.float64)))
    return float(config.get("lambda", registry.LAMBDAS[config.get("quality", registry.DEFAULT_QUALITY)]))


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
    """(loss, bpp, MSE) of latents quantized by ``quantize``; the distortion is taken on the image, not its padding."""
    out = model.quantized(y, z, quantize)
    bits = -torch.log2(out["likelihoods"]["y"][0]).sum()
    if "z" in out["likelihoods"]:
        bits = bits + -torch.log2(out["likelihoods"]["z"]).sum()
    bpp = bits / (height * width)
    x_hat = out["x_hat"][..., :height, :width].clamp(0, 1)
    mse = torch.mean((x_hat - x[..., :height, :width]) ** 2)
    return bpp + lmbda * 255**2 * mse, float(bpp.detach()), float(mse.detach())


def steps_of(effort: str) -> int:
    """Refinement steps of an effort level; a one-line EffortError for an unknown one."""
    if effort not in EFFORTS:
        raise EffortError(f"unknown effort {effort!r} (choose one of {', '.join(EFFORTS)})")
    return EFFORTS[effort]


def refine(model, x: torch.Tensor, steps: int, height: int, width: int, progress: bool = False) -> Refined:
    """Latents of the padded image ``x`` refined for ``steps`` SGA steps (see the module doc)."""
    if not hasattr(model, "quantized"):
        raise EffortError(f"{type(model).__name__} models have no latent refinement: use the default effort")
    if height * width > MAX_PIXELS:
        raise EffortError(f"latent refinement takes images of up to {MAX_PIXELS} pixels (4K UHD, within 8 GB of memory); "
                          f"this one has {height * width}: use the default effort")  # fmt: skip
    lmbda = model_lambda(model)
    y0, z0 = model.latents(x)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        latents = [t.clone().requires_grad_(True) for t in (y0, z0) if t is not None]
        optimizer = torch.optim.Adam(latents, lr=LEARNING_RATE)
        decay = math.log(TAU_START / TAU_END) / max(steps - 1, 1)

        def rounded() -> tuple[float, float, float]:
            with torch.no_grad():
                loss, bpp, mse = objective(model, x, *_pair(latents), lmbda, torch.round, height, width)
            return float(loss), bpp, mse

        best = rounded()
        before, best_step, kept = best, 0, [t.detach().clone() for t in latents]
        for step in tqdm(range(1, steps + 1), desc="refine", unit="step", disable=not progress, leave=False):
            tau = TAU_START * math.exp(-decay * (step - 1))
            loss = objective(model, x, *_pair(latents), lmbda, sga(tau), height, width)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % CHECK_EVERY == 0 or step == steps:
                now = rounded()
                if now[0] < best[0]:
                    best, best_step, kept = now, step, [t.detach().clone() for t in latents]
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    record = lambda r: {"loss": r[0], "bpp": r[1], "mse": r[2]}  # noqa: E731
    return Refined(*_pair(kept), steps, best_step, record(before), record(best))


def _pair(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return latents[0], latents[1] if len(latents) > 1 else None
