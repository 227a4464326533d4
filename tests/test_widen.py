"""Function-preserving widening of the shipped model (models.widen): the grown model codes as the shipped
one did, and its new units learn."""

import pytest
import torch

from conftest import natural_image
from refcodec import codec
from refcodec.layers import gain
from refcodec.models import convert, registry, widen
from refcodec.models.grm import GRM
from refcodec.train.trainer import rate_distortion


@pytest.fixture(scope="module")
def small():
    return registry.load_model("grm/small/vr")


@pytest.fixture(scope="module")
def wide(small):
    return widen.grown(small, "medium")


def test_the_widened_model_codes_every_quality_as_the_shipped_one(small, wide):
    """Issue 36: within 0.05 dB and 1% rate at every quality; in fact the same pixels (g_s of the same latents)."""
    image = natural_image(256, 192)
    for q in range(small.levels):
        before, after = codec.compress(image, small, q), codec.compress(image, wide, q)
        decoded_before, decoded_after = codec.decompress(before, small), codec.decompress(after, wide)
        assert decoded_after.tobytes() == decoded_before.tobytes(), q
        assert abs(codec.psnr(image, decoded_after) - codec.psnr(image, decoded_before)) <= 0.05
        assert abs(len(after) - len(before)) <= 0.01 * len(before), (q, len(before), len(after))


def test_old_units_compute_what_they_computed(small, wide):
    """The training-time forward pass: the same reconstruction, and the old channels' rates at every stage
    within what the confidence U of the new channels moves (module doc); the new channels cost almost nothing."""
    x = codec.image_to_tensor(natural_image(128, 128, seed=1))
    q = torch.tensor([4.0])
    with torch.no_grad():
        a, b = small(x, q), wide(x, q)
    # float32 sums over more (zero) channels may round differently: the same up to float32's precision
    torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["likelihoods"]["z"][:, : small.N], a["likelihoods"]["z"], rtol=1e-5, atol=0)
    new_z = -b["likelihoods"]["z"][:, small.N :].log2().sum()
    assert new_z < 0.01 * -a["likelihoods"]["z"].log2().sum()
    for stage, (la, lb) in enumerate(zip(a["likelihoods"]["y"], b["likelihoods"]["y"])):
        old, new = -la.log2().sum(), -lb[:, : small.M].log2().sum()
        assert abs(new - old) <= (1e-5 if stage == 0 else 0.01) * old, stage  # stage 1 comes before the reference
        assert -lb[:, small.M :].log2().sum() < 0.001 * old


