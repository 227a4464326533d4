"""Peak memory of encoding a large image at an effort: refinement in tiles keeps it bounded.

    OMP_NUM_THREADS=1 python benchmarks/effort_memory.py ../shared/datasets/kodak/kodim23.png --size 3840 2160 \\
        --effort slow --steps 2 -o results/effort/memory-4k-slow.json

The image is resized (bicubic) to ``--size``, encoded once at ``--effort`` (``--steps`` overrides the
effort's refinement steps: memory does not grow with the steps, time does) and decoded; the script
prints and saves the peak resident memory of the process (``ru_maxrss``), the tiles, the encode and
decode seconds and the file's bpp and PSNR. Run each effort in its own process: the peak is the process's.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from PIL import Image

from refcodec import codec, refine
from refcodec.models.registry import load_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image")
    p.add_argument("--size", type=int, nargs=2, default=[3840, 2160], metavar=("W", "H"))
    p.add_argument("--model", default="grm/small/vr")
    p.add_argument("--effort", default="slow", choices=list(refine.EFFORTS))
    p.add_argument("--steps", type=int, help="refinement steps instead of the effort's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps is not None:
        refine.EFFORTS[args.effort] = args.steps
    image = codec.to_rgb(codec.load_image(args.image))[0].resize(tuple(args.size), Image.BICUBIC)
    model = load_model(args.model)
    start = time.perf_counter()
    data = codec.compress(image, model, effort=args.effort, max_pixels=image.width * image.height)
    encoded = time.perf_counter()
    out = codec.decompress(data, model, max_pixels=image.width * image.height)
    decoded = time.perf_counter()
    padded = codec.padded_tensor(image).shape[2:]
    report = {
        "image": args.image, "size": args.size, "model": args.model, "effort": args.effort, "steps": refine.EFFORTS[args.effort],
        "tiles": len(refine.windows(*padded)) if refine.EFFORTS[args.effort] else 0, "threads": args.threads,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "encode_seconds": encoded - start, "decode_seconds": decoded - encoded,
        "bpp": 8 * len(data) / (image.width * image.height), "psnr": codec.psnr(image, out),
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
