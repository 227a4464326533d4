"""Training: a few steps on generated images, data order, checkpoints, exact resume, weights export, MS-SSIM."""

import csv
import itertools
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim

from refcodec.models import registry
from refcodec.train import trainer
from refcodec.train.data import ImageFolder, batches
from refcodec.train.trainer import rate_distortion, stage_weights

from conftest import natural_image


def test_stage_weights_follow_section_5_1():
    assert stage_weights(3, warm=True) == [0.3, 0.3, 0.4]
    assert [round(w, 6) for w in stage_weights(3, warm=False)] == [0.1, 0.1, 0.8]
    assert stage_weights(1, warm=True) == [1.0]


def test_warm_up_is_for_models_trained_from_scratch():
    """The 0.3:0.3:0.4 warm-up is the first fifth of a run from scratch; a run from trained weights (a
    continued run, whose schedule may be a million steps long) goes straight to 0.1:0.1:0.8."""
    assert trainer.warmup_steps(None, 20_000, base=0) == 4_000
    assert trainer.warmup_steps(None, 1_000_000, base=30_859) == 0
    assert trainer.warmup_steps(500, 1_000_000, base=30_859) == 500


def test_cooldown_decays_the_learning_rate_linearly_to_zero_at_stop_at(capsys):
    """--cooldown N: the warm-up and cosine factors times (stop_at - step) / N over the last N steps, 0 at stop_at."""
    args = trainer.parse_args(["--data", "d", "--out", "o", "--steps", "1000000", "--stop-at", "90", "--cooldown", "4",
                               "--lr-warmup", "1"])  # fmt: skip
    cosine = lambda step: 0.55 + 0.45 * math.cos(math.pi * step / 1_000_000)  # noqa: E731
    factors = [trainer.lr_factor(step - 80, step, args) for step in range(84, 91)]
    assert factors == pytest.approx([cosine(s) * c for s, c in zip(range(84, 91), [1, 1, 1, 0.75, 0.5, 0.25, 0])])
    assert trainer.lr_factor(0, 80, trainer.parse_args(["--data", "d", "--out", "o", "--lr-warmup", "4"])) == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(SystemExit):
        trainer.parse_args(["--data", "d", "--out", "o", "--cooldown", "4"])  # no end step to decay to
    assert "--cooldown N needs --stop-at" in capsys.readouterr().err


def _args(data, out, steps, *extra):
    return ["--data", str(data), "--val", str(data), "--out", str(out), "--preset", "small", "--steps", str(steps),
            "--batch", "2", "--crop", "64", "--save-every", "2", "--val-every", "2", "--val-images", "2", *extra]  # fmt: skip


def test_train_export_and_resume(tmp_path):
    data = tmp_path / "images" / "nested"
    data.mkdir(parents=True)
    for i in range(4):
        natural_image(96, 80, seed=i).save(data / f"{i}.png")
    out = tmp_path / "run"
    trainer.main(_args(tmp_path / "images", out, 2))
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    trainer.main(_args(tmp_path / "images", out, 4, "--resume"))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_psnr"] != ""
    # real bitstreams of the validation crops: the estimate plus a header; decoding clamps to 8 bits, which only helps
    assert float(rows[-1]["val_bpp"]) < float(rows[-1]["val_file_bpp"]) < float(rows[-1]["val_bpp"]) + 0.2
    assert float(rows[-1]["val_file_psnr"]) > float(rows[-1]["val_psnr"]) - 0.1
    model = registry.load_model(str(out / "weights.safetensors"))
    assert model.id == "grm/small/q3" and model.config["steps"] == 4
    assert not torch.equal(first["model"]["g_a.0.weight"], state["model"]["g_a.0.weight"])


