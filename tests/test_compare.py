"""refcodec compare: classical codec sweeps, BD-rate/BD-PSNR, plots and the command line."""

import json
import math
import sys

import numpy as np
import pytest
from conftest import natural_image

from refcodec import cli
from refcodec.eval import bdrate, compare
from refcodec.sample import sample_image

RESULT_KEYS = {"bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db", "encoding_time", "decoding_time"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    natural_image(96, 80, seed=1).save(root / "a.png")
    sample_image(128, 96, seed=2).save(root / "b.png")
    return root


def run(capsys, *argv):
    rc = cli.main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def curve(bpp, psnr, name="c"):
    return bdrate.Curve(name, np.array(bpp, float), np.array(psnr, float), np.full(len(bpp), np.nan))


def test_sweep_layout_and_monotonic_rate(folder, tmp_path, capsys):
    assert run(capsys, folder, "-o", tmp_path, "--codecs", "jpeg,webp", "--qualities", "10,40,80")[0] == 0
    for name in ("jpeg", "webp"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["codec"]["library"] in report["description"] and "Pillow" in report["codec"]["library"]
        assert set(report["results"]) == RESULT_KEYS and report["qualities"] == [10, 40, 80]
        assert all(len(v) == 3 for v in report["results"].values())
        bpp = report["results"]["bpp"]
        assert bpp == sorted(bpp) and bpp[0] > 0
        rows = report["per_image"]["40"]
        assert [r["image"] for r in rows] == ["a.png", "b.png"]
        assert bpp[1] == pytest.approx(np.mean([r["bpp"] for r in rows]))


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--help"])
    assert e.value.code == 0 and "--anchor" in capsys.readouterr().out


def test_every_codec_decodes_at_the_right_size(folder):
    image = natural_image(72, 56, seed=3)
    for name, make in compare.CODECS.items():
        try:
            c = make(1)
        except (ImportError, compare.Unavailable):
            continue
        row = compare.measure(c, image, c.sweep[len(c.sweep) // 2])
        assert row["bpp"] > 0 and 15 < row["psnr-rgb"] < 60, name


def test_a_missing_library_is_skipped(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import fails
    rc, out, _ = run(capsys, folder, "-o", tmp_path, "--codecs", "jpeg,jpegxl", "--qualities", "20,60")
    assert rc == 0 and "skipping jpegxl" in out
    assert not (tmp_path / "jpegxl.json").exists()
    assert "jpegxl" in json.loads((tmp_path / "bdrate.json").read_text())["skipped"]


def test_bd_rate_of_a_curve_against_itself_is_zero():
    c = curve([0.2, 0.4, 0.7, 1.1, 1.6], [27, 30, 32.5, 34.6, 36.5])
    d = bdrate.delta(c, c)
    assert d["bd_rate"] == pytest.approx(0, abs=1e-9) and d["bd_psnr"] == pytest.approx(0, abs=1e-9)
    assert d["psnr_overlap"] == 1 and d["note"] == ""


def test_bd_rate_of_ten_percent_fewer_bits():
    a = curve([0.2, 0.4, 0.7, 1.1, 1.6], [27, 30, 32.5, 34.6, 36.5])
    b = curve(a.bpp * 0.9, a.psnr)
    d = bdrate.delta(a, b)
    assert d["bd_rate"] == pytest.approx(-10, abs=1e-6)
    assert d["bd_psnr"] > 0
    psnr, saving = bdrate.rate_savings(a, b)
    assert np.allclose(saving, 10)


def test_no_overlap_is_nan_not_extrapolated():
    a = curve([0.1, 0.2, 0.3], [25, 27, 28])
    b = curve([1.0, 1.5, 2.0], [35, 37, 38])
    d = bdrate.delta(a, b)
    assert math.isnan(d["bd_rate"]) and math.isnan(d["bd_psnr"]) and d["note"] == "no overlap"
    assert "n/a" in bdrate.markdown({"a": {"b": d}})
    assert math.isnan(bdrate.delta(a, curve([0.5], [30]))["bd_rate"])  # one point


def test_dominated_points_are_dropped():
    c = curve([0.1, 0.2, 0.3, 0.4], [25, 27, 26.5, 29])
    rates, psnrs = bdrate.rd_points(c)
    assert list(rates) == [0.1, 0.2, 0.4] and list(psnrs) == [25, 27, 29]


def test_eval_and_published_files_as_curves(folder, tmp_path, capsys):
    """refcodec eval's JSON (unsorted qualities) and CompressAI's older keys plot and tabulate next to the codecs."""
    ours = {"name": "refcodec-grm", "description": "", "results": {"bpp": [0.9, 0.3, 0.5], "psnr-rgb": [33, 28, 30],
            "ms-ssim-rgb": [0.98, 0.93, 0.96], "encoding_time": [1, 1, 1], "decoding_time": [1, 1, 1]}}  # fmt: skip
    published = {"name": "mbt2018", "results": {"bpp": [0.3, 0.6, 1.0], "psnr": [29, 31.5, 34], "ms-ssim": [0.94, 0.97, 0.98]}}
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "mbt.json").write_text(json.dumps(published))
    out = tmp_path / "out"
    rc, text, _ = run(capsys, folder, "-o", out, "--codecs", "jpeg,webp", "--qualities", "10,50,90",
                      "--curves", tmp_path / "ours.json", tmp_path / "mbt.json", "--anchor", "webp,refcodec-grm")  # fmt: skip
    assert rc == 0
    table = json.loads((out / "bdrate.json").read_text())["anchors"]
    assert set(table) == {"WebP", "refcodec-grm"}
    assert set(table["WebP"]) == {"JPEG", "refcodec-grm", "mbt2018"}
    assert table["refcodec-grm"]["mbt2018"]["bd_rate"] < 0  # more PSNR at each rate
    assert "| JPEG |" in (out / "bdrate.md").read_text() and "### BD against refcodec-grm" in text
    for png in ("rd-psnr.png", "rd-msssim.png", "rate-savings.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_only_curves_without_a_folder(tmp_path, capsys):
    a = {"name": "a", "results": {"bpp": [0.2, 0.5, 1.0], "psnr-rgb": [27, 30, 33]}}
    b = {"name": "b", "results": {"bpp": [0.18, 0.45, 0.9], "psnr-rgb": [27, 30, 33]}}
    for n, r in (("a", a), ("b", b)):
        (tmp_path / f"{n}.json").write_text(json.dumps(r))
    rc, text, _ = run(capsys, "--codecs", "none", "--curves", tmp_path / "a.json", tmp_path / "b.json", "-o", tmp_path / "o")
    assert rc == 0 and "| b | -10.0% |" in text


def test_bd_tables_in_ms_ssim(tmp_path, capsys):
    """--metric ms-ssim: BD-rate at equal MS-SSIM in dB (the paper's Figure 6), written beside the PSNR tables."""
    ms = [0.90, 0.95, 0.98]
    a = {"name": "a", "results": {"bpp": [0.2, 0.5, 1.0], "psnr-rgb": [27, 30, 33], "ms-ssim-rgb": ms}}
    b = {"name": "b", "results": {"bpp": [0.2, 0.5, 1.0], "psnr-rgb": [26, 29, 32], "ms-ssim-rgb": ms}}  # worse in PSNR only
    c = {"name": "c", "results": {"bpp": [0.16, 0.4, 0.8], "psnr-rgb": [26, 29, 32], "ms-ssim-rgb": ms}}  # 20% fewer bits
    for n, r in (("a", a), ("b", b), ("c", c)):
        (tmp_path / f"{n}.json").write_text(json.dumps(r))
    files = [tmp_path / f"{n}.json" for n in "abc"]
    rc, text, _ = run(capsys, "--codecs", "none", "--curves", *files, "-o", tmp_path / "o", "--metric", "ms-ssim")
    report = json.loads((tmp_path / "o" / "bdrate-ms-ssim.json").read_text())
    assert rc == 0 and report["metric"] == "ms-ssim-rgb-db" and "MS-SSIM-RGB in dB" in text
    assert report["anchors"]["a"]["b"]["bd_rate"] == pytest.approx(0, abs=1e-9)
    assert report["anchors"]["a"]["c"]["bd_rate"] == pytest.approx(-20, abs=1e-6)
    low, high = report["anchors"]["a"]["c"]["psnr_range"]
    assert (low, high) == pytest.approx((10.0, -10 * math.log10(0.02)))  # the common range, in MS-SSIM dB
    assert (tmp_path / "o" / "rate-savings-ms-ssim.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "o" / "bdrate.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--codecs", "jpeg"], "not a folder"),
        (["{empty}", "--codecs", "jpeg"], "no images"),
        (["{folder}", "--codecs", "jpeg,bpg"], "unknown codec bpg"),
        (["{folder}", "--codecs", "jpeg", "--anchor", "vtm"], "anchor vtm"),
        (["{folder}", "--codecs", "jpeg", "--qualities", "webp=10"], "not among the codecs"),
        (["{folder}", "--codecs", "jpeg", "--curves", "{missing}.json"], "no such file"),
    ],
)
def test_bad_input_is_a_one_line_error(folder, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "folder": folder}
    rc, _, err = run(capsys, *[a.format(**paths) for a in args], "-o", tmp_path / "out")
    assert rc == 1 and err.count("\n") == 1 and err.startswith("refcodec: error:") and message in err, err


def test_one_option_names_every_sweep_the_models_included():
    """Issue 38: compare had --qualities for the classical codecs and --model-qualities for refcodec's."""
    chosen = compare._qualities(["50,90", "webp=10,20", "refcodec=1,4.5"], ["jpeg", "webp"])
    assert chosen == {"jpeg": (50, 90), "webp": (10, 20), "refcodec": (1, 4.5)}
