"""``refcodec compare``: classical codecs over a quality sweep, BD tables and RD plots.

Each codec encodes every image of a folder at each quality; the rate is the size of
the file it writes (container included) and the distortion is measured on the decoded
8-bit RGB image, as ``refcodec eval`` does. Results go to OUTDIR/<codec>.json in
CompressAI's results layout, next to bdrate.json, bdrate.md, rd-psnr.png,
rd-msssim.png and rate-savings.png, which also include any ``--curves`` files.
A codec whose library is missing is skipped with a note. ``--effort`` also measures a refcodec
model at each given encoder effort (``refine``) on the same images, as ``refcodec eval`` does.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import torch
from PIL import Image, features

from ..errors import RefcodecError
from ..images import find_images, read_rgb
from ..models.registry import DEFAULT_MODEL
from ..efforts import EFFORTS
from . import bdrate, plot, visual
from .evaluate import curve_name, distortion, evaluate, summarize


class Unavailable(Exception):
    """The library a codec needs is missing or lacks the feature."""


@dataclass(frozen=True)
class Codec:
    """A classical codec: how it is called, what its quality parameter means, and its default sweep."""
    name: str  # reduces to its key in CODECS (bdrate.key)
    suffix: str  # of its files
    library: str  # libraries and versions
    settings: str  # fixed encoder settings
    quality: str  # what the swept parameter means
    sweep: tuple  # default qualities, about 0.1-1.5 bpp on Kodak
    encode: Callable[[Image.Image, float], bytes]
    decode: Callable[[bytes], Image.Image]


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _pillow(feature: str) -> str:
    if not features.check(feature):
        raise Unavailable(f"Pillow {PIL.__version__} was built without {feature}")
    return f"Pillow {PIL.__version__}"


def jpeg(threads: int) -> Codec:
    lib = f"libjpeg-turbo {features.version('libjpeg_turbo')}" if features.check_feature("libjpeg_turbo") else "libjpeg"
    return Codec(
        "JPEG", ".jpg", f"{_pillow('jpg')}, {lib}", "4:2:0, baseline, optimize=True (optimized Huffman tables)",
        "Pillow quality 0-100", (5, 10, 20, 30, 45, 60, 75, 85),
        lambda im, q: _save(im, "JPEG", quality=int(q), subsampling="4:2:0", optimize=True), _open,
    )  # fmt: skip


def webp(threads: int) -> Codec:
    return Codec(
        "WebP", ".webp", f"{_pillow('webp')}, libwebp {features.version('webp')}", "lossy (4:2:0), method=4 (Pillow's default)",
        "Pillow quality 0-100", (0, 10, 25, 45, 65, 80, 90),
        lambda im, q: _save(im, "WEBP", quality=int(q), method=4), _open,
    )  # fmt: skip


def jpeg2000(threads: int) -> Codec:
    return Codec(
        "JPEG 2000", ".j2k", f"{_pillow('jpg_2000')}, OpenJPEG {features.version('jpg_2000')}",
        "J2K codestream, irreversible 9/7 wavelet, YCbCr transform (mct=1), one layer rate-controlled to 24/q:1",
        "target bpp", (0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1.1, 1.5),
        lambda im, q: _save(im, "JPEG2000", quality_mode="rates", quality_layers=[24 / q], irreversible=True, mct=1,
                            no_jp2=True), _open,
    )  # fmt: skip


def avif(threads: int) -> Codec:
    """AVIF through Pillow's plugin, else through pillow-heif's AVIF encoder."""
    sweep = (10, 25, 40, 55, 65, 75, 85)
    if features.check("avif"):
        from PIL import AvifImagePlugin, _avif

        AvifImagePlugin.DEFAULT_MAX_THREADS = threads
        return Codec(
            "AVIF", ".avif", f"Pillow {PIL.__version__}, libavif {features.version('avif')} ({_avif.codec_versions()})",
            "4:2:0, speed=6, full range", "Pillow quality 0-100", sweep,
            lambda im, q: _save(im, "AVIF", quality=int(q), subsampling="4:2:0", speed=6, max_threads=threads), _open,
        )  # fmt: skip
    import pillow_heif

    info = pillow_heif.libheif_info()
    if not info.get("AVIF"):
        raise Unavailable("neither Pillow nor pillow-heif has an AVIF encoder")
    return Codec(
        "AVIF", ".avif", f"pillow-heif {pillow_heif.__version__}, libheif {info['libheif']}, {info['AVIF']}", "4:2:0 (chroma=420)",
        "libheif quality 0-100", sweep, lambda im, q: _heif_save(im, "AVIF", quality=int(q), chroma=420), _heif_open,
    )  # fmt: skip


def _heif_save(image: Image.Image, fmt: str, **options) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def _heif_open(data: bytes) -> Image.Image:
    import pillow_heif

    return pillow_heif.open_heif(io.BytesIO(data)).to_pillow().convert("RGB")


def hevc(threads: int) -> Codec:
    """HEVC intra coded by x265 in a HEIF file: the equivalent of BPG, the paper's anchor."""
    import pillow_heif

    info = pillow_heif.libheif_info()
    if "x265" not in info.get("encoders", {}):
        raise Unavailable(f"libheif {info['libheif']} has no x265 encoder")
    pillow_heif.options.DECODE_THREADS = threads
    params = {"tune": "psnr", "x265:pools": str(threads)}
    return Codec(
        "HEVC", ".heic", f"pillow-heif {pillow_heif.__version__}, libheif {info['libheif']}, {info['HEIF']}, "
                f"{info['decoders'].get('libde265', 'libde265')}",
        "HEIF, 4:2:0 (chroma=420), BT.601 full range, x265 preset slow (libheif's default), tune=psnr",
        "libheif quality 0-100", (5, 12, 20, 28, 36, 44, 52, 58),
        lambda im, q: _heif_save(im, "HEIF", quality=int(q), chroma=420, enc_params=dict(params)), _heif_open,
    )  # fmt: skip


