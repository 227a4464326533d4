"""Model zoo: names, size presets, quality levels and shipped weights.

A model is identified by ``name/preset/q<quality>`` (for example ``grm/small/q3``), or
``name/preset/vr`` for a variable-rate model that serves every quality from one file (the
shipped ``grm/small/vr``); that id and a hash of the weights go into every file, so a decoder
can find the same weights and refuse others. Models that left the package are listed in
``weights/retired.json``, and weights that a new ship of the same id replaced in ``weights/replaced.json``,
each with the release that decodes their files. Weights are safetensors files whose metadata
holds the architecture (``config``) so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..errors import RefcodecError
from .base import CompressionModel
from .baselines import FactorizedPrior, MeanScaleHyperprior
from .grm import GRM
from .presets import DEFAULT_MODEL, DEFAULT_PRESETS, DEFAULT_QUALITY, LAMBDAS, LAMBDAS_MS_SSIM, PRESETS, VARIABLE, preset_of  # noqa: F401

MODELS = {
    "factorized": FactorizedPrior,
    "hyperprior": MeanScaleHyperprior,
    "joint": partial(GRM, reference=False, confidence=False, gsdn=False, progressive=False),
    "grm": GRM,
}

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ModelNotFoundError(RefcodecError):
    """No weights for the requested model id."""


WEIGHTS_IN_GIT = "src/refcodec/models/weights"  # WEIGHTS_DIR in the repository, where a refused file's line points git
RETIRED = "retired.json"  # in WEIGHTS_DIR: {model id: {"weights_hash": hex, "release": last release that shipped it, "commit": its last git commit}}


def retired() -> dict[str, dict]:
    """The model ids that left the package, with the weights hash of their last weights and the release that decodes them."""
    path = WEIGHTS_DIR / RETIRED
    return json.loads(path.read_text()) if path.is_file() else {}


def retire(ids: list[str], release: str, commit: str) -> None:
    """Remove shipped models (weights, card) from the package, recording them in ``retired.json`` so
    that their files are refused with a line naming the release, and the git commit, that decode them."""
    record = retired()
    for model_id in ids:
        path = weights_path(model_id)
        record[model_id] = {"weights_hash": load_model(model_id).weights_hash().hex(), "release": release, "commit": commit}
        for suffix in (".safetensors", ".json", ".md"):
            path.with_suffix(suffix).unlink(missing_ok=True)
    (WEIGHTS_DIR / RETIRED).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


REPLACED = "replaced.json"  # in WEIGHTS_DIR: {weights hash: {"model": id, "release": last release that shipped them, "commit": its last git commit}}


def replaced() -> dict[str, dict]:
    """Weights that a later ship of the same model id replaced, by weights hash, with the release that decodes their files."""
    path = WEIGHTS_DIR / REPLACED
    return json.loads(path.read_text()) if path.is_file() else {}


def record_replaced(model_id: str, weights_hash: bytes, release: str, commit: str) -> None:
    """Record that the shipped weights ``weights_hash`` of ``model_id`` were replaced after ``release``, whose
    last git commit is ``commit``, so that their files are refused with a line naming both instead of a bare
    hash mismatch."""
    record = replaced() | {weights_hash.hex(): {"model": model_id, "release": release, "commit": commit}}
    (WEIGHTS_DIR / REPLACED).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def retired_reason(model_id: str, weights_hash: bytes | None = None) -> str | None:
    """Why a file's model is not available: the model was retired, or its weights ``weights_hash`` were
    replaced by a later ship. Names the release that decodes its files, and the git commit that holds it and
    its weights file; None if neither."""
    entry = retired().get(model_id)
    if entry is not None:
        what = f"{model_id} was retired"
    else:
        entry = replaced().get(weights_hash.hex()) if weights_hash is not None else None
        if entry is None or entry["model"] != model_id:
            return None
        what = f"these weights of {model_id} were replaced"
    release, commit = entry["release"], entry["commit"][:12]
    file = f"{WEIGHTS_IN_GIT}/{weights_path(model_id).name}"
    return (f"{what} after refcodec {release}; decode its files with refcodec {release} (git checkout {commit}), "
            f"or with --model and its weights (git show {commit}:{file})")  # fmt: skip


def build(name: str, preset: str, **flags) -> CompressionModel:
    """A freshly initialized model of the registry."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return MODELS[name](**PRESETS[preset], **flags)


