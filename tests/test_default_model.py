"""The shipped default model: trained (not random), loadable by name, and its files match its rate estimate."""

import json
import os
import subprocess
import sys

import pytest
import torch
from pytorch_msssim import ms_ssim

import refcodec
from refcodec import codec
from refcodec.bitstream import read_header
from refcodec.models import registry
from refcodec.models.registry import DEFAULT_MODEL, DEFAULT_PRESETS, DEFAULT_QUALITY, VARIABLE, WEIGHTS_DIR
from refcodec.sample import sample_image


def test_default_model_is_shipped_with_a_model_card():
    model = refcodec.load_model()
    preset = registry.default_preset()
    assert preset == next(p for p in DEFAULT_PRESETS if f"{DEFAULT_MODEL}/{p}/{VARIABLE}" in registry.shipped_ids())
    assert model.id == f"{DEFAULT_MODEL}/{preset}/{VARIABLE}" and model.quality == DEFAULT_QUALITY
    stem = f"{DEFAULT_MODEL}-{preset}-{VARIABLE}"
    assert (WEIGHTS_DIR / f"{stem}.md").is_file()
    card = json.loads((WEIGHTS_DIR / f"{stem}.json").read_text())
    assert card["training"]["steps"] > 0 and card["evaluation"]["count"] == 24
    assert [p["quality"] for p in card["evaluation"]["qualities"]] == list(range(model.levels))


def test_default_preset_is_the_wide_model_where_one_is_shipped_for_the_objective(tmp_path, monkeypatch):
    """A name without --preset codes with grm/medium/vr; MS-SSIM with the small model until a wide one ships."""
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    for stem in ("grm-small-vr", "grm-small-vr-ms-ssim", "grm-medium-vr"):
        (tmp_path / f"{stem}.safetensors").touch()
    assert registry.default_preset() == "medium" and registry.resolve_id("grm", 3) == "grm/medium/vr"
    assert registry.default_preset("grm", "ms-ssim") == "small"
    assert registry.resolve_id("grm", 3, "small") == "grm/small/vr"  # the fast model, asked for
    (tmp_path / "grm-medium-vr.safetensors").unlink()
    assert registry.default_preset() == "small" and registry.resolve_id("grm", 3) == "grm/small/vr"
    assert registry.default_preset("joint") == "small"  # no variable-rate model: its fixed-rate ones are small


def test_default_model_round_trip_is_a_real_codec():
    """A trained model reconstructs the sample well at a low rate; random weights would not."""
    image = sample_image()
    data = refcodec.compress(image)
    back = refcodec.decompress(data)
    bpp = 8 * len(data) / (image.width * image.height)
    assert back.size == image.size
    assert bpp < 1.0 and codec.psnr(image, back) > 24


def test_file_size_matches_the_estimated_rate_within_one_percent():
    model = refcodec.load_model()
    x = codec.padded_tensor(sample_image())
    with torch.no_grad():
        lik = model(x)["likelihoods"]
    estimate = float(-torch.log2(lik["y"][-1]).sum() - torch.log2(lik["z"]).sum())
    actual = 8 * sum(len(s) for s in model.compress(x))
    assert abs(actual / estimate - 1) < 0.01


def test_demo_command():
    result = subprocess.run([sys.executable, "-m", "refcodec.cli", "demo", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["bpp"] > 0 and record["psnr"] > 24
    assert {p["kernel"] for p in record["synthesis_kernels"]} <= {"int8", "float32", "float64"}  # what the probe chose
    forced = subprocess.run([sys.executable, "-m", "refcodec.cli", "demo"], capture_output=True, text=True, timeout=300,
                            env=os.environ | {"REFCODEC_SYNTHESIS_KERNEL": "float32"})  # fmt: skip
    assert forced.stdout.rstrip().endswith("(exact synthesis: float32)")


SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def test_every_shipped_model_has_a_card_and_codes(tmp_path):
    """Each weights file: a model card with Kodak numbers, loadable by its id, usable by `compress --quality`
    (a variable-rate model at both ends of its range and at a fractional quality), and chosen by
    `--metric` (an MS-SSIM model: its quality rises in MS-SSIM)."""
    from refcodec import cli

    sample_image().save(tmp_path / "sample.png")
    x = codec.image_to_tensor(sample_image())
    points = {}
    for stem in SHIPPED:
        card = json.loads((WEIGHTS_DIR / f"{stem}.json").read_text())
        assert (WEIGHTS_DIR / f"{stem}.md").is_file() and card["evaluation"]["count"] == 24
        name, preset, variant = card["id"].split("/")
        rate, _, metric = variant.partition("-")
        assert refcodec.load_model(card["id"]).id == card["id"]
        for quality in [0.0, 2.5, 8.0] if rate == VARIABLE else [float(rate[1:])]:
            out = tmp_path / f"{stem}-{quality:g}.rfc"
            args = ["--model", name, "--preset", preset, "--quality", f"{quality:g}", "--metric", metric or "mse"]
            assert cli.main(["compress", str(tmp_path / "sample.png"), "-o", str(out), *args]) == 0
            assert read_header(out.read_bytes()).model == card["id"]
            assert cli.main(["decompress", str(out), "-o", str(tmp_path / f"{stem}-{quality:g}.png")]) == 0
            back = refcodec.decompress(out.read_bytes())
            score = float(ms_ssim(codec.image_to_tensor(back), x, data_range=1.0)) if metric else codec.psnr(sample_image(), back)
            points.setdefault(card["id"], []).append((quality, out.stat().st_size, score))
    for curve in points.values():  # a higher quality spends more bits for a better image, in the model's metric
        curve.sort()
        assert all(a[1] < b[1] and a[2] < b[2] for a, b in zip(curve, curve[1:]))


def test_shipped_ids_name_the_shipped_files_and_the_not_found_error_lists_them():
    from refcodec.models import registry

    ids = registry.shipped_ids()
    assert ids == sorted(ids) and "grm/small/vr" in ids
    assert sorted(registry.weights_path(i).stem for i in ids) == SHIPPED
    with pytest.raises(registry.ModelNotFoundError, match="grm/small/q9") as error:
        registry.load_model("grm/small/q9")
    assert ", ".join(ids) in str(error.value)
    with pytest.raises(registry.ModelNotFoundError, match="grm/small/q3 was retired after refcodec 0.2.0"):
        registry.load_model("grm/small/q3")  # the per-quality models left the package when grm/small/vr shipped