def jpegxl(threads: int) -> Codec:
    import imagecodecs

    if not imagecodecs.JPEGXL.available:
        raise Unavailable(f"imagecodecs {imagecodecs.__version__} was built without JPEG XL")
    return Codec(
        "JPEG XL", ".jxl", f"imagecodecs {imagecodecs.__version__}, {imagecodecs.jpegxl_version()}",
        "effort=7 (default), XYB (lossy default)",
        "Butteraugli distance (lower is better)", (20, 12, 7, 4.5, 3, 2, 1.4, 1),
        lambda im, q: imagecodecs.jpegxl_encode(np.asarray(im), distance=q, effort=7, numthreads=threads),
        lambda data: Image.fromarray(imagecodecs.jpegxl_decode(data, numthreads=threads)),
    )  # fmt: skip


CODECS = {"jpeg": jpeg, "webp": webp, "jpeg2000": jpeg2000, "avif": avif, "hevc": hevc, "jpegxl": jpegxl}


def measure(c: Codec, image: Image.Image, quality: float) -> dict:
    """Rate, distortion and timings of one image at one quality."""
    start = time.perf_counter()
    data = c.encode(image, quality)
    encoded = time.perf_counter()
    out = c.decode(data)
    decoded = time.perf_counter()
    return {
        "bpp": 8 * len(data) / (image.width * image.height),
        **distortion(image, out),
        "encoding_time": encoded - start,
        "decoding_time": decoded - encoded,
    }


