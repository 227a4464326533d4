"""``refcodec compare --visual``: every codec at the same bitrate, on a static page of full images.

Papers show same-bitrate crops side by side (the seed paper's Figures 14-17); this page does so for
any folder. For each image and each target bitrate, rate control makes refcodec's file (the largest
of at most the target, ``ratecontrol``; a target out of the model's range on that image takes the
nearest end of the range). Each classical codec of ``compare`` then gets the quality whose file is
closest in size to refcodec's, found by bisection over its quality scale (``QUALITY_SCALES``).

Every heading, cell and caption gives the bitrate a file achieved, with the target beside it; a
refcodec file more than ``--tolerance`` from its target, or a classical file that far from
refcodec's, is flagged. OUTDIR/index.html shows every codec's full decoded image in views that
zoom and pan together, opening on the window where the reconstructions differ most (or
``--crop``), and a view that flips between any two of them on click or key. OUTDIR/files/ keeps
each compressed file and its decoded image. The page also has the encoder settings, the BD tables,
the RD plots and a summary; its script and style are inline, so it works from disk with no server.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__, codec, ratecontrol
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
SETTING = {"jpegxl": "d={:g}", "jpeg2000": "rate {:g}"}  # how a quality reads in a caption (default q=...)
DECODED = {"png": ("PNG", {}, "PNG"), "webp": ("WEBP", {"lossless": True}, "lossless WebP")}  # --decoded: (Pillow format, options, name)


@dataclass
class Shot:
    """One codec's file of one image at one target, and its decoding."""

    codec: str
    setting: str
    data: bytes  # the compressed file
    size: int  # its bytes
    suffix: str
    bpp: float
    psnr: float
    msssim: float
    image: Image.Image | None
    note: str = ""  # why this file is flagged (target missed, size outside the tolerance)
    crop_psnr: float = float("nan")  # in the window the views open on


def add_arguments(p) -> None:
    """The options of ``refcodec compare`` for the page."""
    g = p.add_argument_group("visual comparison (--visual)")
    g.add_argument("--visual", action="store_true", help="also write OUTDIR/index.html: every codec at the same bitrate, as full images")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"refcodec model of the page and of --effort: a name with several shipped qualities, "
                   f"or a variable-rate model id or file (default {DEFAULT_MODEL})")  # fmt: skip
    g.add_argument("--targets", default=",".join(map(str, TARGETS)), help="target bitrates in bpp (default %(default)s)")
    g.add_argument("--tolerance", type=float, default=0.1,
                   help="a refcodec file farther than this fraction from its target, or a classical codec's file farther from "
                   "refcodec's size, is flagged (default 0.1)")  # fmt: skip
    g.add_argument("--crop", help="x,y,w,h of the window the views open on, in every image (default: where the codecs differ most)")
    g.add_argument("--crop-size", type=int, default=128, help="side of the automatic window in pixels (default 128)")
    g.add_argument("--zoom", type=int, default=3, help="the views are at least crop-size x zoom CSS pixels wide (default 3)")
    g.add_argument("--decoded", choices=list(DECODED), default="png", help="lossless format of the decoded images (default png)")


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
    x, y, w, h = _numbers(args.crop, "--crop", 4) if args.crop else (0, 0, 0, 0)
    for path in find_images(args.folder) if args.crop else []:
        width, height = read_rgb(path).size  # as coded (EXIF orientation applied)
        if x + w > width or y + h > height:
            raise RefcodecError(f"--crop {args.crop} does not fit in {path.relative_to(args.folder)} ({width}x{height})")
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


def _shot(name: str, setting: str, data: bytes, suffix: str, rgb: Image.Image, out: Image.Image, note: str) -> Shot:
    d = distortion(rgb, out)
    bpp = 8 * len(data) / (rgb.width * rgb.height)
    return Shot(name, setting, data, len(data), suffix, bpp, d["psnr-rgb"], d["ms-ssim-rgb"], out, note)


