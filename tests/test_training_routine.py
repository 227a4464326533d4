"""The training routine on tiny runs: the background CPU run, the GPU upload and run, the ship gate."""

import argparse
import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refcodec.eval import bdrate
from refcodec.models import registry

from conftest import load_script, natural_image


@pytest.fixture
def datasets(tmp_path):
    """A data root laid out like ../shared/datasets, with a few small generated photos."""
    root = tmp_path / "datasets"
    for i, split in enumerate(["photos/train", "photos/val", "bsds500/train", "bsds500/test", "bsds500/val"]):
        folder = root / split
        folder.mkdir(parents=True)
        for j in range(3):
            natural_image(96, 80, seed=10 * i + j).save(folder / f"{j}.png")
    return root


def test_continue_training_starts_variable_rate_then_resumes(datasets, tmp_path):
    script = load_script("continue_training")
    out = tmp_path / "run"
    common = ["--out", str(out), "--data-root", str(datasets), "--batch", "2", "--crop", "64", "--val-images", "1",
              "--save-every", "1", "--nice", "0", "--threads", "1", "--no-compile", "--preset", "small"]  # fmt: skip
    carried = tmp_path / "training" / "grm-small-vr.safetensors"
    common = [*common, "--carry", str(carried)]
    assert script.initial_weights(carried=carried) == "grm/small/vr"  # nothing carried yet: the shipped model
    script.main([*common, "--minutes", "0"])  # the first step ends past the limit: one step, saved
    script.main([*common, "--minutes", "0"])  # resumed from the checkpoint: one more
    rows = list(csv.DictReader(open(out / "log.csv")))
    base = registry.read_config(registry.weights_path("grm/small/vr"))["steps"]
    assert [int(r["step"]) for r in rows] == [base + 1, base + 2]
    model = registry.load_model(str(out / "weights.safetensors"), 5.5)
    assert model.id == "grm/small/vr" and model.config["steps"] == base + 2
    assert model.config["data"][0].endswith("photos/train")
    assert model.config["ema"] == script.EMA  # the exported candidate is the weight average

    # the run is carried as it would ship (float16) and the next session's new run starts from it
    kept = registry.load_model(str(carried), 5.5)
    assert kept.config["steps"] == base + 2
    assert all(t.dtype == torch.float16 for t in load_file(carried).values() if t.is_floating_point())
    assert script.initial_weights(carried=carried) == str(carried)
    script.main([*common, "--minutes", "0", "--out", str(tmp_path / "next")])
    rows = list(csv.DictReader(open(tmp_path / "next" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [base + 3]
    assert registry.read_config(carried)["steps"] == base + 3


def test_the_wide_model_starts_from_the_widened_shipped_one(datasets, tmp_path, monkeypatch):
    """--preset medium: before a carried or shipped grm/medium/vr exists, the run widens grm/small/vr (issue 36)."""
    script = load_script("continue_training")
    shipped = registry.weights_path
    monkeypatch.setattr(registry, "weights_path", lambda ref: tmp_path / "none.safetensors" if ref == "grm/medium/vr" else shipped(ref))
    carried = tmp_path / "training" / "grm-medium-vr.safetensors"
    assert script.carried_path(preset="medium").name == carried.name
    assert script.initial_weights(carried=carried, preset="medium") == "grm/small/vr"
    out = tmp_path / "medium"
    script.main(["--out", str(out), "--data-root", str(datasets), "--batch", "2", "--crop", "64", "--val-images", "1",
                 "--save-every", "1", "--nice", "0", "--threads", "1", "--no-compile", "--preset", "medium",
                 "--carry", str(carried), "--minutes", "0"])  # fmt: skip
    base = registry.read_config(registry.weights_path("grm/small/vr"))["steps"]
    model = registry.load_model(str(carried), 8)
    assert (model.N, model.M) == (registry.PRESETS["medium"]["N"], registry.PRESETS["medium"]["M"])
    assert model.id == "grm/medium/vr" and model.config["steps"] == base + 1
    assert model.config["init"]["how"].startswith("widened from N=64, M=96")
    assert script.initial_weights(carried=carried, preset="medium") == str(carried)  # the next session continues it


def test_cooldown_branches_off_the_run_and_leaves_it_as_it_was(datasets, tmp_path):
    """--cooldown N trains a copy of the run N steps more, down to a learning rate of 0, and a later call resumes
    it towards the same end; the run itself, and its next session, go on at the peak rate."""
    script = load_script("continue_training")
    out, branch = tmp_path / "run", tmp_path / "run-cooldown"
    common = ["--out", str(out), "--data-root", str(datasets), "--batch", "2", "--crop", "64", "--val-images", "1",
              "--save-every", "1", "--nice", "0", "--threads", "1", "--no-compile", "--preset", "small",
              "--carry", str(tmp_path / "c.safetensors")]  # fmt: skip
    with pytest.raises(SystemExit, match="has no checkpoint"):
        script.main([*common, "--cooldown", "2"])
    script.main([*common, "--minutes", "0"])
    before = (out / "checkpoint.pt").read_bytes()
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    script.main([*common, "--cooldown", "2"])
    assert (out / "checkpoint.pt").read_bytes() == before  # the run is untouched
    state = torch.load(branch / "checkpoint.pt", weights_only=False)
    assert state["step"] == step + 2 and state["optimizer"]["param_groups"][0]["lr"] == 0.0  # decayed to 0
    assert [int(r["step"]) for r in csv.DictReader(open(branch / "log.csv"))] == [step, step + 1, step + 2]  # the log goes on
    candidate = registry.read_config(branch / "weights.safetensors")
    assert candidate["steps"] == step + 2 and candidate["cooldown"] == {"steps": 2, "until": step + 2}
    script.main([*common, "--cooldown", "5"])  # the branch has reached its end: resumed, nothing more to train
    assert torch.load(branch / "checkpoint.pt", weights_only=False)["step"] == step + 2
    script.main([*common, "--minutes", "0"])  # the run goes on from where it was, at its own rate
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == step + 1 and state["optimizer"]["param_groups"][0]["lr"] > 0
    with pytest.raises(SystemExit):
        script.main([*common])  # neither --minutes nor --cooldown


def test_continue_training_compiles_the_model_unless_told_not_to(tmp_path, monkeypatch):
    script = load_script("continue_training")
    commands = []
    monkeypatch.setattr(script.trainer, "main", commands.append)
    monkeypatch.setattr(script, "carry", lambda run, path: None)
    for extra in ([], ["--no-compile"]):
        script.main(["--minutes", "1", "--out", str(tmp_path / "run"), "--nice", "0", *extra])
    assert ["--compile" in c for c in commands] == [True, False]


def test_continue_training_trains_the_default_model_unless_told_otherwise(tmp_path, monkeypatch):
    """Without --preset the routine trains the default model's preset: the wide one once shipped (issue 36)."""
    script = load_script("continue_training")
    commands = []
    monkeypatch.setattr(script.trainer, "main", commands.append)
    monkeypatch.setattr(script, "carry", lambda run, path: None)
    shipped = {"grm/small/vr", "grm/small/vr-ms-ssim"}
    monkeypatch.setattr(registry, "weights_path", lambda i: tmp_path / ("shipped" if i in shipped else "absent") / "w.safetensors")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "w.safetensors").touch()
    run = ["--minutes", "1", "--out", str(tmp_path / "run"), "--nice", "0", "--init", "w.safetensors"]
    script.main(run)
    shipped.add("grm/medium/vr")
    script.main(run)
    script.main([*run, "--metric", "ms-ssim"])  # no wide MS-SSIM model is shipped
    script.main([*run, "--preset", "small"])
    assert [c[c.index("--preset") + 1] for c in commands] == ["small", "medium", "small", "small"]


def test_continue_training_trains_on_other_folders_when_told(tmp_path, monkeypatch):
    """--data replaces photos/train and BSDS500's splits: a 512-px final phase on the photos alone, whose images
    hold such crops without upscaling."""
    script = load_script("continue_training")
    commands = []
    monkeypatch.setattr(script.trainer, "main", commands.append)
    monkeypatch.setattr(script, "carry", lambda run, path: None)
    run = ["--minutes", "1", "--out", str(tmp_path / "run"), "--nice", "0", "--data-root", "root", "--init", "w.safetensors"]
    script.main(run)
    script.main([*run, "--data", "a", "b", "--crop", "512", "--batch", "2"])
    folders = [c[c.index("--data") + 1 : c.index("--val")] for c in commands]
    assert folders == [[str(Path("root", p)) for p in ("photos/train", "bsds500/train", "bsds500/test")], ["a", "b"]]
    assert commands[1][commands[1].index("--crop") + 1] == "512" and commands[1][commands[1].index("--batch") + 1] == "2"


def test_continue_training_passes_a_grow_warmup_to_a_new_run_only(tmp_path, monkeypatch):
    """--grow-warmup (and --grow-reseed) start the wide model's ramp in a new run; a resumed run keeps its own."""
    script = load_script("continue_training")
    commands = []
    monkeypatch.setattr(script.trainer, "main", commands.append)
    monkeypatch.setattr(script, "carry", lambda run, path: None)
    run = tmp_path / "run"
    grow = ["--preset", "medium", "--grow-warmup", "1000", "--grow-reseed", "200", "--grown-from", "64x96", "--init", "w.safetensors"]
    script.main(["--minutes", "1", "--out", str(run), "--nice", "0", *grow])
    run.mkdir()
    (run / "checkpoint.pt").touch()
    script.main(["--minutes", "1", "--out", str(run), "--nice", "0", *grow])
    new, resumed = commands
    assert new[new.index("--grow-warmup") + 1] == "1000" and new[new.index("--grown-from") + 1] == "64x96"
    assert new[new.index("--grow-reseed") + 1] == "200"
    assert "--grow-warmup" not in resumed and "--grow-reseed" not in resumed and "--resume" in resumed


def test_gpu_upload_fits_and_the_run_trains(datasets, tmp_path, monkeypatch):
    script = load_script("gpu_train")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "big.bin").write_bytes(b"x" * 100_000)  # stands for the project's own files
    (repo / ".gitignore").write_text("/gpu_data/\n/.whl/\n")
    monkeypatch.chdir(repo)
    prepare = ["prepare", "--init", "grm/small/vr", "--data-root", str(datasets), "--no-wheels"]
    script.main(prepare)  # 64 MiB: every image fits
    assert len(list((repo / "gpu_data" / "train").iterdir())) == 9
    init = (repo / "gpu_data" / "init.safetensors").stat().st_size
    photos = sorted((datasets / "photos/train").glob("*.png"))
    limit = script.MARGIN + script.tree_size(repo) + init + sum(p.stat().st_size for p in photos[:2]) + photos[2].stat().st_size // 2
    script.main([*prepare, "--limit", str(limit)])  # room for two and a half photos: two, from photos/train first
    copied = sorted(p.name for p in (repo / "gpu_data" / "train").iterdir())
    assert copied == ["0000-train-0.png", "0001-train-1.png"]
    sent = script.tree_size(repo) + sum(f.stat().st_size for f in (repo / "gpu_data").rglob("*") if f.is_file())
    assert sent <= limit - script.MARGIN
    script.main(["train", "--minutes", "0", "--out", str(tmp_path / "out"), "--run", str(tmp_path / "gpu-run"),
                 "--batch", "1", "--crop", "64", "--workers", "0", "--device", "cpu"])  # fmt: skip
    back = registry.load_model(str(tmp_path / "out" / "weights.safetensors"), 2.0)
    assert back.levels == 9 and (tmp_path / "out" / "log.csv").is_file()
    assert back.config["ema"] == 0.999
    script.main(["train", "--minutes", "0", "--out", str(tmp_path / "ms"), "--run", str(tmp_path / "gpu-run-ms"), "--batch", "1",
                 "--crop", "192", "--workers", "0", "--device", "cpu", "--metric", "ms-ssim"])  # fmt: skip
    assert registry.read_config(tmp_path / "ms" / "weights.safetensors")["metric"] == "ms-ssim"
    script.main(["train", "--minutes", "0", "--out", str(tmp_path / "wide"), "--run", str(tmp_path / "gpu-run-wide"), "--batch", "1",
                 "--crop", "64", "--workers", "0", "--device", "cpu", "--preset", "medium"])  # fmt: skip
    assert registry.read_config(tmp_path / "wide" / "weights.safetensors")["M"] == registry.PRESETS["medium"]["M"]

    # carried weights (tracked, uploaded with the tree) are not copied a second time
    shutil.copyfile(registry.weights_path("grm/small/vr"), repo / "carried.safetensors")
    subprocess.run(["git", "add", "carried.safetensors"], cwd=repo, check=True)
    script.main(["prepare", "--init", "carried.safetensors", "--data-root", str(datasets), "--no-wheels"])
    assert not (repo / "gpu_data" / "init.safetensors").exists()

    # --check: every k-th image of a folder for the GPU check, which the printed command runs after the training
    check = ["prepare", "--init", "grm/small/vr", "--data-root", str(datasets), "--no-wheels", "--check", str(datasets / "bsds500/val")]
    script.main([*check, "--check-every", "2"])
    assert sorted(p.name for p in (repo / "gpu_data" / "check").iterdir()) == ["0.png", "2.png"]
    args = argparse.Namespace(minutes=6.5, metric="mse", check="x", preset=None)
    command = script.device_command(repo / "gpu_data" / "init.safetensors", args)
    train, tests, effort = command.split("; ")
    assert "gpu_train.py train" in train and "--minutes 6.5" in train and train.startswith("python3 -m pip install")
    assert "tests/test_gpu.py" in tests and "$OUT/" in tests
    assert "effort.py gpu_data/check" in effort and "--device cuda --threads 2 --measure-only -o $OUT/effort-gpu" in effort
    assert ";" not in script.device_command(repo / "x", argparse.Namespace(minutes=8, metric="mse", check=None, preset=None))
    wide = script.device_command(repo / "x", argparse.Namespace(minutes=8, metric="mse", check=None, preset="medium"))
    assert wide.endswith("--out $OUT --preset medium")


def test_ship_gate_judges_against_the_shipped_model(datasets, tmp_path, monkeypatch):
    """A candidate no better than the shipped model (here: the same weights) is refused."""
    gate = load_script("ship_gate")
    candidate = tmp_path / "candidate.safetensors"
    model = registry.load_model("grm/small/vr")
    registry.save(model, candidate, model.config)
    monkeypatch.chdir(tmp_path)
    sets = [str(datasets / "photos/val"), str(datasets / "bsds500/val")]
    status = gate.main([str(candidate), "--val", *sets, "--limit", "1", "--threads", "1"])
    verdicts = json.loads((tmp_path / "results/gate/verdicts.json").read_text())
    verdict = verdicts[-1]
    assert status == 1 and not verdict["accepted"] and verdict["shipped"] == ["grm/small/vr"]
    for s in verdict["sets"].values():
        assert all(s["candidate"][k] == s["shipped"][k] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb"))
        assert len(s["candidate"]["bpp"]) == 5 and s["candidate_vs_shipped"]["bd_rate"] == 0
        assert s["top"]["candidate"] == s["top"]["shipped"] and s["candidate_vs_shipped_below_top"] == pytest.approx(0, abs=1e-9)
        assert {"candidate_vs_shipped", "candidate_vs_webp", "candidate_vs_hevc", "shipped_vs_webp"} <= set(s)
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "results/gate/cache").iterdir())
    assert cached == ["hevc", "hevc", "shipped", "shipped", "webp", "webp"]
    with pytest.raises(SystemExit):
        gate.main([str(candidate), "--qualities", "1", "2", "3"])  # fewer than five qualities


