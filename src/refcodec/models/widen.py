"""Function-preserving growth of a trained GRM to a wider one (Net2Net, Chen et al., ICLR 2016).

A wider preset (more hidden units N, more latent channels M) starts from a trained narrower model,
so that no training is thrown away. Every old unit keeps its place (first in its layer, or first in
each block of a concatenation) and its weights; new units are added beside them:

- every layer's old outputs see only its old inputs (the weights from new inputs to old outputs are
  zero), so the old units compute exactly what they computed, whatever the new units hold; the one
  exception is a layer that reads a latent (below);
- new hidden units take the target model's own random initialization, so they have gradients from the
  first step; GSDN/IGSDN (eq. 5-6) give new channels zero cross-terms (gamma and tau start diagonal);
- new latent channels of y and z start at exactly 0: the last layers of g_a and h_a give them zero
  weights and biases. g_s, h_a, h_s and the context and reference convolutions read them, in every old and
  new unit, with random weights (0 times anything is 0): that carries the gradient to g_a's and h_a's new rows
  at once (zero weights on both sides would leave the new channels at a saddle, never trained). The old
  units' weights from them are small (LATENT_READ), so that they do not change the scale that the exact
  synthesis gives each output column (``synthesis``), nor the pixels when the new channels first turn on;
- the entropy parameters of a new y channel start at mean 0 and the smallest scale (stage 1; later
  stages add 0), and a new channel of z gets a density peaked at 0 (:func:`_peaked_density`): zeros
  predicted with near certainty cost almost no bits.

So the pixels are the same bits (g_s of the same old latents), and the rate changes only by the
near-certain zeros of the new channels and by the one part of the entropy model that cannot be kept:
the confidence U of the global reference (section 3) is the average of the stage-1 probabilities over
all M channels, so the new channels' probabilities (about 1) raise it, and the transferred features with it.
``tests/test_widen.py`` checks what the widened model codes; ``scripts/ship_gate.py`` on its weights measures
it on the validation sets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..entropy.factorized import FactorizedDensity
from ..entropy.gaussian import SCALE_MIN
from ..layers.gdn import _Normalization
from ..layers.gain import GainUnit
from . import registry
from .grm import GRM

DENSITY_WIDTH = 0.02  # init_scale of a new z channel's density: about this wide around 0
LATENT_READ = 0.01  # the old units' random weights from new latent channels, against the default initialization
DENSITY_BIAS = 1e-3  # the new density's random biases, shrunk so that its centre stays within ~1e-4 of 0


def _blocks(old: list[int], new: list[int]) -> torch.Tensor:
    """Positions in a concatenation of blocks of sizes ``new`` of the units of one of sizes ``old`` (each block's old units first)."""
    offsets = torch.tensor([0, *new[:-1]]).cumsum(0)
    return torch.cat([torch.arange(o) + int(off) for o, off in zip(old, offsets)])


def _first(old: int) -> torch.Tensor:
    return torch.arange(old)


def _stage_layout(model: GRM, stage: int) -> list[int]:
    """Block sizes of parameter network ``stage``'s input: 2M features per source so far, then the previous (mu, log-sigma)."""
    kinds = sum(len(s) for s in model.stages[: stage + 1])
    return [2 * model.M] * kinds + ([model.M, model.M] if stage else [])


def _chains(old: GRM, new: GRM) -> list[tuple[nn.Sequential, nn.Sequential, list[torch.Tensor | None], torch.Tensor | None, bool]]:
    """For each network, (old net, new net, the position map of every activation between its layers
    (None: the pixels, unchanged), the bias of its new outputs where they must be exact (else None),
    whether it reads a latent)."""
    n, m = old.N, old.M
    out = [(old.g_a, new.g_a, [None, _first(n), _first(n), _first(n), _first(m)], torch.zeros(new.M - m), False),
           (old.g_s, new.g_s, [_first(m), _first(n), _first(n), _first(n), None], None, True)]  # fmt: skip
    if old.hyperprior:
        out += [(old.h_a, new.h_a, [_first(m), _first(n), _first(n), _first(n)], torch.zeros(new.N - n), True),
                (old.h_s, new.h_s, [_first(n), _first(m), _first(m * 3 // 2), _first(2 * m)], None, True)]  # fmt: skip
    for i, (a, b) in enumerate(zip(old.param_nets, new.param_nets)):
        mu_sigma = _blocks([m, m], [new.M, new.M])
        grow = new.M - m
        # stage 1 predicts a new channel's zeros at mean 0 and the smallest scale; later stages refine by 0
        bias = torch.cat([torch.zeros(grow), torch.full((grow,), math.log(SCALE_MIN) if i == 0 else 0.0)])
        layout = _blocks(_stage_layout(old, i), _stage_layout(new, i))
        out.append((a, b, [layout, _first(m * 10 // 3), _first(m * 8 // 3), mu_sigma], bias, False))
    return out


@torch.no_grad()
def _grow_conv(old: nn.Conv2d, new: nn.Conv2d, rows: torch.Tensor | None, cols: torch.Tensor | None, new_bias: torch.Tensor | None,
               reads_latent: bool = False) -> None:  # fmt: skip
    """Write ``old``'s weights into ``new`` at output positions ``rows``, input positions ``cols``; zero the
    weights from new inputs to old outputs, unless the inputs are a latent (``reads_latent``: its new channels
    are 0), whose weights to old outputs are shrunk by LATENT_READ instead; with ``new_bias``, new outputs get zero
    weights and it."""
    transposed = isinstance(new, nn.ConvTranspose2d)
    w = new.weight.transpose(0, 1) if transposed else new.weight  # (out, in, k, k): a view
    rows = torch.arange(w.shape[0]) if rows is None else rows
    cols = torch.arange(w.shape[1]) if cols is None else cols
    w[rows] *= LATENT_READ if reads_latent else 0
    w[rows.view(-1, 1), cols.view(1, -1)] = old.weight.transpose(0, 1) if transposed else old.weight
    new.bias[rows] = old.bias
    if new_bias is not None:
        fresh = torch.ones(w.shape[0], dtype=torch.bool)
        fresh[rows] = False
        w[fresh] = 0
        new.bias[fresh] = new_bias.to(new.bias)


@torch.no_grad()
def _grow_normalization(old: _Normalization, new: _Normalization, units: torch.Tensor) -> None:
    """Old channels' (beta, gamma, nu, tau) at ``units``; new rows and columns keep the diagonal start (zero cross-terms)."""
    new.beta[units] = old.beta
    new.gamma[units.view(-1, 1), units.view(1, -1)] = old.gamma
    if old.subtractive:
        new.nu[units] = old.nu
        new.tau[units.view(-1, 1), units.view(1, -1)] = old.tau


def _grow_chain(old: nn.Sequential, new: nn.Sequential, maps: list[torch.Tensor | None], new_bias: torch.Tensor | None,
                latent: bool) -> None:  # fmt: skip
    convs = [i for i, layer in enumerate(new) if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)]
    for k, i in enumerate(convs):
        _grow_conv(old[i], new[i], maps[k + 1], maps[k], new_bias if k == len(convs) - 1 else None, reads_latent=k == 0 and latent)
        if i + 1 < len(new) and isinstance(new[i + 1], _Normalization):
            _grow_normalization(old[i + 1], new[i + 1], maps[k + 1])


@torch.no_grad()
def _peaked_density(old: FactorizedDensity, new: FactorizedDensity, units: torch.Tensor) -> None:
    """Old channels' densities at ``units``; new channels a near-delta at 0 (init_scale DENSITY_WIDTH, biases
    shrunk by DENSITY_BIAS, which keeps them distinct): a z that is always 0 costs almost nothing."""
    peaked = FactorizedDensity(new.channels, init_scale=DENSITY_WIDTH)
    for group in ("matrices", "biases", "factors"):
        for a, b, c in zip(getattr(old, group), getattr(new, group), getattr(peaked, group)):
            b.copy_(c * (DENSITY_BIAS if group == "biases" else 1))
            b[units] = a


@torch.no_grad()
def _grow_gain(old: GainUnit, new: GainUnit, units: torch.Tensor) -> None:
    """Old channels' gains at ``units``; new channels keep gain 1 (log 0) at every level."""
    new.log_gain[:, units] = old.log_gain
    new.log_inverse[:, units] = old.log_inverse


def widen(old: GRM, new: GRM) -> None:
    """Initialize ``new`` in place as the function-preserving widening of ``old`` (see the module doc).

    ``new`` must have the same flags, levels and schedule, and N and M at least ``old``'s; its own
    random initialization supplies the new units, so seed torch before building it for a reproducible start.
    """
    if not (isinstance(old, GRM) and isinstance(new, GRM)):
        raise ValueError("widening grows a GRM into a GRM")
    same = ["reference", "confidence", "hyperprior", "levels", "stages"]
    if any(getattr(old, k) != getattr(new, k) for k in same) or old.schedule.name != new.schedule.name:
        raise ValueError(f"widening keeps the architecture: {', '.join(same)} and the schedule must match")
    if new.N < old.N or new.M < old.M or [type(x) for x in old.g_a] != [type(x) for x in new.g_a]:
        raise ValueError(f"cannot widen N={old.N}, M={old.M} to N={new.N}, M={new.M}")
    n, m = _first(old.N), _first(old.M)
    for chain in _chains(old, new):
        _grow_chain(*chain)
    features = _first(2 * old.M)
    for name in ["context"] + ["transfer"] * old.reference:
        _grow_conv(getattr(old, name), getattr(new, name), features, m, None, reads_latent=True)
    if old.hyperprior:
        _peaked_density(old.density, new.density, n)
    if old.levels:
        _grow_gain(old.y_gain, new.y_gain, m)
        if old.hyperprior:
            _grow_gain(old.z_gain, new.z_gain, n)
    new.update()


RESEED_CROPS, RESEED_CROP = 32, 256  # training crops whose analysis features choose the reseeded rows: 8,192 positions


@torch.no_grad()
def reseed(model: GRM, m: int, crops: torch.Tensor) -> None:
    """Re-initialize the latent channels of y from ``m`` on, in place, so that they carry information from the start.

    :func:`widen` starts them at 0 with random reads, the orientation of Net2Net, and rounding keeps them at 0:
    g_s's reads of them never see a nonzero value, so they never learn, and the channels stay dead
    (``docs/training.md``). Here the orientation is reversed, as a quantized bottleneck needs: every network that
    reads y (g_s, h_a, the context and reference convolutions) reads the new channels with zero weights, which
    learn at once since their input is nonzero, and g_a's last layer gives them the residual principal
    components of its input on ``crops`` (training images, N x 3 x H x W): the directions of largest variance
    of the 5x5 patches of features that it reads, among those uncorrelated with the old channels. So the new
    channels hold what the old ones do not, at the old channels' mean spread and centred; after 250 steps of
    g_s alone they gave it 0.30 dB at quality 4, random rows 0.05 dB (``docs/training.md``). The pixels, z and every
    old prediction are unchanged; the new channels cost their own bits until the entropy model learns them, and
    the global reference, whose search compares all M channels, may pick other positions. Their gains take the
    old channels' mean per level. ``refcodec train --grow-reseed`` holds the new rows while the decoder learns them."""
    last = model.g_a[-1]
    features = model.g_a[:-1](crops)
    patches = F.unfold(features, last.kernel_size, padding=last.padding, stride=last.stride).transpose(1, 2)
    patches = patches.reshape(-1, patches.shape[-1]).double()
    if len(patches) < patches.shape[1]:
        raise ValueError(f"reseeding needs at least {patches.shape[1]} positions of g_a's last layer, got {len(patches)}: more or larger crops")
    centre = patches.mean(0)
    patches -= centre
    cov = patches.T @ patches / len(patches)
    old = last.weight[:m].flatten(1).double()
    cross = old @ cov
    gram = cross @ old.T
    residual = cov - cross.T @ torch.linalg.solve(gram, cross)  # of the patches less their regression on the old channels
    top = torch.linalg.eigh(residual).eigenvectors[:, -(model.M - m) :].flip(1).T
    rows = top - torch.linalg.solve(gram, cross @ top.T).T @ old  # rows . patch = top . residual patch
    spread = (patches @ old.T).std(0).mean()
    rows *= spread / (patches @ rows.T).std(0).clamp_min(1e-12).unsqueeze(1)
    last.weight[m:] = rows.view_as(last.weight[m:]).to(last.weight)
    last.bias[m:] = -(rows @ centre).to(last.bias)
    model.g_s[0].weight[m:] = 0  # a transposed convolution: (in, out, k, k)
    for conv in [model.context] + [model.h_a[0]] * model.hyperprior + [model.transfer] * model.reference:
        conv.weight[:, m:] = 0
    if model.levels:
        for table in (model.y_gain.log_gain, model.y_gain.log_inverse):
            table[:, m:] = table[:, :m].mean(1, keepdim=True)


def grown(source: GRM, preset: str, seed: int = 0) -> GRM:
    """A ready-to-code model of ``preset``'s size widened from the loaded model ``source`` (:func:`widen`),
    with the id of ``preset`` and the source's config (its training record, the new size), at the
    source's quality. ``seed`` draws the new units."""
    config = dict(source.config)
    size = registry.PRESETS[preset]
    torch.manual_seed(seed)
    model = GRM(**size, **config.get("flags", {}))
    widen(source, model)
    model.eval()
    config |= {"preset": preset, **size, "id": registry.model_id("grm", preset, None, config.get("metric", "mse")),
               "init": {"id": config.get("id"), "steps": config.get("steps"), "how": f"widened (seed {seed})"}}  # fmt: skip
    model.id, model.config = config["id"], config
    model.use_quality(source.quality)
    return model
