"""Shared fixtures: small models saved as weights files, and test images made on the fly."""

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refcodec.models import registry


def save_tiny(path, name="grm", seed=0, scale=60, **flags):
    """Save a small random model as a weights file (latents scaled up so coding is not trivial).

    With ``levels``, a variable-rate model whose gains spread over the qualities like a trained one's.
    """
    torch.manual_seed(seed)
    model = registry.MODELS[name](N=16, M=24, **flags)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(scale)
        if model.levels:
            slope = [0.35 * (q - 3) for q in range(model.levels)]
            model.y_gain.initialize(slope)
            model.z_gain.initialize([0.0] * model.levels, [-s for s in slope])
    quality = None if model.levels else 3
    config = {"name": name, "preset": "test", "N": 16, "M": 24, "flags": flags, "quality": quality,
              "id": registry.model_id(name, "test", quality)}  # fmt: skip
    registry.save(model, path, config)
    return path


@contextmanager
def torch_threads(count: int):
    """Run with ``count`` torch threads, then restore the number."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("weights") / "grm-test.safetensors")


@pytest.fixture(scope="session")
def tiny_model(tiny_weights):
    return registry.load_model(str(tiny_weights))


def natural_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random image with some texture (compressible, unlike white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))


def file_objective(image, data: bytes, model) -> float:
    """R + lambda * 255^2 * MSE (eq. 1) of a real file and its decoded image, as the effort levels minimize it."""
    from refcodec import codec, refine

    bpp = 8 * len(data) / (image.width * image.height)
    return bpp + refine.model_lambda(model) * 255**2 * 10 ** (-codec.psnr(image, codec.decompress(data, model)) / 10)


def load_script(name: str):
    """A script of scripts/ as a module (the folder is not a package)."""
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
