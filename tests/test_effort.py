"""Encoder effort: refined latents, the same format and decoder, never worse than the default encoder."""

import dataclasses
import json

import pytest
import torch

from refcodec import codec, ratecontrol, refine
from refcodec.bitstream import read_header
from refcodec.cli import main as cli
from refcodec.models import registry

from conftest import natural_image, save_tiny, torch_threads


@pytest.fixture(autouse=True)
def few_steps(monkeypatch):
    monkeypatch.setitem(refine.EFFORTS, "slow", 12)
    monkeypatch.setattr(refine, "CHECK_EVERY", 4)


@pytest.fixture(scope="module")
def model():
    return registry.load_model("grm/small/q3")


def _file_objective(image, data, model) -> float:
    """R + lambda * 255^2 * MSE of a real file and its decoded image."""
    bpp = 8 * len(data) / (image.width * image.height)
    return bpp + refine.model_lambda(model) * 255**2 * 10 ** (-codec.psnr(image, codec.decompress(data, model)) / 10)


@pytest.mark.parametrize("seed", [0, 1])
def test_slow_is_never_worse_than_default(model, seed):
    image = natural_image(160, 96, seed=seed)
    x = codec.padded_tensor(image)
    refined = refine.refine(model, x, 12, image.height, image.width)
    assert refined.after["loss"] <= refined.before["loss"]
    y, z = model.latents(x)
    with torch.no_grad():
        unrefined = float(refine.objective(model, x, y, z, refine.model_lambda(model), torch.round, 96, 160)[0])
    assert refined.before["loss"] == pytest.approx(unrefined)
    default, slow = codec.compress(image, model), codec.compress(image, model, effort="slow")
    assert _file_objective(image, slow, model) <= _file_objective(image, default, model) * 1.001  # the file matches the estimate


def test_slow_files_are_normal_files_decoded_exactly(model):
    image = natural_image(128, 96, seed=5)
    data = codec.compress(image, model, effort="slow")
    header = read_header(data)
    assert header == dataclasses.replace(read_header(codec.compress(image, model)), stream_lengths=header.stream_lengths)
    with torch_threads(1):
        one = codec.decompress(data, model).tobytes()
    with torch_threads(2):
        assert codec.decompress(data, model).tobytes() == one
    assert codec.decompress(data).tobytes() == one  # the shipped model named in the file, loaded afresh


def test_refinement_leaves_the_model_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    codec.compress(natural_image(64, 64, seed=2), model, effort="slow")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads and model.weights_hash() == registry.load_model("grm/small/q3").weights_hash()


def test_effort_composes_with_rate_control_and_variable_rate(tmp_path):
    vr = registry.build("grm", "small", levels=9)
    from refcodec.models import convert

    convert.initialize(vr, "grm/small/q3")
    path = tmp_path / "vr.safetensors"
    registry.save(vr, path, {"name": "grm", "preset": "small", **registry.PRESETS["small"], "flags": {"levels": 9},
                             "quality": None, "id": "grm/small/vr"})  # fmt: skip
    vr = registry.load_model(str(path), 2.5)
    image = natural_image(128, 96, seed=7)
    data = codec.compress(image, vr, effort="slow")
    assert read_header(data).quality == 2.5
    target = 8 * len(codec.compress(image, vr, quality=4)) / (128 * 96)
    choice = ratecontrol.search(image, vr, target_bpp=target, effort="slow")
    assert choice.bpp <= target and choice.quality >= 4  # refined files are smaller: a higher quality fits
    assert codec.psnr(image, codec.decompress(choice.data, vr)) == choice.psnr


def test_effort_from_the_command_line(tmp_path, capsys):
    src = tmp_path / "a.png"
    natural_image(96, 64, seed=3).save(src)
    assert cli(["compress", str(src), "-o", str(tmp_path / "a.rfc"), "--effort", "slow", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["effort"] == "slow" and record["refinement_steps"] == 12
    assert cli(["decompress", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "a.png.out.png")]) == 0
    weights = save_tiny(tmp_path / "hp.safetensors", name="hyperprior")
    assert cli(["compress", str(src), "-o", str(tmp_path / "b.rfc"), "--model", str(weights), "--effort", "slow"]) == 1
    err = capsys.readouterr().err
    assert "no latent refinement" in err and err.count("\n") == 1


def test_images_beyond_4k_are_refused_in_one_line(model, monkeypatch):
    monkeypatch.setattr(refine, "MAX_PIXELS", 64 * 64)
    with pytest.raises(refine.EffortError, match="up to 4096 pixels .* this one has 6144: use the default effort"):
        codec.compress(natural_image(96, 64), model, effort="slow")
