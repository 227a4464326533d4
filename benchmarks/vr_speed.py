"""Encode and decode time of the variable-rate model against a fixed-rate one (the variable-rate issue's
speed target: no slower than ``grm/small/q3``), in alternating rounds in one process.

The fixed-rate weights left the package with release 0.3.0; take them from git:

    git show v0.2.0:src/refcodec/models/weights/grm-small-q3.safetensors > /tmp/grm-small-q3.safetensors
    python benchmarks/vr_speed.py ../shared/datasets/kodak --baseline /tmp/grm-small-q3.safetensors \\
        --qualities 1 3 8 --every 6 --threads 2 -o results/bench/vr-speed.json

Each round codes every image with the baseline and with the variable-rate model at each quality, one
after the other, so that a slow spell of a shared machine hits all of them: ``codec.compress`` (the
encode) and ``codec.decompress`` (the decode, exact synthesis included) of real files. The medians
over rounds of each image's time, summed over the images, are reported with their ratios to the
baseline's, as are the peak memory (ru_maxrss of this process) and the mean bpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from refcodec import codec
from refcodec.images import find_images, read_rgb
from refcodec.models import registry


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path)
    p.add_argument("--baseline", required=True, help="fixed-rate weights to compare with (a .safetensors file or model id)")
    p.add_argument("--model", default="grm/small/vr", help="the variable-rate model (default grm/small/vr)")
    p.add_argument("--qualities", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--every", type=int, default=1, help="take every n-th image (1: all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = find_images(args.images)[:: args.every]
    baseline = registry.load_model(args.baseline)
    variable = registry.load_model(args.model)
    if baseline.levels or not variable.levels:
        raise SystemExit("vr_speed: --baseline must be a fixed-rate model and --model a variable-rate one")
    runs = {baseline.id: (baseline, None)} | {f"{variable.id}@{q:g}": (variable, q) for q in args.qualities}
    times = {name: {i.name: {"encode": [], "decode": []} for i in images} for name in runs}
    bpp = {name: {} for name in runs}
    for _ in range(args.rounds):
        for image in images:
            rgb = read_rgb(image)
            for name, (model, quality) in runs.items():
                data, encode = timed(codec.compress, rgb, model, quality=quality)
                _, decode = timed(codec.decompress, data, model)
                times[name][image.name]["encode"].append(encode)
                times[name][image.name]["decode"].append(decode)
                bpp[name][image.name] = 8 * len(data) / (rgb.width * rgb.height)
    summary = {}
    for name in runs:
        summary[name] = {k: sum(statistics.median(t[k]) for t in times[name].values()) for k in ("encode", "decode")}
        summary[name]["bpp"] = statistics.mean(bpp[name].values())
    base = summary[baseline.id]
    for name, row in summary.items():
        row |= {f"{k}_vs_baseline": row[k] / base[k] for k in ("encode", "decode")}
        print(f"{name}: encode {row['encode']:.2f} s ({row['encode_vs_baseline']:.2f}x), decode {row['decode']:.2f} s "
              f"({row['decode_vs_baseline']:.2f}x), {row['bpp']:.3f} bpp")  # fmt: skip
    report = {"machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}", "threads": args.threads,
              "rounds": args.rounds, "images": [i.name for i in images], "baseline": baseline.id, "summary": summary,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "per_image": times}  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