def test_init_from_weights_continues_the_step_count(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        natural_image(80, 80, seed=i).save(data / f"{i}.png")
    trainer.main(_args(data, tmp_path / "a", 2))
    trainer.main(_args(data, tmp_path / "b", 4, "--init", str(tmp_path / "a" / "weights.safetensors")))
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["base_step"] == 2
    assert state["config"]["warmup_steps"] == 0  # trained weights: no warm-up
    # each stage of the chain says what it ran on, for the model card
    init = state["config"]["init"]
    assert "CPU cores" in state["config"]["hardware"] and init["hardware"] == state["config"]["hardware"]
    assert init["wall_seconds"] >= 0
    assert registry.load_model(str(tmp_path / "b" / "weights.safetensors")).config["steps"] == 4
    trainer.main(_args(data, tmp_path / "b", 5, "--resume"))  # a resumed run keeps its init record
    assert registry.read_config(tmp_path / "b" / "weights.safetensors")["init"] == init


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        natural_image(80, 80, seed=i).save(data / f"{i}.png")
    trainer.main(_args(data, tmp_path / "run", 100, "--time-limit", "0", "--save-every", "50"))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1  # the first step ends past the limit: saved there, schedule left as for 100 steps
    assert registry.load_model(str(tmp_path / "run" / "weights.safetensors")).config["steps"] == 1


def _images(folder, count, width=96, height=80):
    folder.mkdir(parents=True)
    for i in range(count):
        natural_image(width, height, seed=i).save(folder / f"{i}.png")
    return folder


def test_images_smaller_than_the_crop_are_upscaled_and_counted(tmp_path, capsys):
    """A 512-px final phase (section 5.1) on 481x321 BSDS500 images would train on upscaled, blurred ones: said."""
    folder = _images(tmp_path / "images", 3)  # 96x80
    natural_image(160, 128, seed=9).save(folder / "large.png")
    data = ImageFolder(folder, 96)
    assert data.upscaled == 3 and all(d.shape == (3, 96, 96) for d in (data[0], data[3], data[1, 2]))
    assert ImageFolder(folder, 64).upscaled == 0
    trainer.main(_args(folder, tmp_path / "run", 1, "--crop", "128", "--val-images", "1"))
    assert "3 of 4 training images are smaller than the 128-px crop and are upscaled (bicubic)" in capsys.readouterr().out


def test_batches_are_a_pure_function_of_seed_position_and_rank(tmp_path):
    data = ImageFolder(_images(tmp_path / "images", 5), 64, seed=7)
    straight = list(itertools.islice(batches(data, 2), 6))
    torch.manual_seed(1), np.random.seed(1)  # the global random state plays no part
    resumed = list(itertools.islice(batches(data, 2, start=3), 3))  # mid-epoch: 2 batches per epoch
    assert all(torch.equal(a, b) for a, b in zip(straight[3:], resumed))
    assert not torch.equal(straight[0], straight[2])  # a new permutation and new crops every epoch
    ranks = [next(batches(data, 2, rank=r, world=2)) for r in (0, 1)]
    assert not torch.equal(ranks[0], ranks[1])


@pytest.mark.parametrize("metric", ["mse", "ms-ssim"])
def test_resume_is_exact(tmp_path, metric):
    """Also for MS-SSIM, whose loss draws the pyramid's phase: the validation that ends the first part
    must draw nothing, or the resumed run would draw other phases than the straight one."""
    data = _images(tmp_path / "images", 5, *((200, 192) if metric == "ms-ssim" else ()))
    crop = ["--metric", "ms-ssim", "--crop", "192"] if metric == "ms-ssim" else []
    run = lambda out, *extra: trainer.main(_args(data, tmp_path / out, 6, "--lr-warmup", "1", "--val-images", "1", *crop, *extra))
    run("straight")
    run("resumed", "--stop-at", "3")  # mid-epoch: 5 images make 2 batches of 2 per epoch
    run("resumed", "--resume")
    logs = {run: list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("straight", "resumed")}
    assert len(logs["resumed"]) == 6
    for column in ("loss", "bpp"):  # the bpp depends on the quantization noise too
        straight, resumed = ([float(r[column]) for r in logs[run]] for run in ("straight", "resumed"))
        assert resumed == pytest.approx(straight, rel=1e-5)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"] for run in ("straight", "resumed"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_weight_average_is_exported_and_resumes_exactly(tmp_path):
    """--ema: the exported weights are the average (a <- d a + (1 - d) w after every step, starting from the weights
    after the first step, d warmed up to the decay: ema_decay), the raw weights keep training, and a resumed run
    continues the average."""
    data = _images(tmp_path / "images", 5)
    run = lambda out, *extra: trainer.main(_args(data, tmp_path / out, 4, "--lr-warmup", "1", "--val-images", "1",
                                                 "--save-every", "1", "--ema", "0.5", *extra))  # fmt: skip
    run("straight")
    run("resumed", "--stop-at", "2")
    run("resumed", "--resume")
    states = {r: torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("straight", "resumed")}
    a, b = (states[r]["ema"] for r in ("straight", "resumed"))
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-7) for k in a)
    assert int(a["n_averaged"]) == 4
    exported = registry.load_model(str(tmp_path / "straight" / "weights.safetensors"))
    assert exported.config["ema"] == 0.5
    average, raw = a["module.g_a.0.weight"], states["straight"]["model"]["g_a.0.weight"]
    assert torch.equal(exported.state_dict()["g_a.0.weight"], average)
    assert not torch.allclose(average, raw)
    previous = torch.load(tmp_path / "straight" / "checkpoint.prev.pt", weights_only=False)  # the step before
    d = trainer.ema_decay(0.5, 3)  # the 4th update: 4 / 13
    assert d == pytest.approx(4 / 13) and trainer.ema_decay(0.5, 100) == 0.5 and trainer.ema_decay(0.999, 0) == 0.1
    expected = d * previous["ema"]["module.g_a.0.weight"] + (1 - d) * raw
    assert torch.allclose(average, expected, rtol=1e-6, atol=1e-8)
    with pytest.raises(SystemExit):
        trainer.parse_args(["--data", "d", "--out", "o", "--ema", "1"])


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    data, out = _images(tmp_path / "images", 3), tmp_path / "run"
    trainer.main(_args(data, out, 3, "--stop-at", "2", "--save-every", "1"))
    newest = out / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    trainer.main(_args(data, out, 3, "--save-every", "1", "--resume"))
    assert "checkpoint.pt is unreadable (RuntimeError), falling back to checkpoint.prev.pt" in capsys.readouterr().err
    assert torch.load(newest, weights_only=False)["step"] == 3
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3]  # step 2 was redone, logged once
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(b"damaged")
    with pytest.raises(SystemExit, match="no readable checkpoint"):
        trainer.main(_args(data, out, 4, "--resume"))


