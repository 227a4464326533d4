"""Shared fixtures: small models saved as weights files, and test images made on the fly."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refcodec.models import registry


def save_tiny(path, name="grm", seed=0, **flags):
    """Save a small random model as a weights file (latents scaled up so coding is not trivial)."""
    torch.manual_seed(seed)
    model = registry.MODELS[name](N=16, M=24, **flags)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(60)
    config = {"name": name, "preset": "test", "N": 16, "M": 24, "flags": flags, "quality": 3, "id": f"{name}/test/q3"}
    registry.save(model, path, config)
    return path


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


def load_script(name: str):
    """A script of scripts/ as a module (the folder is not a package)."""
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
