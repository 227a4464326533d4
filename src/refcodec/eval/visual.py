"""``refcodec compare --visual``: every codec at the same bitrate, as crops on a static page.

Papers show same-bitrate crops side by side (the seed paper's Figures 14-17); this page does so for
any folder. For each image and each target bitrate, rate control makes refcodec's file (the largest
of at most the target, ``ratecontrol``; a target out of the model's range on that image takes the
nearest end of the range, and the page says so). Each classical codec of ``compare`` then gets the
quality whose file is closest in size to refcodec's, found by bisection over its quality scale
(``QUALITY_SCALES``), and is flagged where it stays more than ``--tolerance`` apart.

The crop is the window where the reconstructions differ most (the largest sum of the per-pixel
variance across codecs, over all targets), or ``--crop x,y,w,h``. Crops are stored at their own
size and shown enlarged nearest-neighbour (CSS ``image-rendering: pixelated``). The page,
OUTDIR/index.html, with its PNGs in OUTDIR/crops/, has a summary table (bpp, PSNR, MS-SSIM), the RD
plots ``compare`` draws, and a slider that flips between two crops at the same spot; it needs no
server and loads nothing from outside.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import codec, ratecontrol
from ..errors import RefcodecError
from ..images import find_images, read_rgb
from ..models.registry import DEFAULT_MODEL
from . import bdrate
from .evaluate import distortion
from .evaluate import main as evaluate_main

TARGETS = (0.15, 0.3, 0.6)  # bpp
QUALITY_SCALES = {  # each codec's quality values, in order of increasing file size
    "jpeg": tuple(range(1, 101)),
    "webp": tuple(range(0, 101)),
    "avif": tuple(range(0, 101)),
    "hevc": tuple(range(0, 101)),
    "jpegxl": tuple(round(25 * 0.96**k, 3) for k in range(136)),  # Butteraugli distance 25 down to 0.1
    "jpeg2000": tuple(round(0.02 * 1.02**k, 4) for k in range(268)),  # target bpp 0.02 up to 4
}
SETTING = {"jpegxl": "d={:g}", "jpeg2000": "rate {:g}"}  # how a quality reads under a crop (default q=...)


@dataclass
class Shot:
    """One codec's reconstruction of one image at one target."""

    codec: str
    setting: str
    bpp: float
    psnr: float
    msssim: float
    image: Image.Image
    note: str = ""  # why this file is not at the target (out of range, outside the tolerance)
    crop_psnr: float = float("nan")


def add_arguments(p) -> None:
    """The options of ``refcodec compare`` for the page."""
    g = p.add_argument_group("visual comparison (--visual)")
    g.add_argument("--visual", action="store_true", help="also write OUTDIR/index.html: every codec at the same bitrate, in crops")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"refcodec model of the page and of --effort: a name with several shipped qualities, "
                   f"or a variable-rate model id or file (default {DEFAULT_MODEL})")  # fmt: skip
    g.add_argument("--targets", default=",".join(map(str, TARGETS)), help="target bitrates in bpp (default %(default)s)")
    g.add_argument("--tolerance", type=float, default=0.1,
                   help="a classical codec's file farther than this fraction from refcodec's size is flagged (default 0.1)")  # fmt: skip
    g.add_argument("--crop", help="x,y,w,h of the crop in every image (default: where the codecs differ most)")
    g.add_argument("--crop-size", type=int, default=128, help="side of the automatic crop in pixels (default 128)")
    g.add_argument("--zoom", type=int, default=3, help="enlargement of the crops on the page, nearest-neighbour (default 3)")