def test_resumes_checkpoints_of_the_previous_format(tmp_path):
    data, out = _images(tmp_path / "images", 3), tmp_path / "run"
    trainer.main(_args(data, out, 2, "--stop-at", "1"))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    old = {k: state[k] for k in ("model", "optimizer", "schedule", "step", "config", "elapsed", "base_step")}
    torch.save({**old, "rng": state["rng"][0]}, out / "checkpoint.pt")  # one random state, no batch count
    rows = list(csv.reader(open(out / "log.csv")))
    with open(out / "log.csv", "w", newline="") as f:  # the columns of the previous version
        csv.writer(f).writerows([["step", "time", "loss", "bpp", "psnr", "val_bpp", "val_psnr"], rows[1][:7]])
    trainer.main(_args(data, out, 2, "--resume"))
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["step"] for r in rows] == ["1", "2"] and rows[0]["val_file_bpp"] == "" and float(rows[1]["val_file_bpp"]) > 0


def test_ms_ssim_loss_and_run_config(tmp_path):
    x = torch.rand(1, 3, 192, 192)
    out = {"x_hat": (x + 0.05).clamp(0, 1), "likelihoods": {"y": [torch.full((1, 4, 12, 12), 0.5)] * 3}}
    m = rate_distortion(out, x, 8.73, warm=False, metric="ms-ssim")
    assert m["loss"] == pytest.approx(float(m["bpp"] + 8.73 * (1 - m["ms_ssim"])))
    assert m["bpp"] == pytest.approx(4 * 12 * 12 / 192**2)

    data, run = _images(tmp_path / "images", 2, 200, 192), tmp_path / "run"
    trainer.main(_args(data, run, 1, "--metric", "ms-ssim", "--crop", "192", "--batch", "1", "--val-images", "1", "--tensorboard"))
    row = next(csv.DictReader(open(run / "log.csv")))
    assert 0 <= float(row["ms_ssim"]) <= 1 and 0 <= float(row["val_ms_ssim"]) <= 1
    config = registry.read_config(run / "weights.safetensors")
    assert config["metric"] == "ms-ssim" and config["lambda"] == registry.LAMBDAS_MS_SSIM[3] == 8.73
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_the_ms_ssim_loss_sees_a_pattern_that_the_aligned_pyramid_cancels():
    """Error that sums to zero in every 2x2 block aligned with MS-SSIM's pooling vanishes from every scale
    but the first, whose weight is small; at an odd phase, which the loss draws half the time, it does not.
    (A stride-2 synthesis makes each 2x2 block of pixels from one position, so it can learn such error.)"""
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 24), size=192, mode="bilinear").clamp(0.1, 0.9)
    signs = torch.randint(0, 2, (96, 96)).float() * 2 - 1
    x_hat = x + 0.08 * torch.kron(signs, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))  # every aligned 2x2 mean unchanged
    aligned = 1 - float(ms_ssim(x_hat[:, :, :176, :176], x[:, :, :176, :176], data_range=1.0))
    odd = 1 - float(ms_ssim(x_hat[:, :, 1:177, 1:177], x[:, :, 1:177, 1:177], data_range=1.0))
    assert odd > 1.5 * aligned
    drawn = [1 - float(trainer.phase_shifted_ms_ssim(x_hat, x)) for _ in range(64)]
    assert max(drawn) > 1.5 * aligned and sum(drawn) / len(drawn) > aligned  # a quarter of the phases are odd in both