def _at_target(rgb: Image.Image, options: ratecontrol.Candidates, target: float, tolerance: float) -> Shot:
    """refcodec's file of at most ``target`` bpp, or the nearest end of the model's range; the note says
    where it misses the target by more than ``tolerance``."""
    choice = ratecontrol.search(rgb, options, target_bpp=target)
    data, index = choice.data, [o[2] for o in options].index(choice.quality)
    net, _, nominal = options[index]
    note = "" if choice.note is None else f"{choice.note}; the {'lowest' if index == 0 else 'highest'} quality is shown"
    if not note and abs(choice.bpp / target - 1) > tolerance:
        note = f"{choice.bpp / target - 1:+.0%} from the target: no quality between"
    setting = net.id if not net.levels else f"{net.id} q={nominal:.4g}"
    return _shot("refcodec", setting, data, ".rfc", rgb, codec.decompress(data, net).convert("RGB"), note)


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
    off = len(files[i]) / size - 1
    note = f"{off:+.0%} in size from refcodec's file, beyond the tolerance of {tolerance:.0%}" if abs(off) > tolerance else ""
    setting = SETTING.get(key, "q={:g}").format(scale[i])
    return _shot(c.name, setting, files[i], c.suffix, rgb, c.decode(files[i]).convert("RGB"), note)


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
    """One image on the page: the window its views open on, and a list of shots per target."""

    name: str
    size: tuple[int, int]
    box: tuple[int, int, int, int]
    chosen: bool  # the box was chosen automatically
    rows: dict[float, list[Shot]]
    original: str = ""  # the decoded original's path in OUTDIR


def build(args, options: ratecontrol.Candidates, classical: dict, out: Path) -> list[Section]:
    """Match every classical codec ({key: ``compare.Codec``}) to refcodec (``options``) at each target
    on each image and write the files; the page's sections."""
    targets = _numbers(args.targets, "--targets")
    sections = []
    for path in find_images(args.folder):
        name = str(path.relative_to(args.folder))
        rgb = read_rgb(path)
        encodes = {key: {} for key in classical}
        rows = {}
        for t in targets:
            ours = _at_target(rgb, options, t, args.tolerance)
            same = [shots for shots in rows.values() if shots[0].setting == ours.setting]
            if same:  # the same file as at a lower target (out of range, or a fixed-rate model's few qualities)
                rows[t] = same[0]
                continue
            rows[t] = [ours] + [_matched(k, c, rgb, ours.size, args.tolerance, encodes[k]) for k, c in classical.items()]
            print(f"{name} at {t:g} bpp: " + ", ".join(f"{s.codec} {s.bpp:.3f} bpp {s.psnr:.2f} dB" for s in rows[t]), flush=True)
        if args.crop:
            box = tuple(int(v) for v in _numbers(args.crop, "--crop", 4))
        else:
            w, h = min(args.crop_size, rgb.width), min(args.crop_size, rgb.height)
            box = (*busiest_window([[s.image for s in shots] for shots in rows.values()], w, h), w, h)
        section = Section(name, rgb.size, box, not args.crop, rows)
        _write_files(section, rgb, out, args.decoded)
        sections.append(section)
    return sections


def _distinct(rows: dict[float, list[Shot]]) -> list[tuple[float, list[Shot]]]:
    """(target, shots) of the rows that are not the same files as a lower target's."""
    return [(t, shots) for i, (t, shots) in enumerate(rows.items()) if all(shots is not s for s in list(rows.values())[:i])]


def _write_files(section: Section, rgb: Image.Image, out: Path, decoded: str) -> None:
    """Each shot's compressed file and decoded image, and the original, under OUTDIR/files/<image>/;
    the decoded images are dropped from memory once written."""
    fmt, options, _ = DECODED[decoded]
    x, y, w, h = section.box
    window = (x, y, x + w, y + h)
    section.original = f"files/{_slug(section.name)}/original.{decoded}"
    (out / section.original).parent.mkdir(parents=True, exist_ok=True)
    rgb.save(out / section.original, fmt, **options)
    for t, shots in _distinct(section.rows):
        for s in shots:
            file, image = _paths(section, t, s, decoded)
            (out / file).write_bytes(s.data)
            s.image.save(out / image, fmt, **options)
            s.crop_psnr = codec.psnr(rgb.crop(window), s.image.crop(window))
            s.image = None


