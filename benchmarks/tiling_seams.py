"""Are tiles visible? The transforms on a whole image against the same transforms in small tiles.

Takes an image and a shipped model and runs, each in one call on the whole image and in tiles of
``--tile`` latents (``--tile * 16`` pixels for g_a), the analysis g_a (how many rounded latents
change) and the synthesis g_s of the coded latents (pixel differences after 8-bit rounding, PSNR of
tiled against whole, PSNR of each against the original). Small tiles give many seams to look at;
refcodec codes with 1024-pixel tiles. Prints and writes JSON.

    python benchmarks/tiling_seams.py ../shared/datasets/kodak/kodim23.png --tile 8 -o results/bench/tiling-seams.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refcodec import codec
from refcodec.models import registry
from refcodec.models.base import STRIDE
from refcodec.tiling import halo_for, run_tiled


def to_image(x: torch.Tensor, height: int, width: int) -> Image.Image:
    return codec.tensor_to_image(x[:, :, :height, :width])


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--model", default="grm/small/vr")
    p.add_argument("--tile", type=int, default=8, help="tile side in latents")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = registry.load_model(args.model)
    original = Image.open(args.image).convert("RGB")
    w, h = original.size
    x = codec.padded_tensor(original)

    y_whole = torch.round(model.g_a(x))
    y_tiled = torch.round(run_tiled(model.g_a, x, args.tile * STRIDE, halo_for(model.g_a, STRIDE), 1 / STRIDE, align=STRIDE))
    y_hat = model.encode(x)[1]
    whole = to_image(model.g_s(y_hat), h, w)
    tiled = to_image(run_tiled(model.g_s, y_hat, args.tile, halo_for(model.g_s, 1), STRIDE), h, w)
    diff = np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int))
    tiles = -(-y_hat.shape[2] // args.tile) * -(-y_hat.shape[3] // args.tile)
    result = {
        "image": str(args.image), "model": args.model, "threads": args.threads,
        "tile_latents": args.tile, "tiles": tiles,
        "analysis_latents_changed": int((y_tiled != y_whole).sum()), "latents": y_whole.numel(),
        "synthesis_max_abs_difference_8bit": int(diff.max()),
        "synthesis_values_changed_8bit": int((diff > 0).sum()), "values": diff.size,
        "psnr_tiled_vs_whole_db": round(codec.psnr(tiled, whole), 2),
        "psnr_whole_db": round(codec.psnr(whole, original), 4),
        "psnr_tiled_db": round(codec.psnr(tiled, original), 4),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
