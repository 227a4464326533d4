"""The scripts in benchmarks/ that run without extra environments."""

import csv
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refcodec.models import registry
from refcodec.sample import sample_image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_kodak_ratios_takes_medians_of_rounds_and_skips_a_missing_compressai(tmp_path):
    image, out = tmp_path / "image.png", tmp_path / "ratios.json"
    sample_image(64, 64).save(image)
    cmd = [sys.executable, str(BENCHMARKS / "kodak_ratios.py"), str(image), "--rounds", "2", "--preset", "small",
           "--threads", "1", "--compressai-python", sys.executable, "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)  # this Python has no CompressAI: measured without it
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 2 and report["preset"] == "small"
    assert set(report["rounds"][0]) == {"wavefront_encode", "wavefront_decode", "raster_encode", "raster_decode"}
    ratios = [r["raster_decode"] / r["wavefront_decode"] for r in report["rounds"]]
    assert report["decode_vs_raster"] == round(sum(ratios) / 2, 2)  # the median of two is their mean
    assert report["decode_vs_mbt2018"] is None and report["encode_vs_mbt2018"] is None


def test_train_step_times_grm_joint_and_variable_rate_grm(tmp_path):
    out = tmp_path / "train-step.json"
    cmd = [sys.executable, str(BENCHMARKS / "train_step.py"), "--batch", "1", "--crop", "64", "--steps", "1",
           "--rounds", "2", "--warmup", "0", "--threads", "1", "--levels", "9", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 2 and set(report["rounds"][0]) == {"joint", "grm", "grm-vr"}
    assert set(report["step_time_vs_joint"]) == {"grm", "grm-vr"} and report["median_steps_per_second"]["grm"] > 0


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables")
def test_allocator_benchmark_compares_both_settings_in_fresh_processes(tmp_path):
    out = tmp_path / "allocator.json"
    cmd = [sys.executable, str(BENCHMARKS / "allocator.py"), "--batch", "1", "--crop", "64", "--steps", "2", "--warmup", "1",
           "--rounds", "1", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert len(report["rounds"]) == 1 and len(report["rounds"][0]["tuned"]["seconds"]) == 2
    default, tuned = report["summary"]["default"], report["summary"]["tuned"]
    assert tuned["faults_per_step"] < default["faults_per_step"]  # freed memory is reused, not faulted in again


def test_vr_gradients_balanced_pulls_are_closer_than_plain_ones(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "gradients.json"
    folder.mkdir()
    for i in range(2):
        sample_image(96, 80, seed=i).save(folder / f"{i}.png")
    fixed = tmp_path / "fixed.safetensors"
    registry.save(registry.build("grm", "small"), fixed, {"name": "grm", "preset": "small", **registry.PRESETS["small"],
                                                          "flags": {}, "quality": 3, "id": "grm/small/q3"})  # fmt: skip
    cmd = [sys.executable, str(BENCHMARKS / "vr_gradients.py"), str(fixed), str(folder), "--batch", "2", "--crop", "64",
           "--qualities", "1", "8", "-o", str(out)]  # fmt: skip
    refused = subprocess.run(cmd, capture_output=True, text=True)  # a fixed-rate model: one line
    assert refused.returncode != 0 and "not a variable-rate model" in refused.stderr and "Traceback" not in refused.stderr
    cmd[2] = "grm/small/vr"
    subprocess.run(cmd, check=True, capture_output=True)
    low, high = json.loads(out.read_text())["rows"]
    assert (low["quality"], high["quality"]) == (1, 8) and high["bpp"] > low["bpp"]
    plain, balanced = (high[f"gradient_{k}"] / low[f"gradient_{k}"] for k in ("plain", "balanced"))
    assert plain > 10 and balanced < plain / 10  # quality 8 (lambda 100x quality 1's) pulls far harder unless balanced


def test_vr_ceiling_bounds_every_quality_by_the_unquantized_round_trip(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "ceiling.json"
    folder.mkdir()
    sample_image(224, 200, seed=1).save(folder / "a.png")
    sample_image(224, 200, seed=2).convert("L").convert("RGB").save(folder / "b.png")
    cmd = [sys.executable, str(BENCHMARKS / "vr_ceiling.py"), "grm/small/vr", str(folder), "--crop", "192", "--qualities", "1", "8",
           "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    rows = json.loads(out.read_text())["images"]
    row = rows["a.png"]
    low, high = row["qualities"]["1.0"], row["qualities"]["8.0"]
    assert low["psnr"] < high["psnr"] and low["max_latent"] < high["max_latent"]
    # rounding finer latents approaches the round trip without quantization (g_s is trained on rounded
    # latents only, so the top quality may pass it by a little, as the script's docstring says)
    for key, ceiling in (("psnr", row["ceiling"]), ("ms_ssim_db", row["ceiling_ms_ssim_db"])):
        assert low[key] < high[key] and abs(high[key] - ceiling) < abs(low[key] - ceiling) / 2
    assert rows["b.png"]["gray_ceiling"] == pytest.approx(rows["b.png"]["ceiling"], abs=0.05)  # a gray image is its own luma
    small = subprocess.run(cmd[:4] + ["--crop", "64"], capture_output=True, text=True)
    assert small.returncode == 2 and "at least 192" in small.stderr.strip().splitlines()[-1]


def test_ms_ssim_phase_scores_real_files_at_four_alignments_of_the_pyramid(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "phase.json"
    folder.mkdir()
    sample_image(200, 193, seed=1).save(folder / "a.png")
    sample_image(96, 96, seed=2).save(folder / "small.png")  # under 177 px: MS-SSIM's five scales do not fit
    cmd = [sys.executable, str(BENCHMARKS / "ms_ssim_phase.py"), str(folder), "--models", "grm/small/vr", "-q", "2", "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["images"] == ["a.png"] and report["phases"] == ["0,0", "0,1", "1,0", "1,1"]
    (row,) = report["models"]["grm/small/vr"]["qualities"]
    (image,) = row["per_image"]
    assert row["quality"] == 2 and row["bpp"] == image["bpp"] > 0
    scores = [image[phase] for phase in report["phases"]]
    assert min(scores) > 5 and max(scores) - min(scores) < 1  # the MSE model does not depend on the phase
    (folder / "a.png").unlink()
    empty = subprocess.run(cmd, capture_output=True, text=True)
    assert empty.returncode == 1 and "no image" in empty.stderr.strip().splitlines()[-1]


def test_effort_reports_the_saving_of_each_effort_per_quality_and_image_and_resumes(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "effort"
    folder.mkdir()
    for i in range(2):
        sample_image(96, 64).rotate(90 * i).save(folder / f"{i}.png")
    cmd = [sys.executable, str(BENCHMARKS / "effort.py"), str(folder), "-q", "1", "3", "--efforts", "default", "--sweep", "4",
           "--threads", "1", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["efforts"] == {"default": 0, "sga4": 4} and len(report["per_image"]) == 2
    assert [p["quality"] for p in report["per_quality"]] == [1, 3]
    for p in report["per_quality"]:
        assert p["sga4"]["bpp"] > 0 and p["default"]["encode_seconds"] > 0
        assert p["sga4"]["objective_rate_change"] + p["sga4"]["objective_distortion_change"] <= 1e-9  # never worse
    assert "BD-rate" in out.with_suffix(".md").read_text() and out.with_suffix(".png").exists()
    cache = json.loads((tmp_path / "effort-cache" / "sga4.json").read_text())
    assert sorted(cache) == ["1|0.png", "1|1.png", "3|0.png", "3|1.png"]
    again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "sga4:" not in again and "0 measurements missing" in again  # everything came from the caches


def test_effort_measures_only_where_the_bench_extra_is_missing_and_reports_here(tmp_path):
    """--measure-only fills the caches (as on a lent GPU, without bjontegaard) and writes no report;
    --report-only then makes it, naming the device every row was encoded on."""
    folder, out = tmp_path / "images", tmp_path / "effort"
    folder.mkdir()
    sample_image(96, 64).save(folder / "0.png")
    cmd = [sys.executable, str(BENCHMARKS / "effort.py"), str(folder), "-q", "1", "3", "--efforts", "default", "--threads", "1", "-o", str(out)]
    without_bench = ("import runpy, sys; sys.modules.update(dict.fromkeys(['bjontegaard', 'scipy', 'matplotlib']));"
                     "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")  # importing any of them fails
    measured = subprocess.run([sys.executable, "-c", without_bench, *cmd[1:], "--measure-only"], check=True, capture_output=True, text=True)
    assert "q3 0.png default" in measured.stdout and not out.with_suffix(".json").exists()
    rows = json.loads((tmp_path / "effort-cache" / "default.json").read_text())
    assert sorted(rows) == ["1|0.png", "3|0.png"] and {r["device"] for r in rows.values()} == {"cpu"}
    subprocess.run([*cmd, "--report-only"], check=True, capture_output=True)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["devices"] == ["cpu"] and "encoded on cpu" in out.with_suffix(".md").read_text()
    if not torch.cuda.is_available():
        refused = subprocess.run([*cmd, "--device", "cuda"], capture_output=True, text=True)
        assert refused.returncode == 1 and refused.stderr.strip() == "effort.py: --device cuda: no CUDA device is available"


def test_effort_of_an_ms_ssim_model_is_reported_in_ms_ssim(tmp_path):
    """An MS-SSIM model's efforts: curves in MS-SSIM (dB) and the objective's D = 1 - MS-SSIM, never worse."""
    folder, out = tmp_path / "images", tmp_path / "effort"
    folder.mkdir()
    sample_image(192, 176).save(folder / "0.png")
    model = registry.load_model("grm/small/vr")
    weights = tmp_path / "ms.safetensors"
    registry.save(model, weights, {**model.config, "metric": "ms-ssim", "id": "grm/small/vr-ms-ssim"})
    cmd = [sys.executable, str(BENCHMARKS / "effort.py"), str(folder), "--model", str(weights), "-q", "1", "3",
           "--efforts", "default", "--sweep", "4", "--threads", "1", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["metric"] == "ms-ssim" and report["score"] == "MS-SSIM-RGB in dB"
    rows = json.loads((tmp_path / "effort-cache" / "default.json").read_text())
    for p in report["per_quality"]:
        default = rows[f"{p['quality']:g}|0.png"]
        assert p["default"]["score"] == pytest.approx(-10 * math.log10(1 - default["ms_ssim"]))
        assert p["sga4"]["objective_rate_change"] + p["sga4"]["objective_distortion_change"] <= 1e-9  # never worse
    assert "MS-SSIM dB change" in out.with_suffix(".md").read_text()


def test_train_precision_compares_bf16_convolutions_with_float32(tmp_path):
    """The step's loss and gradient with bfloat16 convolutions are close to float32's but not the same, and
    `train` runs refcodec train with them: the same batches, a different (but close) loss."""
    folder, out = tmp_path / "images", tmp_path / "precision.json"
    folder.mkdir()
    for i in range(2):
        sample_image(96, 64).rotate(180 * i).save(folder / f"{i}.png")
    script = str(BENCHMARKS / "train_precision.py")
    cmd = [sys.executable, script, str(folder), "--batch", "2", "--crop", "64", "--steps", "1", "--rounds", "1", "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    result = json.loads(out.read_text())
    loss = result["loss"]
    assert loss["bfloat16 convolutions"]["loss"] == pytest.approx(loss["float32"]["loss"], rel=0.05)
    assert 0.3 < result["gradient"]["cosine"] < 1 and set(result["gradient"]["modules"]) >= {"g_a.0", "g_s.6", "param_nets.0"}
    assert all(len(v) == 1 and v[0] > 0 for v in result["seconds_per_step"].values())
    args = ["--data", str(folder), "--preset", "small", "--steps", "2", "--batch", "2", "--crop", "64", "--threads", "1"]
    subprocess.run([sys.executable, script, "train", *args, "--out", str(tmp_path / "bf16")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "refcodec.train", *args, "--out", str(tmp_path / "fp32")], check=True, capture_output=True)
    logs = [list(csv.DictReader(open(tmp_path / run / "log.csv"))) for run in ("bf16", "fp32")]
    first = [float(log[0]["loss"]) for log in logs]
    assert first[0] != first[1] and first[0] == pytest.approx(first[1], rel=0.05)


def test_exact_synthesis_times_every_kernel_under_both_dispatches_in_one_run(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "exact.json"
    folder.mkdir()
    for i in range(2):
        sample_image(96 + 32 * i, 64).save(folder / f"{i}.png")
    cmd = [sys.executable, str(BENCHMARKS / "exact_synthesis.py"), str(folder), "--models", "grm/small/vr",
           "--threads", "1", "--repeat", "1", "--dispatch", "native", "avx2", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())["dispatch"]
    assert report["avx2"]["cpu_capability"] in ("AVX2", "DEFAULT") and not report["avx2"]["mkldnn"] and report["native"]["mkldnn"]
    for dispatch in report.values():
        model = dispatch["models"]["grm/small/vr"]
        assert len(model["per_image"]) == 2 and set(model["seconds"]) == {"float", "probe", "int8", "float32", "float64"}
        assert all(t > 0 for t in model["seconds"].values())
        assert abs(model["psnr_exact"] - model["psnr_float32"]) < 0.01
        assert [layer[0] for layer in model["worst_case_log2"]] == ["ExactDeconv", "ExactIGSDN"] * 3 + ["ExactDeconv"]
        assert dispatch["probed"] and all(p["kernel"] in ("int8", "float32", "float64") for p in dispatch["probed"])
    assert out.with_suffix(".md").read_text().count("grm/small/vr") == 2


def test_vr_speed_times_the_variable_rate_model_against_a_fixed_rate_one(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "speed.json"
    folder.mkdir()
    sample_image(96, 64, seed=2).save(folder / "a.png")
    fixed = tmp_path / "fixed.safetensors"
    registry.save(registry.build("grm", "small"), fixed, {"name": "grm", "preset": "small", **registry.PRESETS["small"],
                                                          "flags": {}, "quality": 3, "id": "grm/small/q3"})  # fmt: skip
    cmd = [sys.executable, str(BENCHMARKS / "vr_speed.py"), str(folder), "--baseline", str(fixed), "--qualities", "1", "8",
           "--rounds", "2", "--threads", "1", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())
    low, high, base = (report["summary"][k] for k in ("grm/small/vr@1", "grm/small/vr@8", "grm/small/q3"))
    assert base["encode_vs_baseline"] == base["decode_vs_baseline"] == 1 and low["bpp"] < high["bpp"]
    assert all(len(t["decode"]) == 2 for t in report["per_image"]["grm/small/vr@8"].values())
    cmd[4] = "grm/small/vr"  # the baseline must be a fixed-rate model
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode != 0 and "fixed-rate" in refused.stderr and "Traceback" not in refused.stderr


def test_rate_control_benchmark_counts_encodes_against_a_plain_encode_and_decode(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "rate-control.json"
    folder.mkdir()
    sample_image(96, 80, seed=1).save(folder / "a.png")
    cmd = [sys.executable, str(BENCHMARKS / "rate_control.py"), str(folder), "--model", "grm/small/vr", "--targets", "0.3", "50",
           "--threads", "1", "--repeat", "1", "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    report = json.loads(out.read_text())
    inside, beyond = report["rows"]
    assert inside["bpp"] <= 0.3 and not inside["out_of_range"] and beyond["out_of_range"] and beyond["quality"] == 8
    assert report["summary"]["in_range"] == 1 and report["summary"]["mean_encodes"] == inside["encodes"] >= 2
    assert inside["in_encodes"] == pytest.approx((inside["seconds"] - inside["decode_s"]) / inside["encode_s"])


def test_grown_channels_tells_dead_channels_from_reseeded_ones(tmp_path):
    """A freshly widened model's new channels are 0 (no rate, no PSNR); reseeded ones round to nonzero and cost
    bits, and before training g_s does not read them yet: no gain."""
    from refcodec import codec
    from refcodec.models import widen

    folder = tmp_path / "images"
    folder.mkdir()
    sample_image(160, 160, seed=3).save(folder / "a.png")
    wide = widen.grown(registry.load_model("grm/small/vr"), "medium")
    registry.save(wide, tmp_path / "dead.safetensors", wide.config)
    widen.reseed(wide, 96, torch.cat([codec.image_to_tensor(sample_image(256, 256, seed=s)) for s in range(14)]))
    registry.save(wide, tmp_path / "reseeded.safetensors", wide.config)

    def run(name, *extra):
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, str(BENCHMARKS / "grown_channels.py"), str(tmp_path / f"{name}.safetensors"), str(folder),
               "--crop", "128", "--qualities", "1", "7", "-o", str(out), *extra]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        return done if done.returncode else json.loads(out.read_text())["qualities"]

    dead, reseeded = run("dead", "--grown-from", "96"), run("reseeded", "--grown-from", "96")
    assert all(r["nonzero"] == 0 and r["rate_share"] < 0.01 and r["psnr"] == r["psnr_without"] for r in dead)
    low, high = reseeded
    assert 0 < low["nonzero"] < high["nonzero"] and high["rate_share"] > 0.1
    assert all(r["bpp_grown"] == pytest.approx(r["rate_share"] * r["bpp"]) for r in reseeded)
    assert all(r["psnr"] == r["psnr_without"] for r in reseeded)  # zero reads: the pixels do not change yet
    bad = run("dead", "--grown-from", "192")
    assert bad.returncode != 0 and "below it" in bad.stderr.strip().splitlines()[-1]
