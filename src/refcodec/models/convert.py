"""Starting a model from other weights: two-stage GSDN training and CompressAI's mbt2018.

Two-stage initialization (paper section 5.3): a GDN model is trained first, then
turned into a GSDN model by adding the subtractive parameters nu = tau = 0, which
computes exactly what the GDN model computed (:func:`gsdn_from_gdn`).

CompressAI import (:func:`load_compressai_mbt2018`): the weights of CompressAI's
``JointAutoregressiveHierarchicalPriors`` ("mbt2018", compressai/models/google.py)
initialize our ``joint`` and ``grm`` models. What maps exactly, computing the
same function as in CompressAI:

- g_a, g_s (convolutions, GDN/IGDN; for a GSDN model with nu = tau = 0), h_a, h_s
  and the 5x5 masked context convolution (the same raster type-A mask);
- the means of the entropy parameters network, at the stage that sees the
  hyperprior (our last stage); our earlier stages start at (mu, log-sigma) = (0, 0),
  so the last stage's prediction is mbt2018's;
- the factorized density of z, when the checkpoint's density has our depth
  (filters (3, 3, 3)).

What is approximated:

- scales: mbt2018 predicts sigma, we predict log-sigma, and no affine map of the
  last layer turns one into the other. We use the tangent of log at
  sigma = SCALE_TANGENT: log sigma ~ log s0 + (sigma - s0) / s0. Being a tangent of
  a concave function it never underestimates sigma (too-small scales cost far
  more bits than too-large ones); it is exact at sigma = s0 and off for small and
  large scales, which training then corrects;
- the density of z, for CompressAI's default filters (3, 3, 3, 3): ours has one
  layer less, so it is fitted to the checkpoint's density (:func:`_fit_density`);
- not present in mbt2018 and left as the target model has them: the reference
  model's transfer convolution and the hidden layers of our earlier stages
  (whose output layers are zeroed).

Differences that no mapping removes: CompressAI quantizes z around the density's
medians and codes y - mu rounded; we round z and y themselves.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import torch

from ..entropy.factorized import SEARCH_RANGE, TAIL_MASS, FactorizedDensity
from ..errors import RefcodecError
from ..layers.gdn import GSDN, IGSDN
from ..layers.masked_conv import causal_mask
from . import registry
from .base import CompressionModel
from .grm import GRM
from .widen import widen

SCALE_TANGENT = 1.0  # s0 of the log-sigma linearization of mbt2018's scales
FIT_STEPS = 400  # Adam steps of the density fit
FIT_LR = 0.02
FIT_BIN = 0.25  # bin width of the density fit (finer than the unit bins that are coded)

_PEDESTAL = (2.0**-18) ** 2  # CompressAI's NonNegativeParametrizer default (reparam_offset 2^-18)
# EntropyBottleneck parameter names of older CompressAI releases, and keys that identify an mbt2018 state dict.
_OLD_NAMES = {"matrices": "matrix", "biases": "bias", "factors": "factor"}
_MBT2018_KEYS = (
    "g_a.0.weight", "g_a.6.weight", "h_s.4.weight", "context_prediction.weight", "entropy_parameters.0.weight",
    "entropy_bottleneck._matrix0",
)  # fmt: skip


class InitError(RefcodecError):
    """Weights that cannot initialize the requested model."""


# -- two-stage initialization (section 5.3) ---------------------------------------------------


def _normalizations(model: CompressionModel) -> list[GSDN | IGSDN]:
    return [m for m in model.modules() if isinstance(m, (GSDN, IGSDN))]


def gsdn_from_gdn(source: CompressionModel) -> CompressionModel:
    """A copy of a GDN model whose GDN/IGDN layers are GSDN/IGSDN with nu = tau = 0 (section 5.3).

    The copy computes exactly what ``source`` computes; training then learns the
    subtractive terms. If ``source`` has a ``config`` (models from
    ``registry.load_model`` do), the copy's says ``gsdn: true``.
    """
    if any(layer.subtractive for layer in _normalizations(source)):
        raise InitError("the source model already uses GSDN")
    model = copy.deepcopy(source)
    for transform in (model.g_a, model.g_s):
        for i, layer in enumerate(transform):
            if isinstance(layer, GSDN):
                transform[i] = GSDN.from_gdn(layer)
            elif isinstance(layer, IGSDN):
                transform[i] = IGSDN.from_igdn(layer)
    if hasattr(source, "config"):
        model.config = {**source.config, "flags": {**source.config.get("flags", {}), "gsdn": True}}
    return model.train(source.training)


# -- refcodec weights ---------------------------------------------------------------------------


def _mismatch(model: CompressionModel | dict, state: dict) -> str | None:
    """Why ``state`` does not load into ``model`` (or a state dict), or None. The coding tables (``pmf``) may differ in width."""
    own = model if isinstance(model, dict) else model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, value in own.items():
        if not key.endswith(".pmf") and value.shape != state[key].shape:
            return f"{key} has shape {tuple(state[key].shape)}, the model has {tuple(value.shape)}"
    return None


GAIN_EXPONENT = 0.5  # gain ~ lambda^(1/2): the uniform quantizer's step for D ~ step^2 at high rate


def variable_from_fixed(model: CompressionModel, source: CompressionModel) -> None:
    """Start a variable-rate model (``layers.gain``) from a fixed-rate one of the same architecture.

    Everything but the gain units is copied; at quality q each gain starts at
    (lambda_q / lambda_source)^GAIN_EXPONENT on y and 1 on z, and each inverse gain at the
    reciprocal of the y gain, so the source's own quality computes exactly what the source did.
    """
    metric = getattr(source, "config", {}).get("metric", "mse")
    lambdas = registry.LAMBDAS if metric == "mse" else registry.LAMBDAS_MS_SSIM
    if sorted(lambdas) != list(range(model.levels)):
        raise InitError(f"the model has {model.levels} quality levels, the registry's lambdas {len(lambdas)}")
    source_lambda = source.config["lambda"] if hasattr(source, "config") else lambdas[registry.DEFAULT_QUALITY]
    slope = [GAIN_EXPONENT * math.log(lambdas[q] / source_lambda) for q in range(model.levels)]
    gains = {k: v for k, v in model.state_dict().items() if "_gain." in k}
    model.load_state_dict({**source.state_dict(), **gains})
    model.y_gain.initialize(slope)
    if model.hyperprior:
        model.z_gain.initialize([0.0] * model.levels, [-s for s in slope])


def _load_refcodec(model: CompressionModel, source: CompressionModel, label: str) -> str:
    """Plain copy of the same architecture, the function-preserving widening of a narrower one (``widen``),
    the two-stage initialization from its GDN version, or a variable-rate model from a fixed-rate one
    (:func:`variable_from_fixed`)."""
    problem = _mismatch(model, source.state_dict())
    if problem is None:
        model.load_state_dict(source.state_dict())
        return f"weights of {label}"
    if isinstance(model, GRM) and isinstance(source, GRM) and (model.N, model.M) != (source.N, source.M):
        try:
            widen(source, model)
        except ValueError as e:
            raise InitError(f"{label} does not fit this model: {e}") from None
        return f"widened from N={source.N}, M={source.M} to N={model.N}, M={model.M} from the weights of {label} (function-preserving)"
    if model.levels and not source.levels:
        without_gains = {k: v for k, v in model.state_dict().items() if "_gain." not in k}
        problem = _mismatch(without_gains, source.state_dict())
        if problem is None:
            variable_from_fixed(model, source)
            return f"variable-rate model from the fixed-rate weights of {label} (gains start at lambda^{GAIN_EXPONENT})"
    gsdn_target = any(layer.subtractive for layer in _normalizations(model))
    if gsdn_target and not any(layer.subtractive for layer in _normalizations(source)):
        converted = gsdn_from_gdn(source)
        if _mismatch(model, converted.state_dict()) is None:
            model.load_state_dict(converted.state_dict())
            return f"GSDN model from the GDN weights of {label} (two-stage initialization, section 5.3)"
    raise InitError(f"{label} does not fit this model: {problem}")


# -- CompressAI mbt2018 -------------------------------------------------------------------------


def _label(source: str | Path | dict) -> str:
    return "the state dict" if isinstance(source, dict) else str(source)


def read_compressai(source: str | Path | dict, label: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a CompressAI mbt2018 checkpoint (a file written by ``torch.save``, or the dict).

    Unwraps ``{"state_dict": ...}`` (CompressAI's training checkpoints), strips
    DataParallel's ``module.`` and renames the EntropyBottleneck keys of older
    CompressAI releases (``_matrices.0`` -> ``_matrix0``, as compressai/zoo/pretrained.py does).
    """
    label = label or _label(source)
    state = source
    if not isinstance(source, dict):
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or one holding more than tensors and containers
            first = str(e).splitlines()[0] if str(e) else ""
            raise InitError(f"{label}: not a torch state dict ({type(e).__name__}: {first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitError(f"{label}: not a state dict of tensors")
    state = {_rename(k): v for k, v in state.items()}
    missing = [k for k in _MBT2018_KEYS if k not in state]
    if missing:
        raise InitError(f"{label}: not a CompressAI mbt2018 (JointAutoregressiveHierarchicalPriors) state dict, no {missing[0]!r}")
    return state


def _rename(key: str) -> str:
    key = key.removeprefix("module.")
    old = re.fullmatch(r"entropy_bottleneck\._(matrices|biases|factors)\.(\d+)", key)
    return f"entropy_bottleneck._{_OLD_NAMES[old[1]]}{old[2]}" if old else key


def _gdn_values(stored: torch.Tensor, state: dict, reparam: str, minimum: float) -> torch.Tensor:
    """Actual beta or gamma of a CompressAI GDN, max(v, bound)^2 - pedestal (compressai/ops/parametrizers.py), in float64.

    ``reparam`` names the parametrizer, whose buffers (pedestal, bound) are used
    if the checkpoint has them, else CompressAI's defaults.
    """
    pedestal = state.get(f"{reparam}.pedestal", torch.tensor(_PEDESTAL)).double()
    bound = state.get(f"{reparam}.lower_bound.bound", torch.sqrt(minimum + pedestal)).double()
    return torch.maximum(stored, bound) ** 2 - pedestal


def _density_from(state: dict) -> FactorizedDensity:
    """CompressAI's EntropyBottleneck as our FactorizedDensity: the same Ballé (2018) cumulative, any depth."""
    depth = sum(1 for k in state if re.fullmatch(r"entropy_bottleneck\._matrix\d+", k))
    matrices = [state[f"entropy_bottleneck._matrix{i}"] for i in range(depth)]
    density = FactorizedDensity(matrices[0].shape[0], filters=tuple(m.shape[1] for m in matrices[:-1]))
    with torch.no_grad():
        for i in range(depth):
            density.matrices[i].copy_(matrices[i])
            density.biases[i].copy_(state[f"entropy_bottleneck._bias{i}"])
            if i < depth - 1:
                density.factors[i].copy_(state[f"entropy_bottleneck._factor{i}"])
    return density


def _bin_probabilities(density: FactorizedDensity, edges: torch.Tensor) -> torch.Tensor:
    """Probabilities of the bins between ``edges`` (channels, 1, K) and of the two tails: (channels, 1, K + 1)."""
    cdf = torch.sigmoid(density._logits_cumulative(edges))
    zero, one = torch.zeros_like(cdf[..., :1]), torch.ones_like(cdf[..., :1])
    return torch.diff(torch.cat([zero, cdf, one], -1), dim=-1)


def _fit_density(density: FactorizedDensity, source: FactorizedDensity) -> float:
    """Fit ``density`` to ``source`` in place; returns the KL divergence (bits per value) left.

    Minimizes KL(source || density) over bins of width FIT_BIN covering the
    support of every channel of ``source`` (tails beyond TAIL_MASS), plus the two
    tails: the extra rate of coding values drawn from ``source`` with ``density``.
    Starts, where the layer widths agree, from the source's first layers and its
    last one (dropping the layers ``density`` lacks).
    """
    channels, last = source.channels, len(density.matrices) - 1
    with torch.no_grad():
        pairs = [(i, i) for i in range(last)] + [(last, len(source.matrices) - 1)]
        if all(density.matrices[i].shape == source.matrices[j].shape for i, j in pairs):
            for i, j in pairs:  # start from the source's first layers and its last one
                density.matrices[i].copy_(source.matrices[j])
                density.biases[i].copy_(source.biases[j])
                if i < last:
                    density.factors[i].copy_(source.factors[j])
        k = torch.arange(-SEARCH_RANGE, SEARCH_RANGE + 1, dtype=torch.float32)
        cdf = torch.sigmoid(source._logits_cumulative(k.expand(channels, 1, -1))).squeeze(1)
        below = torch.cat([torch.zeros(channels, 1), cdf[:, :-1]], 1)
        inside = ((cdf > TAIL_MASS) & (below < 1 - TAIL_MASS)).any(0)  # as FactorizedDensity.update
        lo, hi = (float(k[inside].min()), float(k[inside].max())) if inside.any() else (0.0, 0.0)
        edges = torch.arange(lo - 1, hi + 1 + FIT_BIN / 2, FIT_BIN).expand(channels, 1, -1)
        p = _bin_probabilities(source, edges)
    optimizer = torch.optim.Adam(density.parameters(), lr=FIT_LR)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            q = _bin_probabilities(density, edges).clamp_min(1e-12)
            kl = (p * (p.clamp_min(1e-12).log() - q.log())).sum(-1).mean() / math.log(2)
            optimizer.zero_grad()
            kl.backward()
            optimizer.step()
    return float(kl.detach())


def load_compressai_mbt2018(model: CompressionModel, source: str | Path | dict, label: str | None = None) -> str:
    """Initialize a ``joint`` or ``grm`` model in place from CompressAI mbt2018 weights; returns a description.

    See the module docstring for what maps exactly and what is approximated.
    Raises InitError for other files, other sizes (N, M) or models without hyperprior.
    """
    label = label or _label(source)
    state = read_compressai(source, label)
    if not isinstance(model, GRM) or not model.hyperprior:
        raise InitError("mbt2018 weights initialize a joint or grm model (context + hyperprior)")
    n, m = state["g_a.0.weight"].shape[0], state["g_a.6.weight"].shape[0]
    if (n, m) != (model.N, model.M):
        raise InitError(f"{label} has N={n}, M={m}; the model has N={model.N}, M={model.M}")
    new = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise InitError(f"{label}: no {key!r}")
        if tuple(state[key].shape) != tuple(shape):
            raise InitError(f"{label}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        return state[key].double()

    def put(key: str, value: torch.Tensor) -> None:
        new[key] = value.to(new[key].dtype)

    def copy_layer(ours: str, theirs: str) -> None:
        for p in ("weight", "bias"):
            put(f"{ours}.{p}", take(f"{theirs}.{p}", new[f"{ours}.{p}"].shape))

    # Transforms: convolutions as they are, GDN values re-encoded in our parametrization.
    for t in ("g_a", "g_s"):
        for i in (0, 2, 4, 6):
            copy_layer(f"{t}.{i}", f"{t}.{i}")
        for i in (1, 3, 5):
            layer, p = getattr(model, t)[i], f"{t}.{i}"
            beta = _gdn_values(take(f"{p}.beta", (n,)), state, f"{p}.beta_reparam", layer.beta_min)
            gamma = _gdn_values(take(f"{p}.gamma", (n, n)), state, f"{p}.gamma_reparam", 0.0)
            put(f"{p}.beta", layer.beta_reparam.init(beta))
            put(f"{p}.gamma", layer.gamma_reparam.init(gamma))
            if layer.subtractive:
                put(f"{p}.nu", torch.zeros(n))
                put(f"{p}.tau", torch.zeros(n, n))
    for t in ("h_a", "h_s"):
        for i in (0, 2, 4):
            copy_layer(f"{t}.{i}", f"{t}.{i}")

    # Context model: the same 5x5 masked convolution.
    if not torch.equal(model.context.mask.cpu(), causal_mask(5, "A")):
        raise InitError("the model's context mask is not mbt2018's (5x5, raster type A)")
    copy_layer("context", "context_prediction")
    put("context.weight", new["context.weight"] * model.context.mask.cpu())

    # Entropy parameters, at the stage that sees the hyperprior. CompressAI's input is
    # (hyper, ctx) and its output (scales, means); ours (stage features..., previous
    # prediction) and (mean, log-sigma). Inputs mbt2018 does not have get zero weights.
    h = next(i for i, stage in enumerate(model.stages) if "hyperprior" in stage)
    kinds = [kind for stage in model.stages[: h + 1] for kind in stage]
    columns = {kind: slice(2 * m * j, 2 * m * (j + 1)) for j, kind in enumerate(kinds)}
    net = f"param_nets.{h}"
    first = torch.zeros_like(new[f"{net}.0.weight"], dtype=torch.float64)
    w0 = take("entropy_parameters.0.weight", (first.shape[0], 4 * m, 1, 1))
    first[:, columns["hyperprior"]], first[:, columns["context"]] = w0[:, : 2 * m], w0[:, 2 * m :]
    put(f"{net}.0.weight", first)
    put(f"{net}.0.bias", take("entropy_parameters.0.bias", new[f"{net}.0.bias"].shape))
    copy_layer(f"{net}.2", "entropy_parameters.2")
    scale_w, mean_w = take("entropy_parameters.4.weight", new[f"{net}.4.weight"].shape).chunk(2)
    scale_b, mean_b = take("entropy_parameters.4.bias", new[f"{net}.4.bias"].shape).chunk(2)
    s0 = SCALE_TANGENT
    put(f"{net}.4.weight", torch.cat([mean_w, scale_w / s0]))
    put(f"{net}.4.bias", torch.cat([mean_b, scale_b / s0 + math.log(s0) - 1]))
    for i in range(h):  # earlier stages predict (0, 0), so that stage h predicts what mbt2018 does
        new[f"param_nets.{i}.4.weight"].zero_()
        new[f"param_nets.{i}.4.bias"].zero_()

    # Density of z: copied if it has our depth, else fitted.
    try:
        density = _density_from(state)
    except (KeyError, RuntimeError) as e:  # a missing or misshapen parameter
        raise InitError(f"{label}: unusable entropy bottleneck ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if density.channels != n:
        raise InitError(f"{label}: the entropy bottleneck has {density.channels} channels, expected N={n}")
    ours = tuple(x.shape[1] for x in model.density.matrices[:-1])
    if tuple(x.shape[1] for x in density.matrices[:-1]) == ours:
        how = "copied"
    else:
        fitted = FactorizedDensity(n, filters=ours)
        how = f"fitted ({_fit_density(fitted, density):.1e} bits/value KL)"
        density = fitted
    for key, value in density.named_parameters():
        put(f"density.{key}", value.detach())

    model.load_state_dict(new)
    return f"CompressAI mbt2018 weights of {label} (N={n}, M={m}; log-scales linearized at sigma={s0:g}, z density {how})"


def from_compressai_mbt2018(source: str | Path | dict, name: str = "joint", preset: str | None = None) -> CompressionModel:
    """A ``joint`` or ``grm`` model initialized from CompressAI mbt2018 weights, with tabulated coding tables.

    The size comes from ``preset`` (an error if the weights have another), or
    else from the weights' shapes. The model carries a ``config`` as models from
    ``registry.load_model`` do.
    """
    state = read_compressai(source)
    n, m = state["g_a.0.weight"].shape[0], state["g_a.6.weight"].shape[0]
    if preset is None:
        preset = registry.preset_of(n, m)
    model = registry.build(name, preset) if preset else registry.MODELS[name](N=n, M=m)
    load_compressai_mbt2018(model, state, _label(source))
    model.update()
    model.config = {"name": name, "N": model.N, "M": model.M, "flags": {}, **({"preset": preset} if preset else {})}
    return model.eval()


# -- one entry point ------------------------------------------------------------------------------


def initialize(model: CompressionModel, source: str | Path | CompressionModel) -> str:
    """Initialize ``model`` in place from ``source``; returns a one-line description of what was done.

    ``source`` is a refcodec model, model id (``name/preset/qN``) or weights file
    (``.safetensors``) of the same architecture (copied as is) or of its GDN
    version when ``model`` uses GSDN (two-stage initialization, section 5.3); or a
    file written by ``torch.save`` holding a CompressAI mbt2018 state dict (see
    :func:`load_compressai_mbt2018`). Raises a RefcodecError otherwise.
    """
    if isinstance(source, CompressionModel):
        return _load_refcodec(model, source, getattr(source, "id", "the given model"))
    path = Path(source)
    if path.is_file() and path.suffix != ".safetensors":
        return load_compressai_mbt2018(model, path, str(path))
    if path.suffix != ".safetensors" and str(source).count("/") != 2:
        raise InitError(f"{source}: no such file, and not a model id (name/preset/qN)")
    return _load_refcodec(model, registry.load_model(str(source)), str(source))
