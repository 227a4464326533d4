"""Does a model's MS-SSIM depend on where the metric's pyramid starts?

MS-SSIM (Wang et al. 2003) averages 2x2 blocks between its five scales. A codec whose synthesis is
strided makes each 2x2 block of pixels from one position, and an MS-SSIM loss computed at one fixed
alignment lets it hide error that sums to zero in the aligned blocks: the score then drops when the
image is cut one pixel off that grid, as an odd-sized image is (pytorch_msssim pads its odd scales
with one pixel of zeros on each side, which shifts the grid). For real files at each quality, this
gives the MS-SSIM (dB, -10 log10(1 - MS-SSIM)) of each image cut to a multiple of 16 at the four
phases (dy, dx) in {0, 1}^2; a model free of the effect scores alike at all four:

    python benchmarks/ms_ssim_phase.py ../shared/datasets/bsds500/val --models grm/small/vr \\
        runs/carried/grm-small-vr-ms-ssim.safetensors -q 1 4.5 8 -o results/gate/ms-ssim-phase.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from refcodec import codec
from refcodec.eval.bdrate import msssim_db
from refcodec.images import find_images, read_rgb
from refcodec.models import registry
from refcodec.train.trainer import windowed_ms_ssim

PHASES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def phase_scores(decoded: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """MS-SSIM (dB) of ``decoded`` against ``x`` (1x3xHxW in [0, 1]) at each phase, over the same size."""
    size = ((x.shape[2] - 1) // 16 * 16, (x.shape[3] - 1) // 16 * 16)  # a multiple of 16: no odd scale to pad
    return {f"{dy},{dx}": float(msssim_db(float(windowed_ms_ssim(decoded, x, (dy, dx), size)))) for dy, dx in PHASES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="images, at least 177 px on each side")
    p.add_argument("--models", nargs="+", default=["grm/small/vr"], help="variable-rate model ids or .safetensors files")
    p.add_argument("-q", "--qualities", type=float, nargs="+", default=[1, 4.5, 8])
    p.add_argument("--limit", type=int, default=8, help="first images of the folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, help="JSON file of the results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = [path for path in find_images(args.folder) if min(read_rgb(path).size) > 176][: args.limit]
    if not paths:
        raise SystemExit(f"ms_ssim_phase: no image of {args.folder} is over 176 px on each side")
    result = {"folder": args.folder, "images": [Path(path).name for path in paths], "phases": [f"{dy},{dx}" for dy, dx in PHASES],
              "machine": platform.machine(), "models": {}}  # fmt: skip
    print(f"MS-SSIM (dB) of real files, mean over {len(paths)} images of {args.folder}, at each phase (dy,dx)")
    print(f"{'model':48s} {'q':>5s} {'bpp':>7s} " + " ".join(f"{ph:>7s}" for ph in result["phases"]))
    for name in args.models:
        model = registry.load_model(name)
        rows = []
        for q in args.qualities:
            per_image = []
            for path in paths:
                image = read_rgb(path)
                data = codec.compress(image, model, quality=q)
                decoded = codec.decompress(data, model).convert("RGB")
                scores = phase_scores(codec.image_to_tensor(decoded), codec.image_to_tensor(image))
                per_image.append({"image": Path(path).name, "bpp": 8 * len(data) / (image.width * image.height), **scores})
            mean = {k: float(np.mean([r[k] for r in per_image])) for k in ["bpp", *result["phases"]]}
            rows.append({"quality": q, **mean, "per_image": per_image})
            print(f"{name[-48:]:48s} {q:5g} {mean['bpp']:7.4f} " + " ".join(f"{mean[ph]:7.2f}" for ph in result["phases"]))
        result["models"][name] = {"id": model.id, "steps": model.config.get("steps"), "metric": model.config.get("metric", "mse"), "qualities": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
