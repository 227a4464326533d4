"""Encoder effort: refined latents, whole or in tiles, the same format and decoder, never worse than the default encoder."""

import dataclasses
import json

import pytest
import torch
from pytorch_msssim import ms_ssim

from refcodec import codec, ratecontrol, refine
from refcodec.bitstream import read_header
from refcodec.cli import main as cli
from refcodec.models import registry

from conftest import file_objective, natural_image, save_tiny, torch_threads


@pytest.fixture(autouse=True)
def few_steps(monkeypatch):
    monkeypatch.setitem(refine.EFFORTS, "fast", 4)
    monkeypatch.setitem(refine.EFFORTS, "slow", 12)
    monkeypatch.setattr(refine, "CHECK_EVERY", 4)


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Tiles of 64 pixels with a halo of 64 on every image: the tiled path on small images."""
    monkeypatch.setattr(refine, "WHOLE_PIXELS", 0)
    monkeypatch.setattr(refine, "TILE", 64)
    monkeypatch.setattr(refine, "HALO", 64)


@pytest.fixture(scope="module")
def model():
    return registry.load_model("grm/small/vr", 3)


@pytest.mark.parametrize("effort,seed", [("fast", 0), ("slow", 0), ("slow", 1)])
def test_refinement_is_never_worse_than_default(model, effort, seed):
    image = natural_image(160, 96, seed=seed)
    x = codec.padded_tensor(image)
    refined = refine.refine(model, x, refine.EFFORTS[effort], image.height, image.width)
    [tile] = refined.tiles
    assert tile["after"]["loss"] <= tile["before"]["loss"] and refined.changed
    y, z = model.latents(x)
    with torch.no_grad():
        unrefined = float(refine.objective(model, x, y, z, refine.model_lambda(model), torch.round, 96, 160)[0])
    assert tile["before"]["loss"] == pytest.approx(unrefined)
    default, refined_file = codec.compress(image, model), codec.compress(image, model, effort=effort)
    assert file_objective(image, refined_file, model) <= file_objective(image, default, model) + 1e-9


@pytest.mark.parametrize("effort", ["fast", "slow"])
def test_files_of_every_effort_are_normal_files_decoded_exactly(model, effort):
    image = natural_image(128, 96, seed=5)
    data = codec.compress(image, model, effort=effort)
    header = read_header(data)
    assert header == dataclasses.replace(read_header(codec.compress(image, model)), stream_lengths=header.stream_lengths)
    with torch_threads(1):
        one = codec.decompress(data, model).tobytes()
    with torch_threads(2):
        assert codec.decompress(data, model).tobytes() == one
    assert codec.decompress(data).tobytes() == one  # the shipped model named in the file, loaded afresh


def test_tiled_refinement(model, tiny_tiles):
    image = natural_image(160, 96, seed=4)  # padded to 192 x 128: 3 x 2 tiles of 64 pixels
    x = codec.padded_tensor(image)
    refined = refine.refine(model, x, 4, image.height, image.width)
    assert [t["core"] for t in refined.tiles] == [[r, r + 64, c, c + 64] for r in (0, 64) for c in (0, 64, 128)]
    assert all(t["after"]["loss"] <= t["before"]["loss"] for t in refined.tiles) and refined.changed
    y, z = model.latents(x)
    assert refined.y.shape == y.shape and refined.z.shape == z.shape and not torch.equal(refined.y, y)
    data, default = codec.compress(image, model, effort="fast"), codec.compress(image, model)
    assert file_objective(image, data, model) <= file_objective(image, default, model) + 1e-9
    with torch_threads(1):
        one = codec.decompress(data, model).tobytes()
    with torch_threads(2):
        assert codec.decompress(data, model).tobytes() == one


def test_a_worse_refinement_falls_back_to_the_default_file(model, monkeypatch):
    image = natural_image(96, 64, seed=6)
    worse = lambda net, x, steps, *_: refine.Refined(net.latents(x)[0] + 3, net.latents(x)[1], steps, [{"best_step": 1}])  # noqa: E731
    monkeypatch.setattr(refine, "refine", worse)
    assert codec.compress(image, model, effort="slow") == codec.compress(image, model)


def test_refinement_leaves_the_model_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    codec.compress(natural_image(64, 64, seed=2), model, effort="slow")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads and model.weights_hash() == registry.load_model("grm/small/vr").weights_hash()


def ms_ssim_objective(image, data: bytes, model) -> float:
    """R + lambda * (1 - MS-SSIM) of a real file and its decoded image, computed apart from refine's own."""
    bpp = 8 * len(data) / (image.width * image.height)
    x, x_hat = (codec.image_to_tensor(im).double() for im in (image, codec.decompress(data, model)))
    return bpp + refine.model_lambda(model) * (1 - float(ms_ssim(x_hat, x, data_range=1.0)))


