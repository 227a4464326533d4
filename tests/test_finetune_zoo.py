"""scripts/finetune_zoo.py on CPU: calibrate, size the steps to the budget, train side by side, export float16."""

import json
import runpy
import sys
from pathlib import Path

import torch
from conftest import natural_image
from safetensors import safe_open

from refcodec.models import registry
from refcodec.train import trainer

SCRIPT = Path(__file__).parents[1] / "scripts" / "finetune_zoo.py"


def test_finetune_zoo_gives_every_run_the_same_budgeted_steps(tmp_path, monkeypatch, capsys):
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(2):
            natural_image(80, 80, seed=i + 10 * len(split)).save(tmp_path / "data" / split / f"{i}.png")
    base = tmp_path / "base"
    trainer.main(["--data", str(tmp_path / "data"), "--out", str(base), "--preset", "small", "--steps", "3",
                  "--batch", "2", "--crop", "64", "--val-every", "100"])  # fmt: skip
    threads = torch.get_num_threads()
    argv = [SCRIPT, "--data", tmp_path / "data", "--base", f"grm={base / 'weights.safetensors'}", "--qualities", "1", "2",
            "--budget", "60", "--device", "cpu", "--batch", "2", "--crop", "64", "--threads", "1", "--calibrate", "6",
            "--out", tmp_path / "ft"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", list(map(str, argv)))
    runpy.run_path(str(SCRIPT), run_name="__main__")
    torch.set_num_threads(threads)
    assert "steps each" in capsys.readouterr().out

    summary = json.loads((tmp_path / "ft" / "export" / "summary.json").read_text())
    planned = summary["steps_planned"]
    assert planned > 0 and planned % 100 == 0 and summary["wall_seconds"] < 60
    for q in (1, 2):
        export = tmp_path / "ft" / "export" / f"grm-small-q{q}"
        config = registry.read_config(export / "weights.safetensors")
        assert config["quality"] == q and config["init"]["steps"] == 3
        assert 3 < config["steps"] <= 3 + planned  # the time limit may stop a run a little early
        assert (export / "log.csv").exists()
        with safe_open(str(export / "weights.safetensors"), "pt") as f:
            assert f.get_tensor("g_a.0.weight").dtype == torch.float16
