"""refcodec bench: per-stage times, peak memory and decode steps, each coding step in a fresh process."""

import json
import shutil

import pytest

from refcodec import cli, profiling
from refcodec.models import registry
from refcodec.schedule import Schedule


def test_bench_measures_every_stage_of_both_schedules(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--preset", "small", "--sizes", "128x64", "--schedules", "wavefront", "raster",
                     "--threads", "1", "-o", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and "CPU cores" in report["machine"]
    assert out.with_suffix(".png").stat().st_size > 1000 and "| 128x64 | raster | decompress |" in out.with_suffix(".md").read_text()
    wave, raster = report["runs"]
    for run in (wave, raster):
        enc, dec = run["compress"], run["decompress"]
        assert set(enc["seconds"]) == set(profiling.STAGES)
        assert enc["seconds"]["analysis"] > 0 and enc["seconds"]["reference"] > 0 and enc["seconds"]["synthesis"] == 0
        assert dec["seconds"]["synthesis"] > 0 and dec["seconds"]["analysis"] == 0 and dec["seconds"]["coder"] > 0
        assert sum(dec["seconds"].values()) <= dec["total_seconds"]
        assert dec["peak_rss_mb"] > 50 and dec["psnr"] > 20 and dec["weights"] == "grm/small/vr"
    assert wave["compress"]["bytes"] == raster["compress"]["bytes"]  # the same latents and probabilities, other order
    assert wave["decompress"]["psnr"] == raster["decompress"]["psnr"]
    assert wave["decompress"]["steps"] == len(Schedule("wavefront").order(4, 8)) < raster["decompress"]["steps"] == 4 * 8


def test_bench_uses_seeded_random_weights_without_shipped_ones(tmp_path, capsys):
    assert cli.main(["bench", "--model", "hyperprior", "--preset", "small", "--sizes", "64x64", "--threads", "1"]) == 0
    assert "64x64 none" in capsys.readouterr().out


def test_bench_bad_size_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--sizes", "huge"])
    assert exit.value.code == 2
    assert "size 'huge'" in capsys.readouterr().err


def test_bench_measures_a_weights_file(tmp_path):
    weights = tmp_path / "run.safetensors"
    shutil.copy(registry.weights_path(registry.resolve_id("grm", 3, "small")), weights)
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--weights", str(weights), "--sizes", "64x64", "--threads", "1", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["model"], report["preset"], report["weights"]) == ("grm", "small", str(weights))
    (run,) = report["runs"]
    assert run["decompress"]["weights"] == str(weights) and run["decompress"]["psnr"] > 20


def test_bench_refuses_a_bad_weights_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    assert cli.main(["bench", "--weights", str(bad), "--sizes", "64x64"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not usable refcodec weights" in err
