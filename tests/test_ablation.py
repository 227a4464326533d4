"""scripts/ablation.py (the paper's Figure 7) end to end on a tiny budget: train, eval, report, then reuse."""

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import natural_image

from refcodec.models import registry

SCRIPT = Path(__file__).parents[1] / "scripts" / "ablation.py"
OFF = {"reference": False, "confidence": False, "hyperprior": False, "gsdn": False}
FLAGS = {
    "context": OFF,
    "reference": OFF | {"reference": True},
    "confidence": OFF | {"reference": True, "confidence": True},
    "hyperprior": OFF | {"reference": True, "confidence": True, "hyperprior": True},
    "gsdn": {"reference": True, "confidence": True, "hyperprior": True, "gsdn": True},
}


@pytest.fixture
def ablation(tmp_path, monkeypatch, capsys):
    """Run the script in this process (its training runs are subprocesses); returns what it printed."""
    threads = torch.get_num_threads()

    def run(*argv, budget=("--steps", "2", "--fine-tune", "1")):
        cmd = [SCRIPT, "--runs", tmp_path / "runs", "-o", tmp_path / "out", "--qualities", "1", "3", "--crop", "64",
               "--batch", "2", "--jobs", "1", "--threads", "1", *budget, *argv]  # fmt: skip
        monkeypatch.setattr(sys, "argv", list(map(str, cmd)))
        runpy.run_path(str(SCRIPT), run_name="__main__")
        return capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # MS-SSIM is NaN on images under 161 px
def test_ablation_trains_evaluates_reports_and_reuses(tmp_path, ablation):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        natural_image(96, 80, seed=i).save(images / f"{i}.png")
    anchor = tmp_path / "anchor.json"
    anchor.write_text(json.dumps({"name": "Anchor", "results": {"bpp": [0.05, 1.0, 20.0], "psnr-rgb": [1.0, 20.0, 60.0]}}))
    everything = ("--data", images, "--eval", images, "--anchor", anchor)
    ablation(*everything)

    out, runs = tmp_path / "out", tmp_path / "runs"
    for variant, flags in FLAGS.items():
        report = json.loads((out / f"{variant}.json").read_text())
        assert report["flags"] == flags and len(report["results"]["bpp"]) == len(report["results"]["psnr-rgb"]) == 2
        assert [(t["quality"], t["steps"], t["from_step"]) for t in report["training"]] == [(1, 2, 0), (3, 3, 2)]
        for q in (1, 3):
            config = registry.read_config(runs / f"{variant}-small-q{q}" / "weights.safetensors")
            assert config["name"] == "grm" and config["flags"] == flags and config["quality"] == q
    summary = json.loads((out / "ablation.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == list(FLAGS)
    assert summary["recipe"]["steps"] == 2 and summary["recipe"]["fine_tune"] == 1 and summary["recipe"]["crop"] == 64
    assert summary["variants"][0]["vs_previous"] is None
    for v in summary["variants"]:
        for d in [v["vs_anchor"]] + [v["vs_previous"]] * (v["variant"] != "context"):
            assert math.isfinite(d["bd_rate"]) or d["note"] in ("no overlap", "too few points")
        assert all(t["wall_seconds"] >= 0 for t in v["training"])
    table = (out / "ablation.md").read_text()
    assert "BD-rate vs Anchor" in table and all(f"| {label} |" in table for label in ("context only", "+ GSDN (full model)"))
    assert (out / "ablation.png").stat().st_size > 0 and (out / "ablation-rd.png").stat().st_size > 0

    # a second run reuses every finished run and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in [*runs.glob("*/checkpoint.pt"), *out.glob("*.json")] if p.name != "ablation.json"}
    assert "refcodec.cli train" not in ablation(*everything)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # the report alone, from the variants' files: curves with 10% fewer bits per variant at equal PSNR
    for i, variant in enumerate(FLAGS):
        report = json.loads((out / f"{variant}.json").read_text())
        report["results"] |= {"bpp": [0.2 * 0.9**i, 0.5 * 0.9**i], "psnr-rgb": [28.0, 32.0]}
        (out / f"{variant}.json").write_text(json.dumps(report))
    ablation("--stage", "report", "--anchor", anchor)
    summary = json.loads((out / "ablation.json").read_text())
    assert all(abs(v["vs_previous"]["bd_rate"] + 10) < 1e-6 for v in summary["variants"][1:])
    assert all(math.isfinite(v["vs_anchor"]["bd_rate"]) for v in summary["variants"])
    assert "-10.0% (100%)" in (out / "ablation.md").read_text()

    # runs of one budget are never mixed with another
    with pytest.raises(SystemExit, match="another budget"):
        ablation("--stage", "train", "--data", images, budget=("--steps", "3"))