@pytest.mark.parametrize("n", [64, 128])
def test_the_new_units_learn(small, n):
    """The zero blocks that make the start function-preserving do not trap the new units: the first step
    already writes the new latent channels (g_a's new rows) and their entropy parameters, and a few more
    connect the new hidden units of g_s to the pixels. Also where N stays (only M grows)."""
    torch.manual_seed(0)
    model = GRM(N=n, M=192, levels=small.levels)
    widen.widen(small, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(2, 3, 128, 128)
    q = torch.tensor([2.0, 7.0])
    lambdas = gain.interpolate_log(list(registry.LAMBDAS.values()), q)
    for step in range(3):
        loss = rate_distortion(model(x, q), x, lambdas, warm=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert model.g_a[-1].weight.grad[small.M :].abs().max() > 0  # conv: (out, in, k, k)
            assert model.param_nets[0][-1].weight.grad[small.M : model.M].abs().max() > 0  # the new channels' means
        optimizer.step()
    if n > small.N:
        assert model.g_s[-1].weight[small.N :].abs().max() > 0  # transposed conv: (in, out, k, k)


def test_widening_keeps_the_architecture(small):
    with pytest.raises(ValueError, match="keeps the architecture"):
        widen.widen(small, GRM(N=128, M=192, levels=small.levels, reference=False, confidence=False))
    with pytest.raises(ValueError, match="cannot widen"):
        widen.widen(small, GRM(N=32, M=192, levels=small.levels))


def test_training_from_a_narrower_model_widens_it(small):
    """``refcodec train --preset medium --init grm/small/vr`` starts from the widened shipped model."""
    torch.manual_seed(0)
    model = registry.build("grm", "medium", levels=small.levels)
    how = convert.initialize(model, "grm/small/vr")
    assert how.startswith("widened from N=64, M=96 to N=128, M=192")
    assert torch.equal(model.g_s[0].weight[: small.M, : small.N], small.g_s[0].weight)


def test_the_rate_pull_on_new_channels_scales_only_their_encoder_gradient(small, wide):
    """The widened channels start at 0 under entropy parameters of the smallest scale, where the rate pulls
    any value back to 0 (after 908 steps of the first wide run they were still 0.001 on average, none nonzero
    after rounding). ``pull_new_channels`` scales the rate's gradient to the encoder on them only: at 0 the rate
    barely reaches g_a's new rows, the old rows and every value stay as they were."""
    x = codec.image_to_tensor(natural_image(128, 128, seed=2))
    q = torch.tensor([6.0])

    def rate_grad(factor):
        model = widen.grown(small, "medium")
        model.train()
        model.pull_new_channels(small.N, small.M, factor)
        torch.manual_seed(0)  # the same quantization noise
        out = model(x, q)
        bits = rate_distortion(out, x, 0.0, warm=False)["bpp"]  # the rate alone
        bits.backward()
        return float(bits.detach()), model.g_a[-1].weight.grad

    (plain, full), (pulled, none), (_, half) = rate_grad(1.0), rate_grad(0.0), rate_grad(0.5)
    assert plain == pulled  # the values are the same
    # what is left reaches them through the predictions and z, which read the new channels (1e-5 of the pull)
    assert full[small.M :].abs().max() > 1e-2 and none[small.M :].abs().max() < 1e-3 * full[small.M :].abs().max()
    assert torch.allclose(none[: small.M], full[: small.M]) and torch.allclose(half[small.M :], full[small.M :] / 2, atol=1e-5)


def test_training_with_a_grow_warmup_records_and_continues_the_ramp(small, tmp_path):
    """``refcodec train --grow-warmup``: the ramp (grown-from size, start step, length) goes into the weights'
    config, and a run started from those weights goes on with it."""
    from refcodec.train import trainer

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        natural_image(96, 96, seed=i).save(folder / f"{i}.png")
    common = ["--data", str(folder), "--preset", "medium", "--variable-rate", "--batch", "1", "--crop", "64", "--threads", "1",
              "--val-every", "1000", "--save-every", "1"]  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    trainer.main(common + ["--out", str(first), "--init", "grm/small/vr", "--grow-warmup", "100", "--stop-at", str(small.config["steps"] + 1)])
    grow = registry.read_config(first / "weights.safetensors")["grow"]
    assert grow == {"N": small.N, "M": small.M, "start": small.config["steps"], "steps": 100}
    trainer.main(common + ["--out", str(second), "--init", str(first / "weights.safetensors"), "--stop-at", str(small.config["steps"] + 2)])
    assert registry.read_config(second / "weights.safetensors")["grow"] == grow
    with pytest.raises(SystemExit, match="--grown-from"):
        trainer.main(common + ["--out", str(tmp_path / "third"), "--init", str(first / "weights.safetensors"), "--grow-warmup", "5"])


def test_the_reseed_wakes_the_new_channels_and_keeps_the_pixels(small, wide):
    """``widen.reseed``: the grown channels carry nonzero values after rounding at the top qualities, uncorrelated
    with the old ones (residual principal components) at their spread, while the pixels, z and the old channels'
    stage-1 predictions stay as they were (every reader of y reads them with 0)."""
    model = widen.grown(small, "medium")
    crops = torch.cat([codec.image_to_tensor(natural_image(256, 256, seed=s)) for s in range(14)])  # 3,584 positions
    widen.reseed(model, small.M, crops)
    x = codec.image_to_tensor(natural_image(128, 128, seed=9))
    q = torch.tensor([7.0])
    with torch.no_grad():
        before, after = wide(x, q), model(x, q)
        y = model.g_a(x) * model.y_gain(q)[0]
        seen = model.g_a(crops).double()
    assert (torch.round(y[:, small.M :]) != 0).float().mean() > 0.3  # rounding keeps most of them
    rows = seen.permute(0, 2, 3, 1).reshape(-1, model.M)
    rows -= rows.mean(0)
    corr = torch.corrcoef(rows.T)
    assert corr[small.M :, : small.M].abs().max() < 1e-3  # on the crops they were chosen on
    spread = rows.std(0)
    assert torch.allclose(spread[small.M :], spread[: small.M].mean().expand(small.M), rtol=1e-3)
    with pytest.raises(ValueError, match="at least 3200 positions"):  # fewer samples than the patch has features
        widen.reseed(widen.grown(small, "medium"), small.M, crops[:4])
    assert torch.equal(after["x_hat"], before["x_hat"])
    torch.testing.assert_close(after["likelihoods"]["z"], before["likelihoods"]["z"], rtol=1e-6, atol=0)
    torch.testing.assert_close(after["likelihoods"]["y"][0][:, : small.M], before["likelihoods"]["y"][0][:, : small.M], rtol=1e-5, atol=0)
    assert torch.equal(model.y_gain.log_gain[:, small.M :], model.y_gain.log_gain[:, : small.M].mean(1, keepdim=True).expand(-1, small.M))
    # the zero reads learn at once: g_s's gradient to them is nonzero from the first step
    model.train()
    out = model(x, q)
    (out["x_hat"] - x).square().mean().backward()
    assert model.g_s[0].weight.grad[small.M :].abs().max() > 0


def test_training_with_a_grow_reseed_holds_the_new_rows_then_ramps(small, tmp_path):
    """``refcodec train --grow-reseed HOLD``: the grown channels are reseeded once, g_a's rows of them stay fixed
    for HOLD steps (the old rows train), the rate's pull ramps after them, and the config records both."""
    from refcodec.train import trainer

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        natural_image(96, 96, seed=i).save(folder / f"{i}.png")
    common = ["--data", str(folder), "--preset", "medium", "--variable-rate", "--batch", "1", "--crop", "64", "--threads", "1",
              "--val-every", "1000", "--save-every", "1", "--ema", "0", "--out", str(tmp_path / "run")]  # fmt: skip
    base = small.config["steps"]

    def rows(*extra):
        model = trainer.train(trainer.parse_args(common + list(extra)))
        return model.g_a[-1].weight.detach().clone()

    first = rows("--init", "grm/small/vr", "--grow-reseed", "2", "--grow-warmup", "10", "--stop-at", str(base + 1))
    grow = registry.read_config(tmp_path / "run" / "weights.safetensors")["grow"]
    assert grow == {"N": small.N, "M": small.M, "start": base + 2, "steps": 10, "reseeded": base, "held_until": base + 2}
    assert first[small.M :].std() > 0.5 * first[: small.M].std()  # reseeded: widening leaves them 0
    held, free = rows("--resume", "--stop-at", str(base + 2)), rows("--resume", "--stop-at", str(base + 3))
    assert torch.equal(held[small.M :], first[small.M :]) and not torch.equal(held[: small.M], first[: small.M])
    assert not torch.equal(free[small.M :], held[small.M :])  # free after the hold
    assert registry.read_config(tmp_path / "run" / "weights.safetensors")["grow"] == grow
