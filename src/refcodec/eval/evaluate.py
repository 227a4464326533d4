"""``refcodec eval``: real bitstreams on a folder of images; bpp, PSNR, MS-SSIM, timings.

Rates come from the size of the file that ``refcodec compress`` would write
(container included). ``--estimate`` also reports the model's estimated rate
(sum of -log2 likelihoods of the coding stage and z) and the gap to the real size.
The JSON follows the layout of CompressAI's published results files.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import codec, metrics
from ..images import find_images, read_rgb, to_rgb
from ..efforts import EFFORTS
from ..models.registry import DEFAULT_MODEL, LAMBDAS, load_model
from ..versions import versions


def _estimated_bits(model, image) -> float:
    x = codec.padded_tensor(to_rgb(image)[0])
    with torch.no_grad():
        lik = model(x)["likelihoods"]
    bits = -torch.log2(lik["y"][-1]).sum()
    if "z" in lik:
        bits = bits + -torch.log2(lik["z"]).sum()
    return float(bits)


def distortion(image, out) -> dict:
    """PSNR and MS-SSIM of an 8-bit RGB reconstruction (MS-SSIM is NaN below 161 px, where its 5 scales do not fit)."""
    return {"psnr-rgb": codec.psnr(image, out), "ms-ssim-rgb": metrics.ms_ssim(image, out)}


def evaluate_image(model, path: Path, estimate: bool, effort: str = "default") -> dict:
    """Compress and decompress one image file with real bitstreams: bpp, PSNR, MS-SSIM, seconds;
    with ``estimate``, also the model's estimated rate and the file's gap to it (of the unrefined latents)."""
    image = read_rgb(path)
    start = time.perf_counter()
    data = codec.compress(image, model, effort=effort)
    encoded = time.perf_counter()
    out = codec.decompress(data, model)
    decoded = time.perf_counter()
    pixels = image.width * image.height
    row = {
        "image": path.name,
        "bpp": 8 * len(data) / pixels,
        **distortion(image, out.convert("RGB")),
        "encoding_time": encoded - start,
        "decoding_time": decoded - encoded,
    }
    if estimate:
        payload = 8 * (len(data) - _header_bytes(data))
        est = _estimated_bits(model, image)
        row.update({"estimated_bpp": est / pixels, "payload_bpp": payload / pixels, "estimate_gap": payload / est - 1})
    return row


def _header_bytes(data: bytes) -> int:
    from ..bitstream import read_header

    return len(data) - sum(read_header(data).stream_lengths)


def summarize(rows: list[dict]) -> dict:
    """Means over images of every measured quantity, NaN-aware: NaN where no image has one (MS-SSIM
    of images of 160 pixels or less a side)."""
    keys = [k for k in rows[0] if k != "image"]
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    return {k: float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else math.nan for k, v in values.items()}


def curve_name(model_name: str, effort: str) -> str:
    """The name of a model's results at an encoder effort: refcodec-grm, refcodec-grm-slow, ..."""
    return f"refcodec-{model_name}" + ("" if effort == "default" else f"-{effort}")


def evaluate(model_name: str, folder: str, qualities: list, estimate: bool = False, effort: str = "default") -> dict:
    """CompressAI-layout results of a model (name, id or file) at each quality (None: the model's own) on the
    images of a folder, real bitstreams at ``effort``: one entry per quality (mean over images), and each image's row."""
    files = find_images(folder)
    results, per_image = {}, {}
    for q in qualities:
        model = load_model(model_name, q) if q is not None else load_model(model_name)
        rows = [evaluate_image(model, f, estimate, effort) for f in files]
        label = model.id if not model.levels else f"{model.id}@{model.quality:g}"  # one variable-rate model, many qualities
        per_image[label] = rows
        for k, v in {**summarize(rows), **({"quality": model.quality} if model.levels else {})}.items():
            results.setdefault(k, []).append(v)
        print(f"{label}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()), flush=True)
    return {
        "name": curve_name(model_name, effort),
        "description": f"refcodec {model_name} on {folder}, real bitstreams, {effort} effort, {torch.get_num_threads()} threads",
        "versions": versions(),
        "results": results,
        "per_image": per_image,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refcodec eval", description="Evaluate a model with real bitstreams on a folder of images.")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name, model id or .safetensors file")
    p.add_argument("--quality", "-q", type=float, nargs="+", default=None,
                   help=f"qualities to evaluate: any numbers in a variable-rate model's range (0-{max(LAMBDAS)}), "
                   "or the shipped qualities of --model NAME (default: the default quality, 3)")  # fmt: skip
    p.add_argument("--estimate", action="store_true", help="also report the estimated rate and its gap to the file size")
    p.add_argument("--effort", default="default", choices=list(EFFORTS), help="encoder effort (refcodec compress --effort)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    p.add_argument("-o", "--output", help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate(args.model, args.folder, args.quality or [None], args.estimate, args.effort)
    results = report["results"]
    text = json.dumps(report, indent=2, allow_nan=True)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0 if all(math.isfinite(v) for v in results["bpp"]) else 1
