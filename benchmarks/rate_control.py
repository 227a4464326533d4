"""What rate control to a target costs, in encodes' time: the search of ``ratecontrol`` against one plain encode
and one decode of the same image, on the same machine and threads (issue 37's target: a bpp target costs at
most 3 encodes plus one decode).

For every image and target bpp, the script times a plain encode at the default quality and a decode of it (the
best of ``--repeat``), then ``ratecontrol.search`` (once: its encodes share the image's analysis), and records
the encodes it made, the quality it chose, its file's rate and its time in plain encodes. A search's time
includes the decode it makes of the file it returns, so the target reads: search <= 3 encodes + 1 decode.

    python benchmarks/rate_control.py ../shared/datasets/kodak --targets 0.25 0.5 0.75 --threads 2 \\
        -o results/bench/rate-control.json
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/rate_control.py ../shared/datasets/kodak --no-mkldnn ... \\
        -o results/bench/rate-control-avx2.json     # how torch runs on a CPU without AVX-512 VNNI
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from refcodec import codec, images, ratecontrol
from refcodec.images import find_images
from refcodec.models import registry


def best_time(fn, repeat: int) -> tuple[float, object]:
    """The shortest of ``repeat`` runs of ``fn`` and its result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(model, path: Path, targets: list[float], repeat: int) -> list[dict]:
    """One row per target: the search's encodes, choice and time against a plain encode and decode of ``path``."""
    image = images.load_image(path)
    encode_s, data = best_time(lambda: codec.compress(image, model, quality=registry.DEFAULT_QUALITY), repeat)
    decode_s, _ = best_time(lambda: codec.decompress(data, model), repeat)
    options = ratecontrol.candidates(model)
    rows = []
    for target in targets:
        start = time.perf_counter()
        choice = ratecontrol.search(image, options, target_bpp=target)
        seconds = time.perf_counter() - start
        rows.append({"image": path.name, "target_bpp": target, "encodes": choice.encodes, "quality": choice.quality,
                     "bpp": choice.bpp, "out_of_range": choice.note is not None, "seconds": seconds, "encode_s": encode_s,
                     "decode_s": decode_s, "in_encodes": (seconds - decode_s) / encode_s})  # fmt: skip
        print(f"{path.name} {target:g} bpp: quality {choice.quality:g}, {choice.bpp:.4f} bpp, {choice.encodes} encodes, "
              f"{seconds:.2f} s = {rows[-1]['in_encodes']:.2f} encodes + 1 decode", flush=True)  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path, help="a folder of images")
    p.add_argument("--model", default=None, help="model id or weights (default: the default model)")
    p.add_argument("--targets", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--limit", type=int, default=24, help="the first N images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="runs of the plain encode and decode (their best counts)")
    p.add_argument("--no-mkldnn", action="store_true", help="turn oneDNN off (with ATEN_CPU_CAPABILITY=avx2: an AVX2-only CPU)")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    model = registry.load_model(args.model or registry.DEFAULT_MODEL)
    rows = [r for f in find_images(args.images)[: args.limit] for r in measure(model, f, args.targets, args.repeat)]
    inside = [r for r in rows if not r["out_of_range"]]
    summary = {"searches": len(rows), "in_range": len(inside),
               "mean_encodes": statistics.mean(r["encodes"] for r in inside), "max_encodes": max(r["encodes"] for r in inside),
               "mean_in_encodes": statistics.mean(r["in_encodes"] for r in inside),
               "max_in_encodes": max(r["in_encodes"] for r in inside)} if inside else {}  # fmt: skip
    report = {"model": model.id, "images": str(args.images), "targets": args.targets, "threads": args.threads,
              "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
              f"{torch.backends.cpu.get_cpu_capability()}, oneDNN {'on' if torch.backends.mkldnn.enabled else 'off'}", "load_average": round(os.getloadavg()[0], 1),
              "summary": summary, "rows": rows}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