def test_ship_gate_passes_the_recipe_to_the_model_card(tmp_path, monkeypatch):
    """--ship with --recipe: an accepted candidate goes to ship_weights.py with its recipe (the card's "Recipe" line)."""
    gate = load_script("ship_gate")
    candidate = tmp_path / "candidate.safetensors"
    model = registry.load_model("grm/small/vr")
    registry.save(model, candidate, model.config)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gate, "ROOT", tmp_path)  # no carried run of the repository's is touched
    monkeypatch.setattr(gate, "judge", lambda *args: {"accepted": True, "shipped": ["grm/small/vr"], "sets": {}})
    monkeypatch.setattr(gate, "report", lambda verdict: "accepted")
    calls = []
    monkeypatch.setattr(gate.subprocess, "run", lambda command, check: calls.append(command))
    assert gate.main([str(candidate), "--ship", "--run", "runs/x", "--recipe", "grown from grm/small/vr"]) == 0
    assert Path(calls[-1][1]).name == "ship_weights.py" and calls[-1][-2:] == ["--recipe", "grown from grm/small/vr"]
    assert json.loads((tmp_path / "results/gate/verdicts.json").read_text())[-1]["accepted"]


def test_the_gate_sees_the_whole_curve():
    """Issue 36: a candidate that gains at the top but loses more than 1% below the shipped model's top is
    refused, and so is one whose top is lower; BD-rate below the top is that of the range below it."""
    gate = load_script("ship_gate")
    psnr = [28.0, 30.0, 32.0, 33.0, 33.5]
    shipped = bdrate.Curve("shipped", np.array([0.2, 0.35, 0.6, 0.85, 1.05]), np.array(psnr), np.ones(5))
    cheaper = bdrate.Curve("c", shipped.bpp * 0.9, np.array(psnr), np.ones(5))
    assert bdrate.bd_rate_below(shipped, cheaper, 33.0) == pytest.approx(-10, abs=0.01)
    wide = bdrate.Curve("w", np.array([0.21, 0.37, 0.63, 0.89, 1.0, 1.3]), np.array(psnr + [36.0]), np.ones(6))  # +5% below, far higher top
    assert bdrate.bd_rate_below(shipped, wide, 33.0) == pytest.approx(5, abs=0.5)

    def judged(test):
        d = bdrate.delta(shipped, test)
        return {"candidate_vs_shipped": d, "candidate_vs_shipped_below_top": bdrate.bd_rate_below(shipped, test, 33.0),
                "top": {"candidate": float(test.psnr.max()), "shipped": 33.5}}  # fmt: skip

    assert gate.accepted([judged(cheaper)])
    lower_top = bdrate.Curve("l", cheaper.bpp[:4], np.array(psnr[:4]), np.ones(4))
    assert not gate.accepted([judged(lower_top)])  # cheaper where it reaches, but it stops below the shipped top
    verdict = judged(wide)
    verdict["candidate_vs_shipped"] = dict(verdict["candidate_vs_shipped"], bd_rate=-1.0)  # even if the whole range gained
    assert not gate.accepted([verdict])


