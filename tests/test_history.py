"""scripts/history.py: the history of releases from the results files, and the committed page is its output."""

import json
import subprocess

import pytest

from conftest import load_script

history = load_script("history")

WEBP = {"bpp": [0.2, 0.4, 0.8, 1.6], "psnr-rgb": [26.0, 29.0, 32.0, 35.0], "ms-ssim-rgb": [0.90, 0.94, 0.97, 0.985]}


def scaled(rate: float) -> dict:
    """WebP's curve at ``rate`` times its bits for the same quality: a BD-rate of (rate - 1) against it."""
    return {**WEBP, "bpp": [rate * b for b in WEBP["bpp"]]}


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def checkout(tmp_path):
    """A checkout's results files: a retired per-quality release 0.1.0 (steps from its learning-curve point), a
    replaced release 0.2.0, the shipped model of 0.3.0, and two gate verdicts."""
    kodak, curve, weights = tmp_path / history.KODAK, tmp_path / history.LEARNING_CURVE, tmp_path / history.WEIGHTS
    write(kodak / "webp.json", {"name": "WebP", "results": WEBP})
    write(kodak / "hevc.json", {"name": "HEVC", "results": scaled(0.8)})
    write(kodak / "grm-test-q1-q4.json", {"name": "refcodec grm/test/q1-q4 (0.1.0)", "results": scaled(1.2)})
    write(curve / "kodak-grm-test-500.json", {"name": "refcodec grm/test", "results": scaled(1.2)})
    write(kodak / "grm-test-vr-0.2.0.json", {"name": "refcodec grm/test/vr (0.2.0)", "results": scaled(1.1),
                                             "description": "grm/test/vr of release 0.2.0 (1,000 steps): shipped weights"})  # fmt: skip
    points = [{"quality": q, **{k: v[q] for k, v in scaled(0.9).items()}} for q in range(4)]
    write(weights / "grm-test-vr.json", {"id": "grm/test/vr", "training": {"steps": 2000}, "evaluation": {"qualities": points}})
    write(weights / "replaced.json", {"ab12": {"model": "grm/test/vr", "release": "0.2.0", "commit": "c2"}})
    write(weights / "retired.json", {f"grm/test/q{q}": {"release": "0.1.0", "commit": "c1", "weights_hash": "h"} for q in (1, 2, 3, 4)})
    sets = lambda shipped: {"../data/photos/val": {"candidate_vs_shipped": shipped, "candidate_vs_webp": -5.0, "candidate_vs_hevc": 20.0}}  # noqa: E731
    write(curve / "gate-log.json", [{"date": "d1", "id": "grm/test/vr", "steps": 1500, "shipped": False, "validation": sets(1.5)},
                                    {"date": "d2", "id": "grm/test/vr", "steps": 2000, "shipped": True, "validation": sets(-3.0)}])  # fmt: skip
    write(curve / "kodak.json", {"points": [{"steps": 2000, "file": "kodak-grm-test-2000.json", "vs_webp": -10.0, "vs_hevc": 12.5}]})
    return tmp_path


def rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the table under ``heading``."""
    table = text.split(f"## {heading}\n")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")][2:]


def test_release_table(checkout):
    releases = rows(history.page(checkout, {"grm/test/vr": "0.3.0"}), "Releases")
    assert [r[:3] for r in releases] == [["0.1.0", "`grm/test/q1-q4`", "500"], ["0.2.0", "`grm/test/vr`", "1,000"],
                                         ["0.3.0", "`grm/test/vr`", "2,000"]]  # fmt: skip
    assert [r[4] for r in releases] == ["26.00-35.00 dB"] * 3
    assert [r[5:7] for r in releases] == [["+20.0%", "+50.0%"], ["+10.0%", "+37.5%"], ["-10.0%", "+12.5%"]]  # BD-rates
    assert [r[7] for r in releases] == ["", "", "-3.0% photos/val"]  # the verdict that shipped it
    assert [r[8] for r in releases] == ["0.1.0", "0.2.0", "0.3.0 (shipped)"]  # replaced.json, retired.json
    assert [r[9] for r in releases] == ["", "new model; retires grm/test/q1-q4", "replaces the weights before it"]


def test_gate_and_learning_curve_tables(checkout):
    text = history.page(checkout, {"grm/test/vr": "0.3.0"})
    assert rows(text, "Every ship-gate verdict") == [["d1", "`grm/test/vr`", "1,500", "+1.5% / -5.0% / +20.0%", "no"],
                                                    ["d2", "`grm/test/vr`", "2,000", "-3.0% / -5.0% / +20.0%", "release 0.3.0"]]  # fmt: skip
    assert rows(text, "Kodak BD-rate by training steps") == [["2,000", "`kodak-grm-test-2000.json`", "-10.0%", "+12.5%", "", ""]]


def test_committed_page_is_current():
    """docs/history.md is what the script makes from the repository (run ``python scripts/history.py``)."""
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=history.ROOT, capture_output=True, text=True)
    if shallow.returncode or shallow.stdout.strip() != "false":
        pytest.skip("needs the git history of the weights")
    assert (history.ROOT / history.PAGE).read_text() == history.page(history.ROOT, history.shipped_in())
