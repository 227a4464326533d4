"""Encode and decode time of CompressAI's mbt2018 (Minnen et al. 2018, the joint autoregressive model), for comparison.

Runs in its own environment, because CompressAI 1.2.8 needs numpy<2 and torchvision:

    python3 -m venv .venv-compressai
    .venv-compressai/bin/pip install torch==2.13.0 && .venv-compressai/bin/pip install 'numpy<2' compressai==1.2.8
    .venv-compressai/bin/pip install torch==2.13.0 'torchvision==0.28.*'   # compressai pulls a newer pair; the shim needs these
    PYTHONPATH=../shared/tools/compressai-shim .venv-compressai/bin/python benchmarks/compressai_mbt2018.py \\
        ../shared/datasets/kodak/kodim01.png --quality 3 --threads 2 -o results/bench/compressai-mbt2018.json

The model is built at the quality's size (N=M=192 for qualities 1-5) with random weights
(seed 0): nothing is downloaded, and the coding loop, which is what is timed, does the
same work whatever the weights (CompressAI decodes position by position in raster order).
Prints and writes JSON with the seconds of each step and the threads used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    try:
        import compressai
        from compressai.zoo import mbt2018
    except ImportError as e:
        raise SystemExit(f"CompressAI is not importable here ({e}); see this script's docstring") from None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = mbt2018(quality=args.quality, pretrained=False).eval()
    net.update(force=True)
    x = torch.from_numpy(np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        start = time.perf_counter()
        out = net.compress(x)
        mid = time.perf_counter()
        net.decompress(out["strings"], out["shape"])
        end = time.perf_counter()
    bits = 8 * sum(len(s[0]) for s in out["strings"])
    result = {
        "model": f"CompressAI {compressai.__version__} mbt2018, quality {args.quality}, random weights (seed 0)",
        "image": str(args.image), "size": list(x.shape[-2:]), "threads": args.threads,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}",
        "load_average": round(os.getloadavg()[0], 1),
        "encode_seconds": round(mid - start, 3), "decode_seconds": round(end - mid, 3), "bits": bits,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
