"""Encoder effort on a folder: rate saved by ``slow`` over ``default``, per image and quality, and encode times.

    python benchmarks/effort.py ../shared/datasets/kodak --model grm -q 1 2 3 4 -o results/effort/kodak

For each quality and image, both efforts encode (real files) and decode; the script prints and saves
(OUT.json, OUT.md) the BD-rate of ``slow`` against ``default`` (``eval.bdrate``), each effort's mean
bpp, PSNR and encode seconds per quality, the saving split into rate and distortion at equal lambda
(the change of bpp and of PSNR between the two files of the same quality), and every image's row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from refcodec import codec, refine
from refcodec.eval import bdrate
from refcodec.images import find_images, read_rgb
from refcodec.models.registry import load_model


def measure(model, image, effort: str) -> dict:
    start = time.perf_counter()
    data = codec.compress(image, model, effort=effort)
    seconds = time.perf_counter() - start
    out = codec.decompress(data, model).convert("RGB")
    return {"bpp": 8 * len(data) / (image.width * image.height), "psnr": codec.psnr(image, out), "encode_seconds": seconds}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--model", default="grm")
    p.add_argument("-q", "--quality", type=float, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--every", type=int, default=1, help="take every k-th image (sorted by path)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, help=f"refinement steps of slow (default {refine.EFFORTS['slow']})")
    p.add_argument("-o", "--output", required=True, help="OUT: writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps is not None:
        refine.EFFORTS["slow"] = args.steps
    files = find_images(args.folder)[:: args.every]
    rows = []
    for q in args.quality:
        model = load_model(args.model, q)
        for f in files:
            image = read_rgb(f)
            row = {"quality": q, "image": f.name, **{e: measure(model, image, e) for e in ("default", "slow")}}
            rows.append(row)
            d, s = row["default"], row["slow"]
            print(f"q{q:g} {f.name}: default {d['bpp']:.4f} bpp {d['psnr']:.2f} dB {d['encode_seconds']:.1f} s | slow "
                  f"{s['bpp']:.4f} bpp {s['psnr']:.2f} dB {s['encode_seconds']:.1f} s | rate {100 * (s['bpp'] / d['bpp'] - 1):+.1f}% "
                  f"psnr {s['psnr'] - d['psnr']:+.2f} dB", flush=True)  # fmt: skip
    per_quality = []
    for q in args.quality:
        at = [r for r in rows if r["quality"] == q]
        mean = {e: {k: float(np.mean([r[e][k] for r in at])) for k in ("bpp", "psnr", "encode_seconds")} for e in ("default", "slow")}
        per_quality.append({"quality": q, **mean, "rate_change": mean["slow"]["bpp"] / mean["default"]["bpp"] - 1,
                            "psnr_change": mean["slow"]["psnr"] - mean["default"]["psnr"]})  # fmt: skip
    curves = {e: bdrate.curve({"name": e, "results": {"bpp": [r[e]["bpp"] for r in per_quality], "psnr-rgb": [r[e]["psnr"] for r in per_quality]}})
              for e in ("default", "slow")}  # fmt: skip
    delta = bdrate.delta(curves["default"], curves["slow"])
    report = {"model": args.model, "qualities": args.quality, "images": [f.name for f in files], "steps": refine.EFFORTS["slow"],
              "threads": args.threads, "bd_rate_slow_vs_default": delta, "per_quality": per_quality, "per_image": rows}  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# `slow` ({refine.EFFORTS['slow']} SGA steps) against `default`, {args.model}, {len(files)} images of {args.folder}\n",
             f"BD-rate: {delta['bd_rate']:+.2f}% (BD-PSNR {delta['bd_psnr']:+.3f} dB)\n",
             "| quality | default bpp | default PSNR | slow bpp | slow PSNR | rate at equal lambda | PSNR at equal lambda | encode default (s) | encode slow (s) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in per_quality:
        lines.append(f"| {r['quality']:g} | {r['default']['bpp']:.4f} | {r['default']['psnr']:.2f} | {r['slow']['bpp']:.4f} | {r['slow']['psnr']:.2f} | "
                     f"{100 * r['rate_change']:+.1f}% | {r['psnr_change']:+.2f} dB | {r['default']['encode_seconds']:.1f} | {r['slow']['encode_seconds']:.1f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
