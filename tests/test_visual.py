"""refcodec compare --visual: same-bitrate matching, the crop, and the page in a real browser."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import natural_image, save_tiny
from PIL import Image

from refcodec import cli
from refcodec.eval import visual
from refcodec.sample import sample_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
TARGETS = "0.001,0.002,0.5,50"  # below the tiny model's range (twice), inside it, above it


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("visual")
    (root / "images").mkdir()
    natural_image(200, 168, seed=1).save(root / "images" / "a.png")
    sample_image(128, 96, seed=2).save(root / "images" / "b.png")
    weights = save_tiny(root / "vr.safetensors", scale=20, levels=9)
    out = root / "report"
    rc = cli.main(["compare", str(root / "images"), "-o", str(out), "--codecs", "jpeg,webp", "--qualities", "10,40,80",
                   "--visual", "--model", str(weights), "--targets", TARGETS, "--crop-size", "48"])  # fmt: skip
    assert rc == 0
    return out


def test_busiest_window_is_where_the_reconstructions_differ():
    base = np.full((60, 80, 3), 100, np.uint8)
    other = base.copy()
    other[30:40, 50:62] = 180  # the only place where the two codecs disagree
    assert visual.busiest_window([[Image.fromarray(base), Image.fromarray(other)]], 12, 10) == (50, 30)


def test_closest_size_by_bisection():
    sizes = [10, 20, 40, 80, 160]
    assert [visual._closest(sizes.__getitem__, 5, t) for t in (5, 29, 31, 100, 500)] == [0, 1, 2, 3, 4]


def test_page_matches_sizes_and_flags_what_is_off(report):
    text = (report / "index.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', text) + re.findall(r'<option value="([^"]+)"', text)
    assert sources and all((report / s).is_file() for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script src" not in text  # works offline
    for name in ("a.png", "b.png"):
        assert {p.name for p in (report / "crops" / name.replace(".", "-")).iterdir()} >= {"original.png", "where.png", "0.5-refcodec.png",
                                                                         "0.5-jpeg.png", "50-webp.png"}  # fmt: skip
        assert Image.open(report / "crops" / name.replace(".", "-") / "0.5-jpeg.png").size == (48, 48)
    assert text.count("target 0.001 bpp is out of range") == 2 and text.count("target 50 bpp is out of range") == 2
    assert "the lowest quality is shown" in text and "the highest quality is shown" in text
    assert text.count("refcodec makes the same file as at 0.001 bpp: shown there") == 2  # 0.002 bpp: not again
    assert not list(report.glob("crops/*/0.002-*"))
    assert "rd-psnr.png" in text and "MS-SSIM" in text and (report / "refcodec.json").is_file()
    rows = re.findall(r"<b>(refcodec|JPEG|WebP)</b><br>[^<]*<br>([0-9.]+) bpp", text)
    ours = [float(bpp) for codec, bpp in rows if codec == "refcodec"]
    assert len(rows) == 2 * 3 * 3 and all(0 < b < 50 for b in ours)


def test_a_given_crop_is_used_and_checked(report, tmp_path, capsys):
    folder = report.parent / "images"
    weights = report.parent / "vr.safetensors"
    common = ["compare", str(folder), "-o", str(tmp_path), "--codecs", "none", "--visual", "--model", str(weights), "--targets", "0.5"]
    assert cli.main(common + ["--crop", "4,8,20,10"]) == 0
    assert Image.open(tmp_path / "crops" / "b-png" / "0.5-refcodec.png").size == (20, 10)
    assert "Crop 20x10 at (4, 8), given by --crop" in (tmp_path / "index.html").read_text()
    capsys.readouterr()
    assert cli.main(common + ["--crop", "120,0,20,10"]) == 1
    assert capsys.readouterr().err.strip() == "refcodec: error: --crop 120,0,20,10 does not fit in b.png (128x96)"
    assert cli.main(common + ["--targets", "0.3,x"]) == 1
    assert "expected numbers" in capsys.readouterr().err
    assert cli.main(["compare", str(folder), "-o", str(tmp_path / "new"), "--codecs", "jpeg", "--visual", "--model", "no-such"]) == 1
    assert "no-such" in capsys.readouterr().err and not (tmp_path / "new").exists()  # refused before any codec ran


def _chromium(*args, cwd):
    if CHROMIUM is None:
        if os.environ.get("REFCODEC_BROWSER_TESTS") == "required":
            pytest.fail("REFCODEC_BROWSER_TESTS=required but chromium is not installed")
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={cwd / 'profile'}",
           "--virtual-time-budget=10000", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180)


def test_page_in_headless_chromium(report, tmp_path):
    """Every <img> loads, and the page is not blank."""
    probe = report / "probe.html"  # the page with a script that lists the images that failed to load, then flips
    probe.write_text((report / "index.html").read_text().replace("</body>", "<script>addEventListener('load', () => {"
        "const bad = [...document.images].filter(i => !i.complete || !i.naturalWidth).map(i => i.getAttribute('src'));"
        "const f = document.querySelector('.flip'), a = f.querySelector('select'), s = f.querySelector('input');"
        "a.value = a.options[0].value; s.value = 20; a.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('input'));"
        "const [ia, ib] = f.querySelectorAll('img');"
        "document.title = `images ${document.images.length} broken ${bad.length} ${bad.join(' ')} "
        "flip ${ia.getAttribute('src')} ${ib.style.clipPath}`; });</script></body>"))  # fmt: skip
    dom = _chromium("--dump-dom", probe.as_uri(), cwd=tmp_path).stdout
    title = re.search(r"<title>images (\d+) broken (\d+)(.*?) flip (\S+) (.*?)</title>", dom)
    assert title, dom[:500]
    assert int(title[1]) > 20 and title[2] == "0", title[0]
    assert title[4] == "crops/a-png/original.png" and title[5] == "inset(0px 0px 0px 20%)"  # the flip's A and slider act
    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", (report / "index.html").as_uri(), cwd=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    background = np.bincount(pixels.astype(np.int64).ravel()).argmax()
    assert pixels.shape == (1600, 1280) and pixels.std() > 20 and np.mean(np.abs(pixels - background) > 30) > 0.05  # measured: std 45, 9% ink