def test_an_ms_ssim_model_refines_for_ms_ssim(tmp_path, capsys):
    """A model trained for MS-SSIM refines for R + lambda * (1 - MS-SSIM) at its own lambdas, never worse
    than its default file in that objective; images too small for MS-SSIM's five scales get one line."""
    weights = registry.load_model("grm/small/vr")
    ms = tmp_path / "ms.safetensors"
    registry.save(weights, ms, {**weights.config, "metric": "ms-ssim", "id": "grm/small/vr-ms-ssim"})
    model = registry.load_model(str(ms), 3)
    assert refine.model_lambda(model) == pytest.approx(registry.LAMBDAS_MS_SSIM[3])
    image = natural_image(192, 176, seed=9)
    x = codec.padded_tensor(image)
    refined = refine.refine(model, x, 12, image.height, image.width)
    [tile] = refined.tiles
    assert tile["after"]["loss"] < tile["before"]["loss"] and 0 < tile["after"]["distortion"] < 0.1  # 1 - MS-SSIM
    default, slow = codec.compress(image, model), codec.compress(image, model, effort="slow")
    assert ms_ssim_objective(image, slow, model) <= ms_ssim_objective(image, default, model) + 1e-9
    with torch_threads(1):
        one = codec.decompress(slow, model).tobytes()
    with torch_threads(2):
        assert codec.decompress(slow, model).tobytes() == one
    src = tmp_path / "small.png"
    natural_image(192, 160, seed=1).save(src)
    assert cli(["compress", str(src), "-o", str(tmp_path / "s.rfc"), "--model", str(ms), "--effort", "fast"]) == 1
    err = capsys.readouterr().err
    assert "larger than 160 px on each side" in err and err.count("\n") == 1 and not (tmp_path / "s.rfc").exists()


def test_effort_composes_with_rate_control_and_variable_rate():
    vr = registry.load_model("grm/small/vr", 2.5)
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
    assert cli(["compress", str(src), "-o", str(tmp_path / "f.rfc"), "--effort", "fast", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["refinement_steps"] == 4
    assert cli(["decompress", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "a.png.out.png")]) == 0
    weights = save_tiny(tmp_path / "hp.safetensors", name="hyperprior")
    assert cli(["compress", str(src), "-o", str(tmp_path / "b.rfc"), "--model", str(weights), "--effort", "slow"]) == 1
    err = capsys.readouterr().err
    assert "no latent refinement" in err and err.count("\n") == 1


def test_compare_measures_each_effort(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    natural_image(96, 64, seed=8).save(folder / "a.png")
    out = tmp_path / "out"
    assert cli(["compare", str(folder), "-o", str(out), "--codecs", "webp", "--qualities", "20,60,90", "--anchor", "webp",
                "--effort", "default", "fast", "--qualities", "refcodec=1,4"]) == 0  # fmt: skip
    fast = json.loads((out / "refcodec-fast.json").read_text())
    default = json.loads((out / "refcodec-default.json").read_text())
    assert fast["name"] == "refcodec-grm-fast" and "fast effort" in fast["description"] and len(fast["results"]["bpp"]) == 2
    assert set(json.loads((out / "bdrate.json").read_text())["anchors"]["WebP"]) == {"refcodec-grm", "refcodec-grm-fast"}
    lmbda = [refine.model_lambda(registry.load_model("grm", q)) for q in (1, 4)]
    objective = lambda r, i: r["bpp"][i] + lmbda[i] * 255**2 * 10 ** (-r["psnr-rgb"][i] / 10)  # noqa: E731
    assert all(objective(fast["results"], i) <= objective(default["results"], i) + 1e-9 for i in (0, 1))
    assert "refcodec-grm-fast" in capsys.readouterr().out