def _paths(section: Section, target: float, shot: Shot, decoded: str) -> tuple[str, str]:
    """(compressed file, decoded image) of a shot, relative to OUTDIR."""
    stem = f"files/{_slug(section.name)}/{target:g}-{_slug(shot.codec)}"
    return stem + shot.suffix, f"{stem}.{decoded}"


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#f6f6f6;max-width:1800px}
h2{margin-top:2em;border-top:2px solid #ccc;padding-top:.6em}.note{color:#a40000}.muted,.target{color:#666;font-weight:normal}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;background:#fff;margin:8px 0}
td,th{padding:3px 8px;border:1px solid #ddd;text-align:right;white-space:nowrap}th{background:#eee}
td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:8px}
.plots img{flex:1 1 420px;min-width:0;max-width:100%;height:auto;background:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,VIEWpx),1fr));gap:8px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px;min-width:0}figcaption{font-size:12px}
.view{position:relative;overflow:hidden;background:#888;cursor:grab;touch-action:pan-y;user-select:none}
.view img{position:absolute;left:0;top:0;width:100%;height:auto;transform-origin:0 0;max-width:none}
.view img.px{image-rendering:pixelated}.tag{position:absolute;left:4px;top:4px;background:rgba(0,0,0,.7);color:#fff;
padding:1px 6px;font-size:12px;pointer-events:none}.flipper{background:#fff;border:1px solid #ddd;padding:8px;max-width:720px}
.flipper .view{cursor:pointer}.flipper .tag span{display:block;opacity:.55}.flipper[data-shown=A] .tag .a,
.flipper[data-shown=B] .tag .b{opacity:1;font-weight:bold}.flipper[data-shown=A] img.b{visibility:hidden}
.controls{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0}.controls select{max-width:100%}"""

_SCRIPT = """const groups = [...document.querySelectorAll('section.image')].map(sec => {
  const d = sec.dataset, g = {sec, w: +d.w, z: +d.z, cx: +d.cx, cy: +d.cy, views: [...sec.querySelectorAll('.view')]};
  g.start = [g.z, g.cx, g.cy];
  g.flipper = sec.querySelector('.flipper');
  for (const v of g.views) bind(g, v);
  for (const s of g.flipper.querySelectorAll('select')) s.addEventListener('input', () => label(g));
  for (const b of g.flipper.querySelectorAll('button')) b.addEventListener('click', () => act(g, b.dataset.key));
  label(g);
  return g;
});
let active = groups[0];

function show(g) {  // every view of the image shows the same spot: centre (cx, cy) at zoom z (1: the whole image)
  g.z = Math.min(Math.max(g.z, 1), 64);
  const half = 0.5 / g.z;
  g.cx = Math.min(Math.max(g.cx, half), 1 - half);
  g.cy = Math.min(Math.max(g.cy, half), 1 - half);
  for (const v of g.views) {
    const W = v.clientWidth, H = v.clientHeight;
    for (const i of v.querySelectorAll('img')) {
      i.style.width = `${W * g.z}px`;
      i.style.transform = `translate(${W * (0.5 - g.cx * g.z)}px, ${H * (0.5 - g.cy * g.z)}px)`;
      i.classList.toggle('px', W * g.z >= g.w);
    }
  }
  const scale = g.flipper.querySelector('.view').clientWidth * g.z / g.w;
  g.flipper.querySelector('.zoom').textContent = `${scale.toFixed(2)} screen px per pixel`;
}

function zoom(g, f, mx = 0.5, my = 0.5) {  // keeps the point at (mx, my) of the view in place
  const px = g.cx + (mx - 0.5) / g.z, py = g.cy + (my - 0.5) / g.z;
  g.z = Math.min(Math.max(g.z * f, 1), 64);
  g.cx = px - (mx - 0.5) / g.z;
  g.cy = py - (my - 0.5) / g.z;
  show(g);
}

function label(g) {
  const f = g.flipper, [a, b] = f.querySelectorAll('select'), [ia, ib] = f.querySelectorAll('.view img');
  const name = s => s.selectedOptions[0].dataset.label;
  ia.src = a.value; ib.src = b.value;
  f.querySelector('.tag .a').textContent = `A: ${name(a)}`;
  f.querySelector('.tag .b').textContent = `B: ${name(b)}`;
  f.querySelector('.shown').textContent = `showing ${f.dataset.shown}: ${name(f.dataset.shown === 'A' ? a : b)}`;
  show(g);
}

function act(g, key) {
  const pan = 0.1 / g.z, one = g.w / g.flipper.querySelector('.view').clientWidth;
  const acts = {
    f: () => { g.flipper.dataset.shown = g.flipper.dataset.shown === 'A' ? 'B' : 'A'; label(g); },
    '+': () => zoom(g, 1.5), '-': () => zoom(g, 1 / 1.5), '0': () => { g.z = 1; show(g); },
    '1': () => { g.z = one; show(g); }, w: () => { [g.z, g.cx, g.cy] = g.start; show(g); },
    ArrowLeft: () => { g.cx -= pan; show(g); }, ArrowRight: () => { g.cx += pan; show(g); },
    ArrowUp: () => { g.cy -= pan; show(g); }, ArrowDown: () => { g.cy += pan; show(g); },
  };
  acts[' '] = acts.F = acts.f; acts['='] = acts['+']; acts.W = acts.w;
  return acts[key] && (acts[key](), true);
}

function bind(g, v) {
  v.addEventListener('wheel', e => {
    const r = v.getBoundingClientRect();
    e.preventDefault();
    active = g;
    zoom(g, Math.exp(-e.deltaY / 300), (e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height);
  }, {passive: false});
  v.addEventListener('pointerdown', e => {
    const r = v.getBoundingClientRect();
    let x = e.clientX, y = e.clientY, moved = 0;
    active = g;
    v.setPointerCapture(e.pointerId);
    const move = e => {
      moved += Math.abs(e.clientX - x) + Math.abs(e.clientY - y);
      g.cx -= (e.clientX - x) / (r.width * g.z);
      g.cy -= (e.clientY - y) / (r.height * g.z);
      x = e.clientX; y = e.clientY;
      show(g);
    };
    const up = () => {
      v.removeEventListener('pointermove', move);
      v.removeEventListener('pointerup', up);
      if (moved >= 4) return;
      if (v.closest('.flipper')) return act(g, 'f');
      g.flipper.querySelectorAll('select')[1].value = v.querySelector('img').getAttribute('src');  // a view clicked: B
      g.flipper.dataset.shown = 'B';
      label(g);
    };
    v.addEventListener('pointermove', move);
    v.addEventListener('pointerup', up);
  });
}

document.addEventListener('keydown', e => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest?.('select, input, textarea')) return;
  const g = groups.find(g => g.sec.contains(e.target)) || active;
  if (g && act(g, e.key)) e.preventDefault();
});
addEventListener('resize', () => groups.forEach(show));"""


def _value(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if np.isfinite(v) else "&ndash;"


def _flag(shot: Shot) -> str:
    """A red mark with the note as its tooltip: refcodec missed its target, or a classical file is off refcodec's size."""
    what = "missed" if shot.codec == "refcodec" else "size off"
    return f' <span class="note" title="{html.escape(shot.note)}">&#9888; {what}</span>' if shot.note else ""


def _rate(bpp: float, target: float) -> str:
    """An achieved bitrate, with its target beside it."""
    return f'{bpp:.3f} bpp <span class="target">(target {target:g})</span>'


def _figure(src: str, name: str, tag: str, size: tuple[int, int], lines: list[str], note: str = "") -> str:
    w, h = size
    caption = "<br>".join([f"<b>{html.escape(name)}</b>", *lines] + ([f'<span class="note">{html.escape(note)}</span>'] if note else []))
    return (f'<figure><div class="view" style="aspect-ratio:{w}/{h}"><img src="{src}" width="{w}" height="{h}" '
            f'alt="{html.escape(tag)}"><span class="tag">{html.escape(tag)}</span></div><figcaption>{caption}</figcaption></figure>')  # fmt: skip


def _label(shot: Shot) -> str:
    return f"{shot.codec} {shot.bpp:.3f} bpp"


def _flipper(section: Section, decoded: str) -> str:
    """One large view that flips between the A and B chosen (on click, or F or the space bar)."""
    w, h = section.size
    options = [(section.original, "original", "original")]
    distinct = _distinct(section.rows)
    for t, shots in distinct:
        options += [(_paths(section, t, s, decoded)[1], _label(s), f"{_label(s)} (target {t:g})") for s in shots]
    middle, (ours, *others) = distinct[len(distinct) // 2]
    other = next((s for s in others if s.codec == "HEVC"), others[0] if others else None)  # refcodec against HEVC (BPG) by default
    a = _paths(section, middle, ours, decoded)[1]
    b = _paths(section, middle, other, decoded)[1] if other else section.original

    def select(name: str, chosen: str) -> str:
        items = "".join(f'<option value="{v}" data-label="{html.escape(lab)}"{" selected" if v == chosen else ""}>'
                        f"{html.escape(text)}</option>" for v, lab, text in options)  # fmt: skip
        return f"<label>{name} <select>{items}</select></label>"

    buttons = "".join(f'<button data-key="{k}">{t}</button>' for k, t in
                      (("f", "flip (F, space, click)"), ("+", "zoom in (+, wheel)"), ("-", "zoom out (-)"),
                       ("0", "whole image (0)"), ("1", "1:1 (1)"), ("w", "the window (W)")))  # fmt: skip
    return (f'<div class="flipper" data-shown="A"><div class="controls">{select("A", a)} {select("B", b)}</div>'
            f'<div class="view" tabindex="0" style="aspect-ratio:{w}/{h};width:min(100%,calc(75vh*{w}/{h}))">'
            f'<img class="a" src="{a}" width="{w}" height="{h}" alt="A">'
            f'<img class="b" src="{b}" width="{w}" height="{h}" alt="B"><span class="tag"><span class="a"></span>'
            f'<span class="b"></span></span></div><div class="controls"><b class="shown"></b> <span class="zoom muted"></span></div>'
            f'<div class="controls">{buttons}</div><div class="muted">Drag or the arrow keys pan, every view of the image '
            f"together; a click on a view below shows it here as B.</div></div>")  # fmt: skip


def _table(rows: list[tuple[str, list[Shot]]], heads: list[str]) -> str:
    head = "".join(f'<th colspan="4">{h}</th>' for h in heads)
    sub = "<th>bpp</th><th>bytes</th><th>PSNR</th><th>MS-SSIM</th>" * len(heads)
    body = ""
    for label, shots in rows:
        cells = "".join(f"<td>{_value(s.bpp, 3)}{_flag(s)}</td><td>{s.size:,}</td><td>{_value(s.psnr, 2)}</td>"
                        f"<td>{_value(s.msssim, 4)}</td>" for s in shots)  # fmt: skip
        body += f"<tr><td>{html.escape(label)}</td>{cells}</tr>"
    return f'<div class="scroll"><table><tr><th rowspan=2>codec</th>{head}</tr><tr>{sub}</tr>{body}</table></div>'


def _mean(shots: list[Shot]) -> Shot:
    """The means over images of one codec at one target; its note lists the images whose file is flagged."""
    with np.errstate(all="ignore"):
        m = [float(np.nanmean([getattr(s, k) for s in shots])) if any(np.isfinite(getattr(s, k)) for s in shots) else np.nan
             for k in ("bpp", "psnr", "msssim")]  # fmt: skip
    flagged = sum(bool(s.note) for s in shots)
    note = f"flagged on {flagged} of {len(shots)} images: {'; '.join(s.note for s in shots if s.note)}" if flagged else ""
    return Shot(shots[0].codec, "", b"", round(np.mean([s.size for s in shots])), "", *m, image=None, note=note)


def _bd_tables(deltas: dict, metric: str) -> str:
    parts, axis = [], "PSNR" if metric == "psnr" else "MS-SSIM"
    for anchor, rows in deltas.items():
        body = "".join(f"<tr><td>{html.escape(n)}</td>{''.join(f'<td>{html.escape(c)}</td>' for c in bdrate.cells(d))}</tr>"
                       for n, d in rows.items())  # fmt: skip
        head = "".join(f"<th>{h}</th>" for h in ("curve", "BD-rate", f"BD-{axis}", f"common {axis} range", "note"))
        parts.append(f"<h3>BD against {html.escape(anchor)} ({bdrate.METRICS[metric]}, {bdrate.METHOD} interpolation)</h3>"
                     f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>")  # fmt: skip
    return "".join(parts) or "<p>No anchor curve: no BD table.</p>"


def _settings(args, classical: dict, options: ratecontrol.Candidates) -> str:
    """The encoder settings of every codec on the page, from the codec wrappers (``compare.Codec``)."""
    net = options[-1][0]
    how = (f"variable rate, qualities {options[0][2]:g}-{options[-1][2]:g} on a grid of 1/{ratecontrol.QUALITY_GRID}" if net.levels
           else f"the shipped fixed-rate qualities {', '.join(f'{o[2]:g}' for o in options)}")  # fmt: skip
    items = [f"<li><b>refcodec</b>: refcodec {__version__}, model <code>{html.escape(net.id)}</code> (weights "
             f"<code>{net.weights_hash().hex()}</code>), {how}; rate control: the largest file of at most the target; "
             f"default encoder effort</li>"]  # fmt: skip
    items += [f"<li><b>{html.escape(c.name)}</b>: {html.escape(c.library)}; {html.escape(c.settings)}; "
              f"quality: {html.escape(c.quality)}</li>" for c in classical.values()]  # fmt: skip
    return f"<ul>{''.join(items)}</ul>"


def page(sections: list[Section], args, options: ratecontrol.Candidates, classical: dict, skipped: dict, deltas: dict,
         plots: list[str]) -> str:
    """The HTML of the page (images, files and plots referenced by relative paths)."""
    targets = list(sections[0].rows)
    codecs = [s.codec for s in sections[0].rows[targets[0]]]
    summary = [(c, [_mean([sec.rows[t][i] for sec in sections]) for t in targets]) for i, c in enumerate(codecs)]
    heads = []
    for t, ours in zip(targets, summary[0][1]):
        missed = sum(bool(sec.rows[t][0].note) for sec in sections)
        flag = f'<br><span class="note">target missed on {missed} of {len(sections)}</span>' if missed else ""
        heads.append(f"mean {_rate(ours.bpp, t)}{flag}")
    model = html.escape(options[-1][0].id)
    shown = ", ".join(f"{html.escape(s.name)} ({s.size[0]}x{s.size[1]})" for s in sections)
    parts = [
        f'<!doctype html><html lang=en><head><meta charset=utf-8><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>refcodec {model}: same-bitrate comparison</title>"
        f"<style>{_STYLE.replace('VIEW', str(args.crop_size * args.zoom))}</style></head><body>",
        f"<h1>Same-bitrate comparison: refcodec <code>{model}</code></h1>",
        f"<p>Shown: {shown}, from <code>{html.escape(str(args.folder))}</code>, at target bitrates of "
        f"{', '.join(f'{t:g}' for t in targets)} bpp. For each target, refcodec (model <code>{model}</code>) makes the largest file "
        f"of at most the target by rate control; each classical codec then gets the quality whose file is closest in size to "
        f"refcodec's. Every bitrate on this page is the one the file achieved (its size in bits over the pixels), with the "
        f"target beside it. <span class=note>&#9888; missed</span> flags a refcodec file more than {args.tolerance:.0%} from "
        f"its target (outside the model's range on that image), <span class=note>&#9888; size off</span> a classical file more "
        f"than {args.tolerance:.0%} from refcodec's size; hover for why.</p>",
        "<p>Each image's views show the full decoded images. They zoom (wheel, buttons, + and -) and pan (drag, arrow keys) "
        f"together, and open on {'the window where the codecs differ most' if sections[0].chosen else 'the window given by --crop'}. "
        "The large view flips between any two codecs, A and B, "
        "on a click or F; the image says which is shown. Every file and decoded image is linked under its view.</p>",
        "".join(f"<p class=note>{html.escape(k)} skipped: {html.escape(v)}</p>" for k, v in skipped.items()),
        "<p>" + " &middot; ".join(f'<a href="#{_slug(s.name)}">{html.escape(s.name)}</a>' for s in sections)
        + ' &middot; <a href="#bd">BD tables and RD plots</a> &middot; <a href="#settings">encoder settings</a></p>',
        "<h2>Summary (means over the images)</h2>",
        _table(summary, heads),
        *[_section(sec, args) for sec in sections],
        '<h2 id="bd">BD tables (over the curves of the codecs\' quality sweeps)</h2>',
        _bd_tables(deltas, args.metric),
        '<div class="plots">' + "".join(f'<img src="{p}" alt="{p}">' for p in plots) + "</div>",
        '<h2 id="settings">Encoder settings</h2>',
        _settings(args, classical, options),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)


def _section(sec: Section, args) -> str:
    """One image: the flip view, a row of views per distinct target, and its table."""
    (x, y, w, h), (W, H) = sec.box, sec.size
    z = min(W / w, H / h)
    how = "where the codecs differ most" if sec.chosen else "given by --crop"
    parts = [f'<section class="image" data-w="{W}" data-z="{z:.4f}" data-cx="{(x + w / 2) / W:.4f}" data-cy="{(y + h / 2) / H:.4f}">'
             f'<h2 id="{_slug(sec.name)}">{html.escape(sec.name)} ({W}x{H})</h2>'
             f"<p>The views open on the {w}x{h} window at ({x}, {y}), {how}; its PSNR is given as &ldquo;window&rdquo;.</p>",
             _flipper(sec, args.decoded)]  # fmt: skip
    distinct = dict(_distinct(sec.rows))
    original = _figure(sec.original, "original", "original", sec.size, [f'<a href="{sec.original}">{DECODED[args.decoded][2]}</a>'])
    for t, shots in sec.rows.items():
        heading = f'<h3 data-target="{t:g}">refcodec {_rate(shots[0].bpp, t)}'
        if t not in distinct:
            first = next(u for u, v in distinct.items() if v is shots)
            parts.append(f'{heading} <span class="note">&#9888; missed</span></h3><p class="note">refcodec makes the same file as at '
                         f"target {first:g} bpp: shown there.</p>")  # fmt: skip
            continue
        heading += f"{_flag(shots[0])}</h3>"
        figures = [original]
        for s in shots:
            file, image = _paths(sec, t, s, args.decoded)
            lines = [html.escape(s.setting), f"{s.bpp:.3f} bpp, {s.size:,} bytes", f"{_value(s.psnr, 2)} dB, MS-SSIM {_value(s.msssim, 4)}",
                     f'<span class="muted">window {s.crop_psnr:.2f} dB</span>',
                     f'<a class="file" href="{file}" download>{s.suffix[1:]} file</a> &middot; <a href="{image}">decoded ({DECODED[args.decoded][2]})</a>']  # fmt: skip
            figures.append(_figure(image, s.codec, _label(s), sec.size, lines, s.note))
        parts.append(f'<div class="row" data-target="{t:g}">{heading}<div class="grid">{"".join(figures)}</div></div>')
    rows = [(s.codec, [sec.rows[t][i] for t in sec.rows]) for i, s in enumerate(next(iter(sec.rows.values())))]
    parts.append(_table(rows, [_rate(shots[0].bpp, t) + _flag(shots[0]) for t, shots in sec.rows.items()]) + "</section>")
    return "\n".join(parts)


def write(args, classical: dict, skipped: dict, deltas: dict, out: Path) -> Path:
    """Match the classical codecs ({key: ``compare.Codec``}) to refcodec, write their files and
    OUTDIR/index.html with ``deltas`` (``compare.report``'s BD tables); its path."""
    options = ratecontrol.candidates(args.model)
    sections = build(args, options, classical, out)
    plots = [p for p in ("rd-psnr.png", "rd-msssim.png") if (out / p).exists()]
    path = out / "index.html"
    path.write_text(page(sections, args, options, classical, skipped, deltas, plots))
    return path