def model_id(name: str, preset: str, quality: int | None, metric: str = "mse") -> str:
    """``name/preset/qN``, or ``name/preset/vr`` for a variable-rate model (quality None); models
    trained for MS-SSIM get ``-ms-ssim`` appended."""
    return f"{name}/{preset}/{VARIABLE if quality is None else f'q{quality}'}" + ("" if metric == "mse" else f"-{metric}")


def weights_path(model_ref: str) -> Path:
    """File of a shipped model id, or the path itself for a user's safetensors file."""
    path = Path(model_ref)
    if path.suffix == ".safetensors":
        return path
    parts = model_ref.split("/")
    if len(parts) != 3:
        raise ModelNotFoundError(f"bad model id {model_ref!r} (expected name/preset/qN or a .safetensors file)")
    return WEIGHTS_DIR / f"{parts[0]}-{parts[1]}-{parts[2]}.safetensors"


def shipped_ids() -> list[str]:
    """The ids of every shipped model (``name/preset/qN``), sorted: the inverse of :func:`weights_path`."""
    return sorted("/".join(p.stem.split("-", 2)) for p in WEIGHTS_DIR.glob("*.safetensors"))


def save(model: CompressionModel, path: str | Path, config: dict, dtype: torch.dtype = torch.float32) -> None:
    """Write weights with the config that rebuilds the model, after tabulating the coding tables.

    Shipped weights use float16 (half the size); they load as float32, and the
    weights hash is taken after loading, so it is the same in every process.
    """
    model.update()
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"config": json.dumps(config, sort_keys=True)})
    os.replace(tmp, path)


def read_config(path: str | Path) -> dict:
    """The config stored with a weights file (architecture, training record), without loading the tensors."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["config"])


def default_preset(name: str = DEFAULT_MODEL, metric: str = "mse") -> str:
    """The preset a model name codes with when none is given: the first of ``DEFAULT_PRESETS`` (the wide
    model first) with a shipped variable-rate model of ``name`` and ``metric``, else the last (the small one)."""
    shipped = [p for p in DEFAULT_PRESETS if weights_path(model_id(name, p, None, metric)).is_file()]
    return (shipped or DEFAULT_PRESETS[-1:])[0]


def resolve_id(name: str, quality: float, preset: str | None = None, metric: str = "mse") -> str:
    """The model id (or path) that serves ``name`` at ``quality``: the shipped variable-rate model
    of that name and preset (default: :func:`default_preset`) if there is one, else the fixed-rate model of
    that integer quality."""
    if "/" in name or name.endswith(".safetensors"):
        return name
    preset = preset or default_preset(name, metric)
    variable = model_id(name, preset, None, metric)
    if weights_path(variable).is_file():
        return variable
    if float(quality) != int(quality):
        shipped = ", ".join(shipped_ids()) or "none"
        raise ModelNotFoundError(f"no variable-rate {name}/{preset} model for fractional quality {quality:g} (shipped: {shipped})")
    return model_id(name, preset, int(quality), metric)


def load_model(name: str = DEFAULT_MODEL, quality: float = DEFAULT_QUALITY, preset: str | None = None, metric: str = "mse") -> CompressionModel:
    """Load shipped weights by name (or a model id, or a .safetensors path), ready for coding.

    A variable-rate model is set to code at ``quality`` (any float in its range); a fixed-rate
    model found by name is the one of that quality; ``metric`` picks a name's model trained for
    ``mse`` or ``ms-ssim``; ``preset`` None is :func:`default_preset`'s. The returned model carries ``model.id``
    (stored in bitstreams) and ``model.config``.
    """
    ref = resolve_id(name, quality, preset, metric)
    path = weights_path(ref)
    if not path.is_file():
        if retired_reason(ref):
            raise ModelNotFoundError(retired_reason(ref))
        shipped = ", ".join(shipped_ids()) or "none"
        raise ModelNotFoundError(f"no weights for {ref!r} (shipped: {shipped})")
    try:
        config = read_config(path)
        model = MODELS[config["name"]](N=config["N"], M=config["M"], **config.get("flags", {}))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
    except Exception as e:  # damaged file, foreign file, or weights of another architecture
        raise ModelNotFoundError(f"{path}: not usable refcodec weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model.eval()
    model.id = config.get("id", ref)
    model.config = config
    if model.levels:
        try:
            model.use_quality(quality)
        except ValueError as e:
            raise ModelNotFoundError(f"{model.id}: {e}") from None
    return model