def test_ship_gate_judges_a_wide_candidate_against_the_shipped_model_of_its_preset(monkeypatch):
    """A grm/medium/vr candidate must beat grm/small/vr until a wide model ships, then the shipped wide one."""
    gate = load_script("ship_gate")
    monkeypatch.setattr(registry, "shipped_ids", lambda: ["grm/small/vr", "grm/small/vr-ms-ssim"])
    assert gate.shipped_models("mse", "medium") == ["grm/small/vr"]
    monkeypatch.setattr(registry, "shipped_ids", lambda: ["grm/medium/vr", "grm/small/vr", "grm/small/vr-ms-ssim"])
    assert gate.shipped_models("mse", "medium") == ["grm/medium/vr"]
    assert gate.shipped_models("mse", "small") == ["grm/small/vr"]  # the fast model is judged against itself
    assert gate.shipped_models("ms-ssim", "small") == ["grm/small/vr-ms-ssim"]


def test_ship_gate_judges_an_ms_ssim_candidate_on_ms_ssim_against_the_mse_model(tmp_path, monkeypatch):
    """Before an MS-SSIM model ships, its candidate must beat the MSE model it is fine-tuned from, in MS-SSIM."""
    gate = load_script("ship_gate")
    if "grm/small/vr-ms-ssim" in registry.shipped_ids():  # once shipped, an MS-SSIM candidate is judged against it
        assert gate.shipped_models("ms-ssim") == ["grm/small/vr-ms-ssim"]
    monkeypatch.setattr(registry, "shipped_ids", lambda: ["grm/small/vr"])  # before an MS-SSIM model shipped
    val = tmp_path / "val"
    val.mkdir()
    natural_image(192, 176, seed=3).save(val / "0.png")  # MS-SSIM's five scales need more than 160 pixels a side
    candidate = tmp_path / "candidate.safetensors"
    model = registry.load_model("grm/small/vr")
    registry.save(model, candidate, {**model.config, "metric": "ms-ssim", "id": "grm/small/vr-ms-ssim"})
    monkeypatch.chdir(tmp_path)
    assert gate.main([str(candidate), "--val", str(val), "--limit", "1", "--threads", "1"]) == 1
    verdict = json.loads((tmp_path / "results/gate/verdicts.json").read_text())[-1]
    assert verdict["metric"] == "ms-ssim" and verdict["shipped"] == ["grm/small/vr"]
    [s] = verdict["sets"].values()
    assert 0 < s["candidate_vs_shipped"]["bd_rate"] < 1  # the same weights; its longer model id costs the header 8 bytes
    low, _ = s["candidate_vs_shipped"]["psnr_range"]  # the common range, here of MS-SSIM in dB
    assert min(s["candidate"]["ms-ssim-rgb"]) > 0.5 and low == pytest.approx(-10 * math.log10(1 - min(s["candidate"]["ms-ssim-rgb"])))
    assert json.loads((tmp_path / "results/learning-curve/gate-log.json").read_text())[-1]["id"] == "grm/small/vr-ms-ssim"


