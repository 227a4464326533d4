"""Training: a few steps on generated images, checkpoints, weights export and exact resume."""

import csv

import torch

from refcodec.models import registry
from refcodec.train import trainer
from refcodec.train.trainer import stage_weights

from conftest import natural_image


def test_stage_weights_follow_section_5_1():
    assert stage_weights(3, warm=True) == [0.3, 0.3, 0.4]
    assert [round(w, 6) for w in stage_weights(3, warm=False)] == [0.1, 0.1, 0.8]
    assert stage_weights(1, warm=True) == [1.0]


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
    assert registry.load_model(str(tmp_path / "b" / "weights.safetensors")).config["steps"] == 4