def _numbers(spec: str, what: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise RefcodecError(f"{what} {spec}: expected numbers separated by commas") from None
    if count is not None and len(values) != count or not all(np.isfinite(values)) or min(values) < 0:
        raise RefcodecError(f"{what} {spec}: expected {count or 'some'} non-negative numbers separated by commas")
    return values


def check_arguments(args) -> None:
    """Refuse bad page options in one line, before any codec runs."""
    if not args.folder:
        raise RefcodecError("--visual needs a folder of images")
    if not _numbers(args.targets, "--targets") or min(_numbers(args.targets, "--targets")) <= 0:
        raise RefcodecError(f"--targets {args.targets}: bitrates must be positive")
    if args.crop and min(_numbers(args.crop, "--crop", 4)[2:]) < 1:
        raise RefcodecError(f"--crop {args.crop}: width and height must be at least 1")
    if args.crop_size < 8 or not 1 <= args.zoom <= 16 or not args.tolerance > 0:
        raise RefcodecError("--crop-size must be at least 8, --zoom 1-16 and --tolerance positive")
    ratecontrol.candidates(args.model)  # a model rate control cannot use is refused now, not after the sweeps


def curve_name(args) -> str:
    """The name of refcodec's curve in the tables and plots."""
    return f"refcodec {Path(args.model).stem if args.model.endswith('.safetensors') else args.model}"


def refcodec_curve(args, out: Path) -> bdrate.Curve:
    """refcodec's RD curve on the folder at every whole quality of ``--model`` (``refcodec eval``), for the plots."""
    qualities = sorted({nominal for _, _, nominal in ratecontrol.candidates(args.model) if float(nominal).is_integer()})
    path = out / "refcodec.json"
    evaluate_main([args.folder, "--model", args.model, "-q", *map(str, qualities), "-o", str(path)])
    curve = bdrate.load_curve(path)
    curve.name = curve_name(args)
    return curve


def _at_target(rgb: Image.Image, options: ratecontrol.Candidates, target: float) -> Shot:
    """refcodec's file of at most ``target`` bpp, or the nearest end of the model's range, said in the note."""
    choice = ratecontrol.search(rgb, options, target_bpp=target)
    data, index = choice.data, [o[2] for o in options].index(choice.quality)
    note = "" if choice.note is None else f"{choice.note}; the {'lowest' if index == 0 else 'highest'} quality is shown"
    net, _, nominal = options[index]
    out = codec.decompress(data, net).convert("RGB")
    setting = net.id if not net.levels else f"{net.id} q={nominal:.4g}"
    return Shot("refcodec", setting, 8 * len(data) / (rgb.width * rgb.height), **_quality(rgb, out), image=out, note=note)


def _quality(rgb: Image.Image, out: Image.Image) -> dict:
    d = distortion(rgb, out)
    return {"psnr": d["psnr-rgb"], "msssim": d["ms-ssim-rgb"]}


def _closest(size_of, count: int, target: int) -> int:
    """The index whose size is closest to ``target``, by bisection over sizes that grow with the index."""
    lo, hi = 0, count - 1
    if size_of(lo) >= target or size_of(hi) <= target:
        return lo if size_of(lo) >= target else hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size_of(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda i: abs(size_of(i) - target))


def _matched(key: str, c, rgb: Image.Image, size: int, tolerance: float, files: dict) -> Shot:
    """The file of classical codec ``c`` (``compare.Codec``) closest in size to ``size`` bytes; ``files``
    keeps its encodes of this image."""
    scale = QUALITY_SCALES[key]

    def size_of(i: int) -> int:
        if i not in files:
            files[i] = c.encode(rgb, scale[i])
        return len(files[i])

    i = _closest(size_of, len(scale), size)
    out = c.decode(files[i]).convert("RGB")
    off = len(files[i]) / size - 1
    note = f"{off:+.0%} in size from refcodec's file, beyond the tolerance of {tolerance:.0%}" if abs(off) > tolerance else ""
    setting = SETTING.get(key, "q={:g}").format(scale[i])
    return Shot(c.name, setting, 8 * len(files[i]) / (rgb.width * rgb.height), **_quality(rgb, out), image=out, note=note)


def busiest_window(reconstructions: list[list[Image.Image]], width: int, height: int) -> tuple[int, int]:
    """(x, y) of the ``width`` x ``height`` window with the largest sum of per-pixel variance across
    the reconstructions of each list (one list per target), summed over the lists."""
    spread = 0
    for shots in reconstructions:
        spread = spread + np.stack([np.asarray(s, dtype=np.float32) for s in shots]).var(axis=0).sum(-1)
    sums = np.pad(np.asarray(spread, dtype=np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    windows = sums[height:, width:] - sums[:-height, width:] - sums[height:, :-width] + sums[:-height, :-width]
    y, x = np.unravel_index(int(np.argmax(windows)), windows.shape)
    return int(x), int(y)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


@dataclass
class Section:
    """One image on the page: its crop box and a list of shots per target."""

    name: str
    size: tuple[int, int]
    box: tuple[int, int, int, int]
    chosen: bool  # the box was chosen automatically
    rows: dict[float, list[Shot]]


def build(args, classical: dict, out: Path) -> list[Section]:
    """Match every classical codec ({key: ``compare.Codec``}) to refcodec at each target on each image
    and write the crops; the page's sections."""
    targets = _numbers(args.targets, "--targets")
    options = ratecontrol.candidates(args.model)
    sections = []
    for path in find_images(args.folder):
        name = str(path.relative_to(args.folder))
        rgb = read_rgb(path)
        encodes = {key: {} for key in classical}
        rows = {}
        for t in targets:
            ours = _at_target(rgb, options, t)
            same = [shots for shots in rows.values() if shots[0].setting == ours.setting]
            if same:  # the same file as at a lower target (out of range, or a fixed-rate model's few qualities)
                rows[t] = same[0]
                continue
            size = round(ours.bpp * rgb.width * rgb.height / 8)
            rows[t] = [ours] + [_matched(k, c, rgb, size, args.tolerance, encodes[k]) for k, c in classical.items()]
            print(f"{name} at {t:g} bpp: " + ", ".join(f"{s.codec} {s.bpp:.3f} bpp {s.psnr:.2f} dB" for s in rows[t]), flush=True)
        if args.crop:
            box = tuple(int(v) for v in _numbers(args.crop, "--crop", 4))
            if box[0] + box[2] > rgb.width or box[1] + box[3] > rgb.height:
                raise RefcodecError(f"--crop {args.crop} does not fit in {name} ({rgb.width}x{rgb.height})")
        else:
            w, h = min(args.crop_size, rgb.width), min(args.crop_size, rgb.height)
            box = (*busiest_window([[s.image for s in shots] for shots in rows.values()], w, h), w, h)
        section = Section(name, rgb.size, box, not args.crop, rows)
        _write_crops(section, rgb, out)
        sections.append(section)
    return sections


def _distinct(rows: dict[float, list[Shot]]) -> list[tuple[float, list[Shot]]]:
    """(target, shots) of the rows that are not the same files as a lower target's."""
    return [(t, shots) for i, (t, shots) in enumerate(rows.items()) if all(shots is not s for s in list(rows.values())[:i])]


def _crop_file(section: Section, target: float | None = None, shot: Shot | None = None) -> str:
    base = f"crops/{_slug(section.name)}"
    return f"{base}/original.png" if shot is None else f"{base}/{target:g}-{_slug(shot.codec)}.png"


def _write_crops(section: Section, rgb: Image.Image, out: Path) -> None:
    x, y, w, h = section.box
    region = (x, y, x + w, y + h)
    (out / _crop_file(section)).parent.mkdir(parents=True, exist_ok=True)
    rgb.crop(region).save(out / _crop_file(section))
    for t, shots in _distinct(section.rows):
        for s in shots:
            s.image.crop(region).save(out / _crop_file(section, t, s))
            s.crop_psnr = codec.psnr(rgb.crop(region), s.image.crop(region))
    thumb = rgb.copy()
    thumb.thumbnail((240, 240))
    k = thumb.width / rgb.width
    ImageDraw.Draw(thumb).rectangle([x * k, y * k, (x + w) * k, (y + h) * k], outline=(255, 0, 0), width=2)
    thumb.save(out / f"crops/{_slug(section.name)}/where.png")


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#f6f6f6;max-width:1800px}
h2{margin-top:2em;border-top:2px solid #ccc;padding-top:.6em}.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px}figcaption{font-size:12px;max-width:%(width)spx}
img.px{image-rendering:pixelated;display:block}.note{color:#a40000}.muted{color:#666}
table{border-collapse:collapse;background:#fff;margin:8px 0}td,th{padding:3px 8px;border:1px solid #ddd;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.stack{position:relative}
.stack img+img{position:absolute;left:0;top:0}.flip{background:#fff;border:1px solid #ddd;padding:8px;display:inline-block}"""

_SCRIPT = """for (const f of document.querySelectorAll('.flip')) {
  const [a, b] = f.querySelectorAll('select'), [ia, ib] = f.querySelectorAll('img'), s = f.querySelector('input');
  const show = () => { ia.src = a.value; ib.src = b.value; ib.style.clipPath = `inset(0 0 0 ${s.value}%)`; };
  for (const e of [a, b, s]) e.addEventListener('input', show);
  show();
}"""


def _value(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if np.isfinite(v) else "&ndash;"


def _figure(src: str, title: str, lines: list[str], w: int, h: int, note: str = "") -> str:
    caption = "<br>".join([f"<b>{html.escape(title)}</b>", *lines] + ([f'<span class="note">{html.escape(note)}</span>'] if note else []))
    return f'<figure><img class="px" src="{src}" width="{w}" height="{h}" alt="{html.escape(title)}"><figcaption>{caption}</figcaption></figure>'


def _flip(section: Section, zoom: int) -> str:
    """Two crops at the same spot; the slider uncovers B from the right."""
    x, y, w, h = section.box
    distinct = _distinct(section.rows)
    opts = [(_crop_file(section), "original")]
    for t, shots in distinct:
        opts += [(_crop_file(section, t, s), f"{t:g} bpp: {s.codec} ({s.bpp:.3f} bpp)") for s in shots]
    middle, (ours, *others) = distinct[len(distinct) // 2]
    others = [s for s in others if s.codec == "HEVC"] or others  # refcodec against HEVC (BPG) by default
    a, b = _crop_file(section, middle, ours), _crop_file(section, middle, others[0]) if others else opts[0][0]

    def select(label: str, chosen: str) -> str:
        items = "".join(f'<option value="{v}"{" selected" if v == chosen else ""}>{html.escape(t)}</option>' for v, t in opts)
        return f"<label>{label} <select>{items}</select></label>"

    return (f'<div class="flip"><b>Flip</b> {select("A (left)", a)} {select("B (right)", b)} '
            f'<input type="range" min="0" max="100" value="50" aria-label="A | B"><div class="stack">'
            f'<img class="px" src="{a}" width="{w * zoom}" height="{h * zoom}" alt="A">'
            f'<img class="px" src="{b}" width="{w * zoom}" height="{h * zoom}" alt="B"></div></div>')  # fmt: skip


def _table(rows: list[tuple[str, list[Shot | None]]], targets: list[float]) -> str:
    head = "".join(f'<th colspan="3">{t:g} bpp target</th>' for t in targets)
    sub = "<th>bpp</th><th>PSNR</th><th>MS-SSIM</th>" * len(targets)
    body = ""
    for label, shots in rows:
        cells = "".join(f"<td>{_value(s.bpp, 3)}</td><td>{_value(s.psnr, 2)}</td><td>{_value(s.msssim, 4)}</td>" for s in shots)
        body += f"<tr><td>{html.escape(label)}</td>{cells}</tr>"
    return f"<table><tr><th rowspan=2>codec</th>{head}</tr><tr>{sub}</tr>{body}</table>"


def _mean(shots: list[Shot]) -> Shot:
    with np.errstate(all="ignore"):
        m = {k: float(np.nanmean([getattr(s, k) for s in shots])) if any(np.isfinite(getattr(s, k)) for s in shots) else np.nan
             for k in ("bpp", "psnr", "msssim")}  # fmt: skip
    return Shot(shots[0].codec, "", image=None, **m)


def page(sections: list[Section], args, libraries: dict[str, str], skipped: dict, plots: list[str]) -> str:
    """The HTML of the page (crops and plots referenced by relative paths)."""
    targets = list(sections[0].rows)
    codecs = [s.codec for s in sections[0].rows[targets[0]]]
    summary = [(c, [_mean([sec.rows[t][i] for sec in sections]) for t in targets]) for i, c in enumerate(codecs)]
    zoom = args.zoom
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>refcodec: same-bitrate comparison</title>"
        f"<style>{_STYLE % {'width': args.crop_size * zoom}}</style></head><body>",
        "<h1>Same-bitrate comparison</h1>",
        f"<p>{len(sections)} image(s) of <code>{html.escape(str(args.folder))}</code>. For each target, refcodec "
        f"(<code>{html.escape(args.model)}</code>) makes the largest file of at most the target bitrate by rate control; "
        f"each classical codec then gets the quality whose file is closest in size to refcodec's "
        f"(tolerance &plusmn;{args.tolerance:.0%}: a file farther apart is flagged in red, as is a target out of "
        f"refcodec's range). Crops are shown {zoom}x, nearest-neighbour, at the same spot in every codec: where the "
        f"reconstructions differ most, unless <code>--crop</code> was given. Under each crop: the whole image's bpp and "
        f"PSNR-RGB, then the crop's PSNR.</p>",
        "<ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(lib)}</li>" for n, lib in libraries.items())
        + "".join(f"<li class=note>{html.escape(k)} skipped: {html.escape(v)}</li>" for k, v in skipped.items()) + "</ul>",
        "<h2>Summary (means over the images)</h2>",
        _table(summary, targets),
        "".join(f'<img src="{p}" alt="{p}" style="max-width:49%">' for p in plots),
    ]
    for sec in sections:
        x, y, w, h = sec.box
        how = "where the codecs differ most" if sec.chosen else "given by --crop"
        parts.append(f'<h2 id="{_slug(sec.name)}">{html.escape(sec.name)} ({sec.size[0]}x{sec.size[1]})</h2>'
                     f'<div class="row"><img src="crops/{_slug(sec.name)}/where.png" alt="crop location">'
                     f"<p>Crop {w}x{h} at ({x}, {y}), {how}.</p></div>")  # fmt: skip
        distinct = dict(_distinct(sec.rows))
        for t, shots in sec.rows.items():
            if t not in distinct:
                first = next(u for u, v in distinct.items() if v is shots)
                parts.append(f'<h3>{t:g} bpp</h3><p class="note">refcodec makes the same file as at {first:g} bpp: shown there.</p>')
                continue
            figures = [_figure(_crop_file(sec), "original", [f"{w}x{h} at ({x}, {y})"], w * zoom, h * zoom)]
            figures += [_figure(_crop_file(sec, t, s), s.codec, [html.escape(s.setting), f"{s.bpp:.3f} bpp, {s.psnr:.2f} dB",
                                f'<span class="muted">crop {s.crop_psnr:.2f} dB</span>'], w * zoom, h * zoom, s.note)
                        for s in shots]  # fmt: skip
            parts.append(f"<h3>{t:g} bpp</h3><div class=row>{''.join(figures)}</div>")
        parts.append(_flip(sec, zoom))
        parts.append(_table([(s.codec, [sec.rows[t][i] for t in targets]) for i, s in enumerate(sec.rows[targets[0]])], targets))
    parts.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def write(args, classical: dict, skipped: dict, out: Path) -> Path:
    """Build the crops of the classical codecs ({key: ``compare.Codec``}) and refcodec and write
    OUTDIR/index.html; its path."""
    sections = build(args, classical, out)
    plots = [p for p in ("rd-psnr.png", "rd-msssim.png") if (out / p).exists()]
    path = out / "index.html"
    path.write_text(page(sections, args, {c.name: c.library for c in classical.values()}, skipped, plots))
    return path