def test_model_cards_keep_the_data_of_every_span_of_steps():
    ship = load_script("ship_weights")
    photos, bsds = ["photos/train", "bsds500/train"], ["bsds500/train"]
    assert ship.data_history(None, bsds, 18009) == [{"data": bsds, "steps": [1, 18009]}]
    first = ship.data_history({"data": bsds, "steps": 18009}, photos, 27867)  # a run from a shipped model, on new data
    assert first == [{"data": bsds, "steps": [1, 18009]}, {"data": photos, "steps": [18010, 27867]}]
    card = {"data": photos, "steps": 27867, "data_history": first}
    assert ship.data_history(card, photos, 30859) == [{"data": bsds, "steps": [1, 18009]}, {"data": photos, "steps": [18010, 30859]}]
    assert card["data_history"] == first  # the earlier card is not changed
    assert ship.data_history(card, bsds, 31000)[-1] == {"data": bsds, "steps": [27868, 31000]}


def test_each_metric_of_a_model_has_its_own_rd_curve(tmp_path, monkeypatch):
    """Shipping the MS-SSIM model writes results/<set>/grm-small-ms-ssim.json from its card, beside the MSE
    model's grm-small.json, which it leaves alone."""
    ship = load_script("ship_weights")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    registry.WEIGHTS_DIR.mkdir()
    for model_id, bpp in (("grm/small/vr", 0.5), ("grm/small/vr-ms-ssim", 0.4)):
        points = [{"quality": q, "bpp": bpp * q, "psnr-rgb": 30.0 + q, "ms-ssim-rgb": 0.9, "encoding_time": 1.0, "decoding_time": 1.0}
                  for q in (1, 8)]  # fmt: skip
        card = {"id": model_id, "evaluation": {"qualities": points}}
        registry.weights_path(model_id).with_suffix(".json").write_text(json.dumps(card))
    ship.write_curve("grm", "small", "ms-ssim", tmp_path / "kodak")
    assert sorted(p.name for p in (tmp_path / "kodak").iterdir()) == ["grm-small-ms-ssim.json"]
    ship.write_curve("grm", "small", "mse", tmp_path / "kodak")
    curves = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "kodak").iterdir()}
    assert curves["grm-small-ms-ssim"]["name"] == "refcodec grm/small/vr-ms-ssim"
    assert curves["grm-small-ms-ssim"]["results"]["bpp"] == [0.4, 3.2] and curves["grm-small"]["results"]["bpp"] == [0.5, 4.0]


