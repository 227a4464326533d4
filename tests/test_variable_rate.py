"""One model for every rate: gain units, exact qualities in files, initialization, training and rate control."""

import csv
import json
import math
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from refcodec import api, codec, metrics, ratecontrol
from refcodec.bitstream import BitstreamError, read_header, unpack
from refcodec.cli import main as cli
from refcodec.fixedpoint import WEIGHT_BITS
from refcodec.layers.gain import GainUnit, interpolate_log
from refcodec.models import convert, registry
from refcodec.models.base import CompressionModel
from refcodec.train import trainer

from conftest import load_script, natural_image, save_tiny, torch_threads


@pytest.fixture(scope="module")
def variable_weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("weights") / "grm-test-vr.safetensors", scale=20, levels=9)


@pytest.fixture(scope="module")
def image():
    return natural_image(128, 96, seed=3)


def test_exact_gains_are_on_the_grid_and_interpolate_exponentially():
    unit = GainUnit(4, 3)
    with torch.no_grad():
        unit.log_gain.copy_(torch.tensor([[0.0, 0.5, -1.0, 2.0], [1.0, 0.5, 0.0, 2.5], [2.0, 1.5, 1.0, 3.0]]))
    gain, _ = unit.exact(1.0)
    assert gain.dtype == torch.float64 and gain.shape == (1, 4, 1, 1)
    assert torch.equal(gain * 2**WEIGHT_BITS, torch.round(gain * 2**WEIGHT_BITS))
    assert gain.flatten().tolist() == pytest.approx([math.e, math.exp(0.5), 1.0, math.exp(2.5)], abs=2**-WEIGHT_BITS)
    half = unit.exact(0.5)[0].flatten()  # the geometric mean of levels 0 and 1 (Cui et al., eq. 6)
    assert half.tolist() == pytest.approx([math.exp(0.5), math.exp(0.5), math.exp(-0.5), math.exp(2.25)], abs=2**-WEIGHT_BITS)
    # training's float gains agree with the exact ones
    train_gain = unit(torch.tensor([0.5, 1.75]))[0].detach().double().view(2, 4)
    assert torch.allclose(train_gain[0], half, atol=2**-WEIGHT_BITS)
    assert torch.allclose(train_gain[1], unit.exact(1.75)[0].flatten(), atol=2**-WEIGHT_BITS)


def test_lambda_interpolates_log_linearly_between_levels():
    lambdas = [registry.LAMBDAS[q] for q in sorted(registry.LAMBDAS)]
    at = interpolate_log(lambdas, torch.tensor([0.0, 1.0, 8.0, 2.5], dtype=torch.float64))
    assert at[:3].tolist() == pytest.approx([0.0009, 0.0018, 0.18])
    assert float(at[3]) == pytest.approx(math.sqrt(0.0035 * 0.0067))


@pytest.mark.parametrize("quality", [0.0, 2.5, 1 / 3, 8.0])
def test_fractional_quality_round_trip(variable_weights, image, quality):
    model = registry.load_model(str(variable_weights), quality)
    data = codec.compress(image, model)
    header = read_header(data)
    assert header.quality == quality  # exactly, as a float64
    assert header.model == "grm/test/vr"
    encoded, y_hat = codec.encode_rgb(image, "RGB", model, quality)
    assert encoded == data
    expected = codec.tensor_to_image(model.synthesize(y_hat)[:, :, :96, :128])
    fresh = registry.load_model(str(variable_weights))  # at the default quality: the file sets its own
    decoded = codec.decompress(data, fresh)
    assert decoded.tobytes() == expected.tobytes()
    assert fresh.quality == 3.0  # restored after decoding