def sweep(c: Codec, images: dict[str, Image.Image], qualities, conditions: str = "") -> dict:
    """CompressAI-layout results of one codec: one entry per quality (mean over images) and the per-image rows."""
    results, per_image = {}, {}
    for q in qualities:
        rows = [{"image": name, **measure(c, image, q)} for name, image in images.items()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # MS-SSIM is NaN on every image under 161 px
            mean = summarize(rows)
        with np.errstate(divide="ignore"):
            mean["ms-ssim-db"] = float(-10 * np.log10(1 - np.float64(mean["ms-ssim-rgb"])))  # of the mean, as plotted
        for k, v in mean.items():
            results.setdefault(k, []).append(v)
        per_image[f"{q:g}"] = rows
        print(f"{c.name} q={q:g}: {mean['bpp']:.3f} bpp, {mean['psnr-rgb']:.2f} dB, MS-SSIM {mean['ms-ssim-rgb']:.4f} "
              f"({mean['ms-ssim-db']:.2f} dB), encode {mean['encoding_time']:.3f} s, decode {mean['decoding_time']:.3f} s",
              flush=True)  # fmt: skip
    return {
        "name": c.name,
        "description": f"{c.library}; {c.settings}; quality: {c.quality}; {conditions}",
        "codec": {"library": c.library, "settings": c.settings, "quality": c.quality},
        "qualities": list(qualities),
        "results": results,
        "per_image": per_image,
    }


MODEL = "refcodec"  # the name --qualities gives the --model's qualities (of --effort)


def _qualities(specs: list[str] | None, names: list[str]) -> dict[str, tuple]:
    """Parse ``Q,Q,...`` (every classical codec) and ``CODEC=Q,Q,...`` (one codec, or ``refcodec=`` for the
    --model's qualities) into {codec: qualities}."""
    chosen = {}
    for spec in specs or []:
        target, _, values = spec.rpartition("=")
        if target and target not in names + [MODEL]:
            raise RefcodecError(f"--qualities {spec}: {target} is not among the codecs ({', '.join(names + [MODEL])})")
        try:
            qs = tuple(int(v) if v.is_integer() else v for v in map(float, values.split(",")))
        except ValueError:
            raise RefcodecError(f"--qualities {spec}: expected numbers separated by commas") from None
        chosen.update({n: qs for n in ([target] if target else names)})
    return chosen


def _codec_names(spec: str) -> list[str]:
    names = [] if spec == "none" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise RefcodecError(f"unknown codec {', '.join(unknown)} (known: {', '.join(CODECS)}, or none)")
    return names


def _extra_curves(paths: list[str], taken: set[str]) -> list[bdrate.Curve]:
    """Curves from results files; a name already in use gets the file's stem appended."""
    curves = []
    for path in paths:
        c = bdrate.load_curve(path)
        if bdrate.key(c.name) in taken:
            c.name = f"{c.name} ({Path(path).stem})"
        taken.add(bdrate.key(c.name))
        curves.append(c)
    return curves


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")


def run_codecs(names: list[str], qualities: dict, folder: str, threads: int, out: Path) -> tuple[list, dict]:
    """Sweep each codec over the images of ``folder``, writing OUTDIR/<codec>.json; the curves and the skipped codecs."""
    files = find_images(folder) if names else []
    images = {str(f.relative_to(folder)): read_rgb(f) for f in files}
    curves, skipped = [], {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # for MS-SSIM: more threads than cores are slow under load
    try:
        for name in names:
            try:
                c = CODECS[name](threads)
            except (ImportError, Unavailable) as e:
                skipped[name] = str(e)
                print(f"skipping {name}: {e}")
                continue
            results = sweep(c, images, qualities.get(name, c.sweep), f"{threads} thread(s), {len(images)} images of {folder}")
            _write_json(out / f"{name}.json", results)
            curves.append(bdrate.curve(results, name))
    finally:
        torch.set_num_threads(torch_threads)
    return curves, skipped


def run_efforts(efforts: list[str], model: str, qualities: list[float], folder: str, threads: int, out: Path) -> list:
    """refcodec ``model`` at each quality and encoder effort on the images of ``folder``, writing
    OUTDIR/refcodec-<effort>.json; the curves."""
    curves = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for effort in efforts:
            results = evaluate(model, folder, qualities, effort=effort)
            _write_json(out / f"refcodec-{effort}.json", results)
            curves.append(bdrate.curve(results))
    finally:
        torch.set_num_threads(torch_threads)
    return curves


def report(curves: list[bdrate.Curve], anchors: list[str], skipped: dict, out: Path, title: str, metric: str = "psnr") -> dict:
    """BD tables against each anchor in ``metric`` (bdrate.json and bdrate.md, or bdrate-ms-ssim.*; printed)
    and the plots; the tables ({anchor: {curve: deltas}})."""
    found = []  # the index of each anchor's curve
    for a in anchors:
        match = [i for i, c in enumerate(curves) if bdrate.key(c.name) == bdrate.key(a)]
        if match:
            found.append(match[0])
        else:
            print(f"no BD table against {a}: it was skipped")
    anchor = curves[found[0]] if found else None
    plot.rd_plot(curves, out / "rd-psnr.png", "psnr", anchor, title)
    plot.rd_plot(curves, out / "rd-msssim.png", "msssim", anchor, title)
    suffix = "" if metric == "psnr" else f"-{metric}"
    measured = [bdrate.in_metric(c, metric) for c in curves]
    anchor_curves = [measured[i] for i in found]
    deltas = bdrate.table(measured, anchor_curves)
    axis = "psnr-rgb" if metric == "psnr" else "ms-ssim-rgb-db"
    _write_json(out / f"bdrate{suffix}.json", {"method": bdrate.METHOD, "metric": axis, "anchors": deltas, "skipped": skipped})
    md = bdrate.markdown(deltas, measured, metric) if deltas else "No anchor curve: no BD table.\n"
    (out / f"bdrate{suffix}.md").write_text(md)
    print(md, end="")
    if anchor_curves:
        plot.savings_plot(measured, anchor_curves[0], out / f"rate-savings{suffix}.png", title, metric)
    return deltas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refcodec compare",
                                description="Classical codecs on a folder of images; BD tables and RD plots.")  # fmt: skip
    p.add_argument("folder", nargs="?", help="folder of images, searched recursively (not needed with --codecs none)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated, from {','.join(CODECS)}; or none")
    p.add_argument("--qualities", nargs="+", metavar="[CODEC=]Q,Q",
                   help=f"quality sweep for every classical codec, or for one; {MODEL}=Q,Q: the qualities of --model "
                   f"measured with --effort (default {MODEL}=1,2,3,4)")  # fmt: skip
    p.add_argument("--anchor", help="comma-separated anchors of the BD tables, codecs or curve names; the first is the "
                                    "reference of rate-savings.png (default: hevc if run, else the first curve)")  # fmt: skip
    p.add_argument("--curves", nargs="+", action="extend", default=[], metavar="JSON",
                   help="more results files in CompressAI's layout (refcodec eval, published curves)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="threads for x265, libde265, libavif, libjxl and refcodec (default 1)")
    p.add_argument("--effort", nargs="+", default=[], choices=list(EFFORTS),
                   help="also measure refcodec --model at each of these encoder efforts (refcodec compress --effort)")  # fmt: skip
    p.add_argument("--model-qualities", type=float, nargs="+", help=argparse.SUPPRESS)  # the old spelling of refcodec=Q,Q
    p.add_argument("--metric", default="psnr", choices=list(bdrate.METRICS),
                   help="quality axis of the BD tables and the rate-savings plot: PSNR, or MS-SSIM in dB as the paper's "
                   "Figure 6 (writes bdrate-ms-ssim.json/.md and rate-savings-ms-ssim.png)")  # fmt: skip
    visual.add_arguments(p)
    args = p.parse_args(argv)

    names = _codec_names(args.codecs)
    qualities = _qualities(args.qualities, names)
    extra = _extra_curves(args.curves, set(names))
    known = names + [bdrate.key(c.name) for c in extra] + [bdrate.key(curve_name(args.model, e)) for e in args.effort]
    known += [bdrate.key(visual.curve_name(args))] if args.visual else []
    if not known:
        raise RefcodecError("nothing to compare: no codecs and no --curves")
    anchors = [a.strip() for a in args.anchor.split(",") if a.strip()] if args.anchor else []
    anchors = anchors or ["hevc" if "hevc" in known else known[0]]
    for a in anchors:
        if bdrate.key(a) not in known:
            raise RefcodecError(f"anchor {a} is neither a selected codec nor the name of a --curves file")
    if (names or args.effort) and not args.folder:
        raise RefcodecError("a folder of images is needed to run codecs or efforts (or use --codecs none)")
    if args.threads < 1:
        raise RefcodecError("--threads must be at least 1")
    if args.visual:
        visual.check_arguments(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    curves, skipped = run_codecs(names, qualities, args.folder, args.threads, out)
    if args.visual:
        extra.append(visual.refcodec_curve(args, out))
    model_qualities = qualities.pop(MODEL, None) or args.model_qualities or (1, 2, 3, 4)
    curves += run_efforts(args.effort, args.model, list(model_qualities), args.folder, args.threads, out)
    deltas = report(curves + extra, anchors, skipped, out, Path(args.folder).name if args.folder else "", args.metric)
    if args.visual:
        classical = {n: CODECS[n](args.threads) for n in names if n not in skipped}
        print(f"wrote {visual.write(args, classical, skipped, deltas, out)}")
    print(f"wrote {out}")
    return 0