def test_release_keeps_the_replaced_curve_and_remakes_the_tables_over_every_curve(tmp_path, monkeypatch):
    """scripts/release.py: HEAD's curve is kept under the replaced release's version, versions sort as numbers
    (0.10.0 after 0.9.0), the newest kept MSE release is an anchor, and the BD rows cover both ranges."""
    release, figures = load_script("release"), load_script("figures")
    monkeypatch.chdir(tmp_path)
    kodak = tmp_path / "results" / "kodak"
    kodak.mkdir(parents=True)
    qualities = [0, 1, 2, 3, 4, 8]
    psnr = [26.0, 28.0, 29.0, 30.0, 31.0, 32.0]
    anchor = [0.1 * 2 ** ((p - 26) / 2) for p in psnr]  # log-rate linear in PSNR: every interpolation is exact

    def write(name, bpp, **more):
        curve = {"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": [0.9] * 6}, **more}
        return json.dumps(curve)

    for codec, name in (("jpeg", "JPEG"), ("webp", "WebP"), ("hevc", "HEVC")):
        (kodak / f"{codec}.json").write_text(write(name, anchor))
    shipped = write("refcodec grm/small/vr", [b / 2 for b in anchor], qualities=qualities)  # half WebP's rate
    (kodak / "grm-small.json").write_text(shipped)
    (kodak / "grm-small-ms-ssim.json").write_text(write("refcodec grm/small/vr-ms-ssim", anchor, qualities=qualities))
    (kodak / "grm-small-vr-0.9.0.json").write_text(write("refcodec grm/small/vr (0.9.0)", anchor, qualities=qualities))
    (kodak / "grm-small-q1-q4.json").write_text(write("refcodec grm/small/q1-q4 (0.2.0)", anchor))
    (kodak / "bdrate.json").write_text("{}")
    monkeypatch.setattr(release, "at_head", lambda path: shipped if path == release.curve_file("grm/small/vr") else None)
    monkeypatch.setattr(registry, "shipped_ids", lambda: ["grm/small/vr", "grm/small/vr-ms-ssim"])

    kept = release.keep_replaced("grm/small/vr", "0.10.0", 57701)
    assert kept == figures.KODAK / "grm-small-vr-0.10.0.json"
    curve = json.loads(kept.read_text())
    assert curve["name"] == "refcodec grm/small/vr (0.10.0)" and "57,701 steps" in curve["description"]
    assert curve["results"] == json.loads(shipped)["results"]
    with pytest.raises(SystemExit, match="HEAD has no"):
        release.keep_replaced("grm/small/vr-ms-ssim", "0.10.0", 1)

    curves = figures.compare_curves()
    assert [p.stem for p in curves] == ["jpeg", "webp", "hevc", "grm-small", "grm-small-ms-ssim", "grm-small-vr-0.10.0",
                                        "grm-small-vr-0.9.0", "grm-small-q1-q4"]  # fmt: skip
    assert figures.anchors(curves) == [*figures.ANCHORS, "refcodec grm/small/vr", figures.RETIRED_ANCHOR, "refcodec grm/small/vr (0.10.0)"]
    assert release.bumped("0.10.0") == "0.11.0" and release.version_of('x = 1\n__version__ = "0.10.0"\n') == "0.10.0"
    assert release.within(json.loads(shipped))["results"]["bpp"] == [b / 2 for b in anchor[1:5]]
    rows = release.bd_rows(curves, [release.curve_file("grm/small/vr"), kept], against=("webp",))
    assert rows == ["- refcodec grm/small/vr (26.0-32.0 dB): webp -50.0% (q1-4: -50.0%)",
                    "- refcodec grm/small/vr (0.10.0) (26.0-32.0 dB): webp -50.0% (q1-4: -50.0%)"]  # fmt: skip

    # a new model (the wide one) beside the small one: an anchor too, and with it in the README's figure, not the releases
    (kodak / "grm-medium.json").write_text(write("refcodec grm/medium/vr", [b / 4 for b in anchor], qualities=qualities))
    monkeypatch.setattr(registry, "shipped_ids", lambda: ["grm/medium/vr", "grm/small/vr", "grm/small/vr-ms-ssim"])
    curves = figures.compare_curves()
    assert [p.stem for p in curves][3:6] == ["grm-medium", "grm-small", "grm-small-ms-ssim"]
    assert figures.anchors(curves)[3:5] == ["refcodec grm/medium/vr", "refcodec grm/small/vr"]
    figures.current_figure()
    table = json.loads((figures.CURRENT / "bdrate.json").read_text())["anchors"]
    assert set(table) == {"HEVC", "WebP"} and table["WebP"]["refcodec grm/medium/vr"]["bd_rate"] == pytest.approx(-75)
    assert not any("(0.10.0)" in name for name in table["WebP"]) and (figures.CURRENT / "rd-psnr.png").is_file()


