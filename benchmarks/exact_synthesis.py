"""Exact synthesis against the float32 synthesis it replaced: decode time, PSNR and pixels, per model.

Every image is encoded once per model (a format version 3 file), then decoded in the same process
with the float32 synthesis (``exact=False``, what files before version 3 get) and with the exact one,
in alternating order, timing each whole decode (entropy decoding and synthesis; the least of
``--repeat`` decodes, the least disturbed by other work on the machine). Also records each
model's per-layer worst-case sums and their limits, as powers of two (``synthesis``). Prints a table and
writes JSON.

    python benchmarks/exact_synthesis.py ../shared/datasets/kodak -o results/exact-synthesis/kodak.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from refcodec import codec
from refcodec.bitstream import unpack
from refcodec.images import find_images
from refcodec.models import registry
from refcodec.synthesis import exact_synthesis


def decode(model, data: bytes, exact: bool, repeat: int) -> tuple[float, np.ndarray]:
    """Seconds of a whole decode (the least of ``repeat``) and its 8-bit pixels."""
    header, streams = unpack(data)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        x_hat = model.decompress(streams, *header.padded_size, exact=exact)
        times.append(time.perf_counter() - start)
    return min(times), np.asarray(codec.to_image(header, x_hat))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", type=Path)
    p.add_argument("--models", nargs="+", default=None, help="model ids (default: every shipped model)")
    p.add_argument("--every", type=int, default=1, help="take every n-th image (1: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="decodes per image and synthesis; the least time is kept")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = find_images(args.images)[:: args.every]
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "repeat": args.repeat,
              "images": [i.name for i in images], "models": {}}  # fmt: skip
    lines = ["| model | decode float32 (s) | decode exact (s) | change | PSNR float32 | PSNR exact | dPSNR (dB) | 8-bit values changed | worst case, least margin |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model_id in args.models or registry.shipped_ids():
        model = registry.load_model(model_id)
        margins = exact_synthesis(model.g_s).margins()
        rows = []
        for n, path in enumerate(images):
            original = np.asarray(codec.to_rgb(codec.load_image(path))[0])
            data = codec.compress(path, model)
            order = (False, True) if n % 2 == 0 else (True, False)
            runs = {exact: decode(model, data, exact, args.repeat) for exact in order}
            (t_float, x_float), (t_exact, x_exact) = runs[False], runs[True]
            rows.append({"image": path.name, "bytes": len(data), "seconds_float32": t_float, "seconds_exact": t_exact,
                         "psnr_float32": psnr(original, x_float), "psnr_exact": psnr(original, x_exact),
                         "values_changed": int((x_float != x_exact).sum()), "values": int(x_exact.size)})  # fmt: skip
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("seconds_float32", "seconds_exact", "psnr_float32", "psnr_exact")}
        changed = sum(r["values_changed"] for r in rows) / sum(r["values"] for r in rows)
        top = max(bits - limit for _, bits, limit in margins)
        report["models"][model_id] = {**mean, "decode_change": mean["seconds_exact"] / mean["seconds_float32"] - 1,
                                      "values_changed_fraction": changed, "worst_case_log2": margins,
                                      "per_image": rows}  # fmt: skip
        lines.append(f"| {model_id} | {mean['seconds_float32']:.3f} | {mean['seconds_exact']:.3f} | "
                     f"{100 * (mean['seconds_exact'] / mean['seconds_float32'] - 1):+.1f}% | {mean['psnr_float32']:.4f} | "
                     f"{mean['psnr_exact']:.4f} | {mean['psnr_exact'] - mean['psnr_float32']:+.5f} | {100 * changed:.3f}% | "
                     f"2^{top:.1f} of the limit |")  # fmt: skip
        print(lines[-1], flush=True)
    table = f"{len(images)} images from {args.images}; {report['machine']}\n\n" + "\n".join(lines) + "\n"
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        args.output.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