def test_rate_grows_with_quality(variable_weights, image):
    model = registry.load_model(str(variable_weights))
    sizes = [len(codec.compress(image, model, quality=q)) for q in (0, 2, 4, 6, 8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_same_bits_on_one_and_two_threads(variable_weights, image):
    model = registry.load_model(str(variable_weights), 4.75)
    with torch_threads(1):
        one = codec.compress(image, model)
        decoded = codec.decompress(one, model).tobytes()
    with torch_threads(2):
        assert codec.compress(image, model) == one
        assert codec.decompress(one, model).tobytes() == decoded


def test_qualities_out_of_range_and_mismatched_models_are_refused(variable_weights, tiny_weights, image):
    model = registry.load_model(str(variable_weights))
    for bad in (-0.5, 8.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="quality"):
            model.use_quality(bad)
    with pytest.raises(registry.ModelNotFoundError, match="out of this model's range 0-8"):
        registry.load_model(str(variable_weights), 9)
    fixed = registry.load_model(str(tiny_weights))
    with pytest.raises(ValueError, match="fixed rate"):
        fixed.use_quality(2.5)
    data = codec.compress(image, model)
    with pytest.raises(BitstreamError, match="not by the given model 'grm/test/q3'"):  # a fixed-rate model cannot decode it ...
        codec.decompress(data, fixed)
    with pytest.raises(BitstreamError, match="not by the given model 'grm/test/vr'"):  # ... nor the other way round
        codec.decompress(codec.compress(image, fixed), model)
    patched = bytearray(data)  # a quality beyond the model's range, with a valid checksum
    struct.pack_into("<d", patched, 33, 8.5)
    patched[-4:] = struct.pack("<I", zlib.crc32(bytes(patched[:-4])))
    with pytest.raises(BitstreamError, match="out of this model's range"):
        codec.decompress(bytes(patched), model)


def test_fractional_quality_needs_a_variable_rate_model():
    assert registry.load_model("grm", 2.5).quality == 2.5  # the shipped grm/small/vr
    with pytest.raises(registry.ModelNotFoundError, match="no variable-rate joint/small model for fractional quality 2.5"):
        registry.load_model("joint", 2.5)


def test_variable_rate_model_starts_as_the_fixed_rate_one(tmp_path, image):
    fixed = registry.load_model(str(save_tiny(tmp_path / "fixed.safetensors")))
    fixed.config["lambda"] = registry.LAMBDAS[3]
    variable = registry.MODELS["grm"](N=16, M=24, levels=9)
    assert "variable-rate model from the fixed-rate weights" in convert.initialize(variable, fixed)
    variable.eval().update()
    variable.id = "grm/test/vr"
    variable.use_quality(3)
    a, b = codec.encode_rgb(image, "RGB", fixed)[1], codec.encode_rgb(image, "RGB", variable, 3)[1]
    assert torch.equal(a, b)  # quality 3 is the source's lambda: unit gains
    assert variable.y_gain.exact(8)[0].mean() > 1 > variable.y_gain.exact(0)[0].mean()


def _images(folder, count):
    folder.mkdir(parents=True)
    for i in range(count):
        natural_image(96, 80, seed=i).save(folder / f"{i}.png")
    return folder


def test_variable_rate_training_writes_a_model_for_every_quality(tmp_path):
    data = _images(tmp_path / "images", 4)
    args = ["--data", str(data), "--val", str(data), "--preset", "small", "--batch", "2", "--crop", "64",
            "--save-every", "2", "--val-every", "2", "--val-images", "1", "--variable-rate", "--lr-warmup", "1"]  # fmt: skip
    trainer.main([*args, "--out", str(tmp_path / "straight"), "--steps", "4"])
    trainer.main([*args, "--out", str(tmp_path / "resumed"), "--steps", "4", "--stop-at", "2"])
    trainer.main([*args, "--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"])
    logs = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("straight", "resumed")]
    assert [float(r["loss"]) for r in logs[1]] == pytest.approx([float(r["loss"]) for r in logs[0]], rel=1e-5)
    assert all(logs[0][-1][f"val_file_bpp_q{q}"] != "" for q in trainer.VAL_QUALITIES)
    model = registry.load_model(str(tmp_path / "straight" / "weights.safetensors"), 6.5)
    assert model.id == "grm/small/vr" and model.levels == 9 and model.quality == 6.5
    assert model.config["lambda"] == [registry.LAMBDAS[q] for q in range(9)]
    assert model.config["balance"] == "lambda"


def test_balanced_loss_divides_each_images_loss_by_its_lambda():
    """--balance lambda: image i's R + lambda_i D is multiplied by lambda_ref / lambda_i (reference: the middle level)."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    out = {"x_hat": x + 0.05 * torch.randn_like(x), "likelihoods": {"y": [torch.rand(3, 4, 1, 1) * 0.9 + 0.05]}}
    lmbda = torch.tensor([0.0018, 0.013, 0.18])
    weights = trainer.balance_weights(lmbda, 0.013)
    assert weights.tolist() == pytest.approx([0.013 / 0.0018, 1.0, 0.013 / 0.18])
    per_image = [trainer.rate_distortion({"x_hat": out["x_hat"][i:i + 1], "likelihoods": {"y": [out["likelihoods"]["y"][0][i:i + 1]]}},
                                         x[i:i + 1], float(lmbda[i]), warm=False)["loss"] for i in range(3)]  # fmt: skip
    balanced = trainer.rate_distortion(out, x, lmbda, warm=False, balance=weights)
    assert float(balanced["loss"]) == pytest.approx(float(sum(w * l for w, l in zip(weights, per_image)) / 3), rel=1e-5)
    plain = trainer.rate_distortion(out, x, lmbda, warm=False)
    assert float(plain["loss"]) == pytest.approx(float(sum(per_image) / 3), rel=1e-5)
    assert float(plain["bpp"]) == float(balanced["bpp"])  # only the loss is weighted


def test_the_secant_search_finds_the_bisections_bracket_in_few_measurements():
    """ratecontrol.bracket against brute force: the last value below the target and the first that is not, for
    smooth curves (a few measurements), curves with flat steps and curves far from the prior."""
    rng = np.random.default_rng(0)
    qualities = [q / ratecontrol.QUALITY_GRID for q in range(8 * ratecontrol.QUALITY_GRID + 1)]
    q = np.array(qualities)
    counts = []
    for case in range(60):
        if case % 3 == 0:  # smooth: log-rate of a variable-rate model, its slope and offset unlike the prior's
            values = rng.uniform(-3, -1) + rng.uniform(0.15, 0.4) * q + rng.uniform(-0.01, 0.01) * q**2
        elif case % 3 == 1:  # sizes in bytes that stay level for a few grid steps
            values = np.floor((rng.uniform(-3, -1) + 0.3 * q) * 40) / 40
        else:  # an arbitrary increasing curve
            values = np.cumsum(rng.exponential(1.0, len(q))) / 100
        target = rng.uniform(values[0] - 0.1, values[-1] + 0.1)
        measured = []
        lo, hi = ratecontrol.bracket(qualities, lambda i: measured.append(i) or values[i], target, lambda v: v <= target,
                                     slope=ratecontrol.SLOPES["bpp"])  # fmt: skip
        k = int(np.searchsorted(values, target, side="right")) - 1
        assert (lo, hi) == (k, k + 1), case
        assert all(i in measured for i in (lo, hi) if 0 <= i < len(q)) and len(set(measured)) == len(measured)
        counts.append(len(measured))
        assert len(measured) <= 3 * math.ceil(math.log2(len(q))), case  # the bisection steps bound the worst case
    assert np.mean(counts[::3]) <= 6  # smooth curves: far fewer than bisection's 11


def test_rate_control_meets_targets(image):
    model = registry.load_model("grm/small/vr")
    options = ratecontrol.candidates(model)
    image = image.convert("L").convert("RGB")  # its random saturated colours cap the model at 19.6 dB from quality 3 up
    sizes = {q: 8 * len(codec.compress(image, model, quality=q)) / (128 * 96) for q in (2, 6)}
    target = (sizes[2] + sizes[6]) / 2
    synthesized, synthesize = [], CompressionModel.synthesize

    def counted(self, *args, **kwargs):
        synthesized.append(1)
        return synthesize(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # a rate target synthesizes only the file it returns (its decode)
        patch.setattr(CompressionModel, "synthesize", counted)
        choice = ratecontrol.search(image, model, target_bpp=target)
    assert choice.bpp <= target and 2 < choice.quality < 6 and len(synthesized) == 1
    assert choice.encodes <= 2 + math.ceil(math.log2(len(options)))
    above = 8 * len(codec.compress(image, model, quality=choice.quality + 1 / ratecontrol.QUALITY_GRID)) / (128 * 96)
    assert above > target  # the next quality on the grid would be too large
    assert read_header(choice.data).quality == choice.quality
    assert codec.psnr(image, codec.decompress(choice.data, model)) == choice.psnr
    by_psnr = ratecontrol.search(image, model, target_psnr=choice.psnr)
    assert by_psnr.psnr >= choice.psnr and by_psnr.encodes <= 2 + math.ceil(math.log2(len(options)))
    below = codec.compress(image, model, quality=by_psnr.quality - 1 / ratecontrol.QUALITY_GRID)
    assert codec.psnr(image, codec.decompress(below, model)) < choice.psnr  # the next quality down misses it
    assert api.compress(image, model, target_bpp=target) == choice.data
    with pytest.raises(ratecontrol.TargetError, match=r"target 0.0001 bpp is out of range: quality 0-8 gives"):
        ratecontrol.search(image, model, target_bpp=0.0001, strict=True)
    with pytest.raises(ratecontrol.TargetError, match="target 99 dB is out of range"):
        ratecontrol.search(image, model, target_psnr=99, strict=True)


@pytest.mark.parametrize("target, end", [({"target_bpp": 0.0001}, 0), ({"target_bpp": 50}, 8), ({"target_psnr": 99}, 8),
                                         ({"target_psnr": 5}, 0)])  # fmt: skip
def test_a_target_beyond_the_range_gives_the_nearest_end_with_a_note(image, target, end):
    """Issue 38: easy targets (5 dB, 50 bpp) and impossible ones give the nearest end's file and say what it
    reached, in the API (a TargetWarning) and in Pillow; strict=True keeps the refusal."""
    model = registry.load_model("grm/small/vr")
    choice = ratecontrol.search(image, model, **target)
    assert choice.quality == end and choice.data == codec.compress(image, model, quality=end)
    assert choice.note.startswith(f"target {list(target.values())[0]:g} ") and f"quality {end} gives" in choice.note
    with pytest.warns(ratecontrol.TargetWarning, match="is out of range"):
        assert api.compress(image, model, **target) == choice.data
    with pytest.raises(ratecontrol.TargetError):
        api.compress(image, model, **target, strict=True)


def test_rate_control_to_an_ms_ssim_target(tmp_path, capsys):
    """The smallest file of at least an MS-SSIM: the target is met and the grid quality below misses it;
    out-of-range targets and images too small for MS-SSIM's five scales get one line."""
    model = registry.load_model("grm/small/vr")
    image = natural_image(192, 176, seed=11)
    decoded = lambda q: codec.decompress(codec.compress(image, model, quality=q), model)  # noqa: E731
    target = (metrics.ms_ssim(image, decoded(1)) + metrics.ms_ssim(image, decoded(5))) / 2
    choice = ratecontrol.search(image, model, target_ms_ssim=target)
    assert choice.ms_ssim >= target and 1 < choice.quality < 5
    assert choice.ms_ssim == metrics.ms_ssim(image, codec.decompress(choice.data, model))
    assert metrics.ms_ssim(image, decoded(choice.quality - 1 / ratecontrol.QUALITY_GRID)) < target
    assert api.compress(image, model, target_ms_ssim=target) == choice.data
    with pytest.raises(ratecontrol.TargetError, match="target MS-SSIM 0.99999 is out of range: quality 0-8 gives"):
        ratecontrol.search(image, model, target_ms_ssim=0.99999, strict=True)
    assert ratecontrol.search(image, model, target_ms_ssim=0.99999).quality == 8
    with pytest.raises(ratecontrol.TargetError, match="below 1"):
        ratecontrol.search(image, model, target_ms_ssim=1.5)
    src = tmp_path / "a.png"
    image.save(src)
    assert cli(["compress", str(src), "-o", str(tmp_path / "a.rfc"), "--target-ms-ssim", f"{target}", "--preset", "small", "--json"]) == 0
    record = __import__("json").loads(capsys.readouterr().out)
    assert record["ms_ssim"] == choice.ms_ssim and record["quality"] == choice.quality
    image.crop((0, 0, 192, 160)).save(src)
    assert cli(["compress", str(src), "-o", str(tmp_path / "b.rfc"), "--target-ms-ssim", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "larger than 160 px on each side" in err and err.count("\n") == 1 and not (tmp_path / "b.rfc").exists()


def test_rate_control_states_the_range_rounded_inwards(image):
    """A target just past the range never prints inside it (19.5758 dB against a top of 19.5752 said 19.58)."""
    model = registry.load_model("grm/small/vr")
    top = codec.psnr(image, codec.decompress(codec.compress(image, model, quality=8), model))
    with pytest.raises(ratecontrol.TargetError) as err:
        ratecontrol.search(image, model, target_psnr=top + 1e-4, strict=True)
    shown = float(str(err.value).split(" gives ")[1].split("-")[1].split(" ")[0])
    assert shown <= top  # rounded down: never above the target
    assert ratecontrol._span(0.12341, 2.57358, 4, "bpp") == "0.1235-2.5735 bpp"


def test_rate_control_from_the_command_line(image, tmp_path, capsys):
    """With the default model, the shipped variable-rate grm/small/vr."""
    src = tmp_path / "a.png"
    image.save(src)
    model = registry.load_model()
    target = 8 * len(codec.compress(image, model, quality=5)) / (128 * 96)
    assert cli(["compress", str(src), "-o", str(tmp_path / "a.rfc"), "--target-bpp", f"{target}", "--json"]) == 0
    record = __import__("json").loads(capsys.readouterr().out)
    assert record["bpp"] <= target and 4.9 < record["quality"] < 5.1 and record["psnr"] > 0 and record["encodes"] >= 2
    above = 8 * len(codec.compress(image, model, quality=record["quality"] + 1 / ratecontrol.QUALITY_GRID)) / (128 * 96)
    assert above > target  # next to a quality that misses it (sizes in bytes may stay level for a grid step or two past 5)
    assert cli(["compress", str(src), "-o", str(tmp_path / "b.rfc"), "-q", "2.25"]) == 0
    assert "quality 2.25" in capsys.readouterr().out
    assert read_header((tmp_path / "b.rfc").read_bytes()).quality == 2.25
    assert cli(["compress", str(src), "-o", str(tmp_path / "c.rfc"), "--target-psnr", "99", "--strict-target"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refcodec: error: target 99 dB is out of range") and err.count("\n") == 1
    assert not (tmp_path / "c.rfc").exists()
    assert cli(["compress", str(src), "-o", str(tmp_path / "c.rfc"), "--target-psnr", "99", "--json"]) == 0  # the nearest end
    out, err = capsys.readouterr()
    assert json.loads(out)["quality"] == 8 and json.loads(out)["note"] in err and err.startswith("refcodec: note: ")
    assert cli(["compress", str(src), "-o", str(tmp_path / "d.rfc"), "-q", "3", "--target-bpp", "0.3"]) == 1
    assert "not both" in capsys.readouterr().err


def test_retired_models_are_refused_with_the_release_that_decodes_them(tmp_path, monkeypatch, image):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    save_tiny(weights / "grm-test-q3.safetensors")
    (weights / "grm-test-q3.md").write_text("card")
    data = codec.compress(image, "grm/test/q3")
    written_with = registry.load_model("grm/test/q3").weights_hash().hex()
    kept = tmp_path / "kept.safetensors"  # the weights file of the old release, kept by a user
    kept.write_bytes((weights / "grm-test-q3.safetensors").read_bytes())
    registry.retire(["grm/test/q3"], "0.2.0", "679389d11918f1754726472c258af81637b63615")
    assert registry.shipped_ids() == [] and sorted(p.name for p in weights.iterdir()) == ["retired.json"]
    with pytest.raises(BitstreamError) as info:
        codec.decompress(data)
    message = str(info.value)
    assert message.startswith(f"file was written by grm/test/q3 with weights {written_with}: grm/test/q3 was retired after refcodec 0.2.0")
    assert message.endswith("; decode its files with refcodec 0.2.0 (git checkout 679389d11918), or with --model and its weights "
                            "(git show 679389d11918:src/refcodec/models/weights/grm-test-q3.safetensors)") and "\n" not in message
    assert codec.decompress(data, registry.load_model(str(kept))).size == image.size
    with pytest.raises(registry.ModelNotFoundError, match="grm/test/q3 was retired"):
        registry.load_model("grm/test/q3")


def test_files_of_replaced_weights_are_refused_with_the_release_that_decodes_them(tmp_path, monkeypatch, image):
    """A new ship under the same id (registry.record_replaced, called by scripts/ship_weights.py) names the
    release that decodes the files of the weights it replaced; the new weights' files decode."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    save_tiny(weights / "grm-test-q3.safetensors", seed=0)
    old = codec.compress(image, "grm/test/q3")
    old_hash = registry.load_model("grm/test/q3").weights_hash()
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes((weights / "grm-test-q3.safetensors").read_bytes())
    save_tiny(weights / "grm-test-q3.safetensors", seed=1)  # the new ship
    registry.record_replaced("grm/test/q3", old_hash, "0.3.0", "235b0cdc7e687c67bfe96d78819e647baad6f04d")
    assert registry.replaced() == {old_hash.hex(): {"model": "grm/test/q3", "release": "0.3.0", "commit": "235b0cdc7e687c67bfe96d78819e647baad6f04d"}}
    new = codec.compress(image, "grm/test/q3")
    assert codec.decompress(new).size == image.size and registry.retired_reason("grm/test/q3") is None
    with pytest.raises(BitstreamError) as info:
        codec.decompress(old)
    assert str(info.value) == (f"file was written by grm/test/q3 with weights {old_hash.hex()}: these weights of grm/test/q3 "
                               "were replaced after refcodec 0.3.0; decode its files with refcodec 0.3.0 (git checkout 235b0cdc7e68), "
                               "or with --model and its weights (git show 235b0cdc7e68:src/refcodec/models/weights/grm-test-q3.safetensors)")  # fmt: skip
    assert codec.decompress(old, registry.load_model(str(kept))).size == image.size
    assert registry.retired_reason("grm/other/q3", old_hash) is None  # a hash is only recorded for its own model id


def _git(*args):
    return subprocess.run(["git", *args], cwd=Path(__file__).parents[1], capture_output=True)


@pytest.mark.skipif(_git("cat-file", "-e", "679389d11918f1754726472c258af81637b63615").returncode != 0,
                    reason="needs the repository's git history")  # fmt: skip
def test_every_retired_or_replaced_weights_hash_names_a_commit_that_holds_those_weights(tmp_path):
    """The commit that a refused file's line names has the weights that wrote it, at the path it names."""
    entries = list(registry.replaced().items()) + [(e["weights_hash"], e | {"model": m}) for m, e in registry.retired().items()]
    assert len(entries) >= 11
    for weights_hash, entry in entries:
        file = f"{registry.WEIGHTS_IN_GIT}/{registry.weights_path(entry['model']).name}"
        blob = _git("show", f"{entry['commit']}:{file}")
        assert blob.returncode == 0, (entry, file)
        (tmp_path / "w.safetensors").write_bytes(blob.stdout)
        assert registry.load_model(str(tmp_path / "w.safetensors")).weights_hash().hex() == weights_hash


def test_a_ship_names_the_commit_that_holds_the_weights_it_replaces(tmp_path):
    """scripts/ship_weights.py records HEAD as the replaced weights' commit, and only if HEAD holds them as they are."""
    ship = load_script("ship_weights")
    outside = tmp_path / "grm-small-vr.safetensors"
    outside.write_bytes(registry.weights_path("grm/small/vr").read_bytes())
    with pytest.raises(SystemExit, match="commit grm-small-vr.safetensors as released"):
        ship.release_commit(outside)  # not a file of the repository's HEAD
    shipped = registry.weights_path("grm/small/vr")
    head = _git("rev-parse", "HEAD")
    if head.returncode or _git("diff", "--quiet", "HEAD", "--", str(shipped)).returncode:
        pytest.skip("needs a git checkout with the shipped weights committed")
    assert ship.release_commit(shipped) == head.stdout.decode().strip()


def test_files_of_format_versions_1_and_2_still_decode(tiny_model, image):
    """Files of format versions 1 (no quality field) and 2 decode with the float32 synthesis they were
    written for; version 3 (no ICC field) and 4 files with the exact one."""
    v4 = codec.compress(image, tiny_model)
    header, streams = unpack(v4)
    bodies = (v4[:4] + b"\x01" + v4[5:33] + v4[45:-4], v4[:4] + b"\x02" + v4[5:41] + v4[45:-4], v4[:4] + b"\x03" + v4[5:41] + v4[45:-4])
    v1, v2, v3 = (body + struct.pack("<I", zlib.crc32(body)) for body in bodies)
    y_hat = tiny_model.decode(streams, *header.padded_size)
    float32 = codec.to_image(header, tiny_model.synthesize(y_hat, exact=False)).tobytes()
    assert codec.decompress(v1, tiny_model).tobytes() == codec.decompress(v2, tiny_model).tobytes() == float32
    exact = codec.to_image(header, tiny_model.synthesize(y_hat)).tobytes()
    assert codec.decompress(v3, tiny_model).tobytes() == codec.decompress(v4, tiny_model).tobytes() == exact