def test_release_finds_the_new_model_and_the_shipped_one_it_was_grown_from(monkeypatch):
    """release.py on the repository's own git: HEAD's binary weights count as held (reading them as text failed
    once), and a new wide model names the shipped small one its config's grow records, not its carried run."""
    release = load_script("release")
    assert release.in_head(release.weights_file("grm/small/vr"))
    assert not release.in_head(Path("src/refcodec/models/weights/no-such-model.safetensors"))
    configs = {"grm/medium/vr": {"name": "grm", "metric": "mse", "grow": {"N": 64, "M": 96, "start": 98451, "steps": 1500}},
               "grm/medium/vr-ms-ssim": {"name": "grm", "metric": "ms-ssim", "grow": {"N": 64, "M": 96}},
               "grm/paper/vr": {"name": "grm", "metric": "mse"}}  # fmt: skip
    monkeypatch.setattr(registry, "read_config", lambda path: next(c for i, c in configs.items() if registry.weights_path(i) == path))
    assert release.grown_from("grm/medium/vr") == "grm/small/vr"
    assert release.grown_from("grm/medium/vr-ms-ssim") == "grm/small/vr-ms-ssim"
    with pytest.raises(SystemExit, match="grown from no shipped one"):
        release.grown_from("grm/paper/vr")