def test_ms_ssim_needs_crops_above_176_px(capsys):
    with pytest.raises(SystemExit):
        trainer.parse_args(["--data", "d", "--out", "o", "--metric", "ms-ssim", "--crop", "128"])
    assert "--metric ms-ssim needs --crop above 176" in capsys.readouterr().err


def test_init_two_stage_and_from_compressai(tmp_path):
    """--init takes a GDN run for a GSDN model (section 5.3) and a CompressAI mbt2018 checkpoint."""
    from test_convert import compressai_state

    data = tmp_path / "images"
    _images(data, 3)
    trainer.main(_args(data, tmp_path / "gdn", 1, "--flags", '{"gsdn": false}'))
    trainer.main(_args(data, tmp_path / "gsdn", 2, "--init", str(tmp_path / "gdn" / "weights.safetensors")))
    config = registry.load_model(str(tmp_path / "gsdn" / "weights.safetensors")).config
    assert "two-stage" in config["init"]["how"] and config["init"]["steps"] == 1 and config["steps"] == 2

    checkpoint = tmp_path / "mbt2018.pth.tar"
    torch.save({"state_dict": compressai_state(n=64, m=96, filters=(3, 3, 3))}, checkpoint)
    trainer.main(_args(data, tmp_path / "joint", 1, "--model", "joint", "--init", str(checkpoint)))
    config = registry.load_model(str(tmp_path / "joint" / "weights.safetensors")).config
    assert "CompressAI mbt2018" in config["init"]["how"] and config["steps"] == 1


def test_bad_training_input_is_one_line(tmp_path, capsys):
    from refcodec import cli

    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 1
    assert cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--init", "grm/small/q9"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("refcodec: error:") for line in lines)


def test_kill_9_then_resume_reaches_the_uninterrupted_loss_curve(tmp_path):
    """A training process killed with SIGKILL mid-run resumes from its last checkpoint (whatever was
    being written at the time) and logs the same losses as a run that was never interrupted."""
    data = _images(tmp_path / "images", 5)
    steps = 8
    argv = lambda out, *extra: _args(data, tmp_path / out, steps, "--lr-warmup", "1", "--val-images", "1", "--save-every", "1", *extra)
    trainer.main(argv("straight"))
    proc = subprocess.Popen([sys.executable, "-m", "refcodec.cli", "train", *argv("killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = tmp_path / "killed" / "log.csv"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # wait for a few logged steps
        if log.exists() and len(log.read_text().splitlines()) > 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(csv.DictReader(open(log))))
    assert 0 < done < steps, "the process was not killed mid-run"
    trainer.main(argv("killed", "--resume"))
    logs = {run: list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("straight", "killed")}
    assert [int(r["step"]) for r in logs["killed"]] == list(range(1, steps + 1))
    for column in ("loss", "bpp"):
        straight, resumed = ([float(r[column]) for r in logs[run]] for run in ("straight", "killed"))
        assert resumed == pytest.approx(straight, rel=1e-5)


def test_compiled_training_step_gives_the_eager_loss_and_gradient():
    """refcodec train --compile (the background run's default): the compiled forward gives eager's loss and
    gradient, and the data-dependent reference search runs eagerly inside it instead of breaking the graph
    at a tensor-to-int conversion (which torch warns about)."""
    from torch._dynamo.utils import counters

    model = registry.load_model("grm/small/vr", 3).train()
    x, q = natural_image(64, 64, seed=3), torch.tensor([1.0, 5.0])
    x = torch.stack([torch.from_numpy(np.asarray(x)).permute(2, 0, 1).float() / 255] * 2)

    def step(forward):
        model.zero_grad()
        torch.manual_seed(1)  # the same quantization noise
        loss = rate_distortion(forward(x, q), x, torch.tensor([0.0018, 0.025]), warm=False)["loss"]
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch._dynamo.reset()
    counters.clear()
    (eager, eager_grad), (compiled, compiled_grad) = step(model), step(torch.compile(model))
    assert torch.allclose(compiled, eager, rtol=1e-5)
    assert torch.allclose(compiled_grad, eager_grad, rtol=1e-3, atol=1e-6)
    assert not [reason for reason in counters["graph_break"] if "item()" in reason]
