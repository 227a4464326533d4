"""refcodec compare --visual: same-bitrate matching, the files, achieved bitrates, and the page in a real browser."""

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import natural_image, save_tiny
from PIL import Image

from refcodec import cli
from refcodec.eval import compare, visual
from refcodec.sample import sample_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
TARGETS = "0.001,0.002,0.5,50"  # below the tiny model's range (twice), inside it, above it
SIZES = {"a.png": (200, 168), "b.png": (128, 96)}


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


def test_page_links_its_files_and_works_offline(report):
    text = (report / "index.html").read_text()
    links = re.findall(r'<img[^>]* src="([^"]+)"', text) + re.findall(r'<option value="([^"]+)"', text)
    links += re.findall(r'<a[^>]* href="([^"#]+)"', text)
    assert links and all((report / s).is_file() for s in links)
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script src" not in text and "fetch(" not in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    for name, size in SIZES.items():
        folder = report / "files" / name.replace(".", "-")
        names = {p.name for p in folder.iterdir()}
        assert names >= {"original.png", "0.5-refcodec.rfc", "0.5-refcodec.png", "0.5-jpeg.jpg", "0.5-jpeg.png", "50-webp.webp"}
        assert Image.open(folder / "0.5-jpeg.png").size == size  # the full decoded image
        assert np.array_equal(np.asarray(Image.open(folder / "0.5-jpeg.jpg").convert("RGB")), np.asarray(Image.open(folder / "0.5-jpeg.png")))
        assert not any(n.startswith("0.002-") for n in names)  # 0.002 bpp gives 0.001's file: not again
    jpeg, webp = compare.jpeg(1), compare.webp(1)
    assert all(html.escape(s) in text for s in (jpeg.settings, jpeg.library, webp.settings, "grm/test/vr", "BD against JPEG"))


def _rows(text: str):
    """(image, target, heading bpp, [(codec, caption bpp, caption bytes, file)]) of each row of views."""
    for section in re.findall(r'<section class="image".*?</section>', text, re.S):
        image = re.search(r"<h2[^>]*>([^ ]+) ", section)[1]
        for target, heading, body in re.findall(r'<div class="row" data-target="([^"]+)"><h3[^>]*>refcodec ([0-9.]+) bpp(.*?)</div></div>',
                                                section, re.S):  # fmt: skip
            shots = re.findall(r"<b>([^<]+)</b><br>[^<]*<br>([0-9.]+) bpp, ([0-9,]+) bytes.*?href=\"([^\"]+)\"", body)
            yield image, float(target), float(heading), shots


def test_headings_and_captions_give_the_achieved_bitrates(report):
    text = (report / "index.html").read_text()
    rows = list(_rows(text))
    assert len(rows) == 2 * 3  # 0.002 bpp gives 0.001's file, shown once
    for image, target, heading, shots in rows:
        pixels = SIZES[image][0] * SIZES[image][1]
        assert [s[0] for s in shots] == ["refcodec", "JPEG", "WebP"]
        for codec, bpp, size, file in shots:
            real = (report / file).stat().st_size
            assert int(size.replace(",", "")) == real and float(bpp) == round(8 * real / pixels, 3), (image, codec, file)
        assert heading == float(shots[0][1])  # refcodec's achieved rate, from its file's size
    for section in re.findall(r'<section class="image".*?</section>', text, re.S):
        assert "target 0.001 bpp is out of range" in section and "target 50 bpp is out of range" in section
        assert "the lowest quality is shown" in section and "the highest quality is shown" in section
    assert text.count("refcodec makes the same file as at target 0.001 bpp: shown there") == 2
    summary = text[text.index("<h2>Summary") : text.index('<section class="image"')]
    assert summary.count("target missed on 2 of 2") == 3  # 0.001, 0.002 and 50 bpp; the mean of 0.5 bpp is within 10%
    assert "(target 0.5)" in summary and "&#9888; missed" in summary


def test_a_given_crop_is_used_and_checked(report, tmp_path, capsys):
    folder = report.parent / "images"
    weights = report.parent / "vr.safetensors"
    common = ["compare", str(folder), "-o", str(tmp_path), "--codecs", "none", "--visual", "--model", str(weights), "--targets", "0.5"]
    assert cli.main(common + ["--crop", "4,8,20,10"]) == 0
    text = (tmp_path / "index.html").read_text()
    assert "The views open on the 20x10 window at (4, 8), given by --crop" in text
    assert 'data-w="128" data-z="6.4000" data-cx="0.1094" data-cy="0.1354"' in text  # b.png: 128/20 wide, centred on the window
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


PROBE = """<script>addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || !i.naturalWidth).map(i => i.getAttribute('src'));
  const sec = document.querySelector('section.image'), flip = sec.querySelector('.flipper'), view = flip.querySelector('.view');
  const key = k => view.dispatchEvent(new KeyboardEvent('keydown', {key: k, bubbles: true}));
  const scales = () => [...sec.querySelectorAll('.view')].map(v => +(v.querySelector('img').getBoundingClientRect().width / v.clientWidth).toFixed(3));
  const shown = () => flip.querySelector('.shown').textContent;
  document.documentElement.style.width = '420px';  // headless Chromium's window is at least 500 px wide
  const boxes = [...document.body.querySelectorAll('*')].filter(e => !e.parentElement.closest('.scroll, .view'));
  const r = {images: document.images.length, bad, width: Math.max(...boxes.map(e => e.getBoundingClientRect().right)),
             full: [...sec.querySelectorAll('.view img')].map(i => i.naturalWidth === +sec.dataset.w), before: shown()};
  key('f'); r.after = shown(); r.tag = flip.querySelector('.tag').textContent;
  key('0'); r.fit = scales(); key('+'); r.zoomed = scales();
  const b = flip.querySelectorAll('select')[1]; b.value = b.options[0].value; b.dispatchEvent(new Event('input')); r.original = shown();
  document.title = JSON.stringify(r);
});</script></body>"""


def test_page_in_headless_chromium(report, tmp_path):
    """Every <img> loads; the views are full images zooming together; F flips A and B, labelled; 420 px fits."""
    probe = report / "probe.html"
    probe.write_text((report / "index.html").read_text().replace("</body>", PROBE))
    dom = _chromium("--dump-dom", "--window-size=500,2000", probe.as_uri(), cwd=tmp_path).stdout
    r = json.loads(html.unescape(re.search(r"<title>(\{.*?\})</title>", dom, re.S)[1]))
    assert r["images"] > 20 and r["bad"] == [] and all(r["full"]) and len(r["full"]) == 2 + 3 * 4  # A, B; 3 rows of 4 views
    assert r["width"] <= 420  # nothing wider than a phone: the tables scroll in their own box
    assert r["before"].startswith("showing A: refcodec ") and r["after"].startswith("showing B: JPEG ") and r["after"].endswith(" bpp")
    assert r["tag"] == f"A: {r['before'][len('showing A: '):]}B: {r['after'][len('showing B: '):]}"  # both named on the image
    assert set(r["fit"]) == {1} and set(r["zoomed"]) == {1.5}  # every view of the image zooms with the others
    assert r["original"] == "showing B: original"
    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", (report / "index.html").as_uri(), cwd=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    background = np.bincount(pixels.astype(np.int64).ravel()).argmax()
    assert pixels.shape == (1600, 1280) and pixels.std() > 20 and np.mean(np.abs(pixels - background) > 30) > 0.05