def test_kodak_learning_curve_gives_each_kept_release_its_bd_rates(tmp_path):
    """learning_curve.py --kodak: every kodak-grm-small-<steps>.json, in step order, against WebP and HEVC over
    its whole range and over qualities 1-4; the per-quality models' curves name their qualities by id."""
    lc = load_script("learning_curve")
    psnr = [26.0, 28.0, 29.0, 30.0, 31.0, 32.0]
    webp = [0.1 * 2 ** ((p - 26) / 2) for p in psnr]  # log-rate linear in PSNR: every interpolation is exact
    anchors, points = tmp_path / "kodak", tmp_path / "learning-curve"
    anchors.mkdir()
    points.mkdir()

    def write(path, name, bpp, qualities=None, values=psnr):
        report = {"name": name, "results": {"bpp": bpp, "psnr-rgb": values}} | ({"qualities": qualities} if qualities else {})
        path.write_text(json.dumps(report))

    write(anchors / "webp.json", "WebP", webp)
    write(anchors / "hevc.json", "HEVC", [b / 2 for b in webp])
    write(points / "kodak-grm-small-43001.json", "refcodec grm/small/vr", webp, [0, 1, 2, 3, 4, 8])
    write(points / "kodak-grm-small-9000.json", "refcodec grm/small", webp[1:5], [f"grm/small/q{q}" for q in (1, 2, 3, 4)], psnr[1:5])
    write(points / "kodak-grm-small-ms-ssim-40851.json", "refcodec grm/small/vr-ms-ssim", webp, [0, 1, 2, 3, 4, 8])  # not this curve
    write(points / "kodak-grm-medium-96000.json", "refcodec grm/medium/vr", webp, [0, 1, 2, 3, 4, 8])  # the wide model goes on
    rows = lc.kodak_points(points, anchors)
    assert [(r["preset"], r["steps"], r["variable_rate"]) for r in rows] == [("small", 9000, False), ("small", 43001, True), ("medium", 96000, True)]
    for r in rows:
        assert r["vs_webp"] == pytest.approx(0, abs=1e-6) and r["vs_hevc"] == pytest.approx(100)
        assert r["vs_webp_q1_4"] == pytest.approx(0, abs=1e-6) and r["vs_hevc_q1_4"] == pytest.approx(100)
    lc.kodak_plot(rows, points)
    assert json.loads((points / "kodak.json").read_text())["points"] == rows and (points / "kodak.png").stat().st_size > 0


def test_the_carried_run_is_committed_only_within_the_weights_budget(tmp_path, monkeypatch):
    """continue_training says to commit the carried weights only where they fit the 40 MB with the shipped ones
    (issue 36: the wide model's 26.4 MB fit beside both small models' 13.3 MB; a second wide file does not)."""
    ct = load_script("continue_training")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    registry.WEIGHTS_DIR.mkdir()
    carried = tmp_path / "training" / "grm-medium-vr.safetensors"
    carried.parent.mkdir()
    for path, size in ((registry.WEIGHTS_DIR / "grm-small-vr.safetensors", 6_630_000),
                       (registry.WEIGHTS_DIR / "grm-small-vr-ms-ssim.safetensors", 6_630_000), (carried, 26_400_000)):  # fmt: skip
        with open(path, "wb") as f:
            f.truncate(size)  # only the sizes count
    assert ct.carry_note(carried, "runs/medium").endswith("commit it, so that the next session continues this run")
    with open(carried.parent / "grm-medium-vr-ms-ssim.safetensors", "wb") as f:
        f.truncate(26_400_000)
    note = ct.carry_note(carried, "runs/medium")
    assert "do not commit it" in note and "(13.3 MB)" in note and "(66.1 MB)" in note and "resumes runs/medium" in note


def test_the_tracked_weights_stay_within_the_repository_budget():
    """Weights are the only large files in git, and together (shipped and carried) at most 40 MB."""
    root = registry.WEIGHTS_DIR.parents[3]
    listed = subprocess.run(["git", "ls-files", "*.safetensors"], cwd=root, capture_output=True, text=True)
    if listed.returncode or not listed.stdout:
        pytest.skip("not a git checkout")
    sizes = {name: (root / name).stat().st_size for name in listed.stdout.split() if (root / name).is_file()}
    assert sum(sizes.values()) <= load_script("continue_training").WEIGHTS_BUDGET, sizes
