"""Whether a widened model uses its grown latent channels (issue 36, ``models.widen``).

A model widened from M0 latent channels codes as the narrow one until its new channels carry values that
rounding keeps and g_s reads. For center crops of a folder of images, at each quality, this gives for the
channels from M0 on: their mean |y| after the quality's gain, the share that rounds to nonzero, their share
of the coding stage's rate of y (the model's estimate on rounded latents, ``GRM.forward`` in eval mode), that
rate (theirs, and all channels'), and what they are worth to the decoder: the PSNR of g_s(y_hat) against
g_s with those channels set to 0. A gain of 0 dB there means the channels are dead, whatever they cost:

    python benchmarks/grown_channels.py training/grm-medium-vr.safetensors ../shared/datasets/photos/val \\
        --grown-from 96 -o results/bench/grown-channels.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from refcodec.models import registry
from refcodec.train.data import ImageFolder
from vr_ceiling import psnr  # a benchmark beside this one


@torch.no_grad()
def measure(model, x: torch.Tensor, m0: int, quality: float) -> dict:
    """The grown channels (from ``m0``) of a batch of crops ``x`` at ``quality``."""
    q = torch.full((len(x),), quality)
    gain, inverse = model.y_gain(q)
    y = model.g_a(x) * gain
    y_hat = torch.round(y)
    without = y_hat.clone()
    without[:, m0:] = 0
    bits = -model(x, q)["likelihoods"]["y"][-1].log2()  # the coding stage, (N, M, H, W)
    return {
        "quality": quality,
        "mean_abs_y": float(y[:, m0:].abs().mean()),
        "nonzero": float((y_hat[:, m0:] != 0).float().mean()),
        "rate_share": float(bits[:, m0:].sum() / bits.sum()),
        "bpp": float(bits.sum() / (len(x) * x.shape[2] * x.shape[3])),
        "bpp_grown": float(bits[:, m0:].sum() / (len(x) * x.shape[2] * x.shape[3])),
        "psnr": psnr(model.g_s(y_hat * inverse), x),
        "psnr_without": psnr(model.g_s(without * inverse), x),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="a widened model's weights (or a model id)")
    p.add_argument("folder", help="images (validation images; never Kodak for decisions)")
    p.add_argument("--grown-from", type=int, help="M of the narrow model (default: the weights' record, else 96)")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--qualities", type=float, nargs="+", default=[1, 4, 7])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", help="JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = registry.load_model(args.weights)
    m0 = args.grown_from or model.config.get("grow", {}).get("M", 96)
    if not 0 < m0 < model.M:
        raise SystemExit(f"grown_channels: the model has M={model.M}; --grown-from must be below it")
    folder = ImageFolder(args.folder, args.crop, limit=args.images)
    x = torch.stack([folder[i] for i in range(len(folder))])
    rows = [measure(model, x, m0, q) for q in args.qualities]
    print(f"{model.id}, {model.config.get('steps')} steps: channels {m0}-{model.M - 1} of {len(x)} crops of {args.crop} px")
    print("quality  |y|    nonzero  rate share  bpp (all)      PSNR    without  gain")
    for r in rows:
        print(f"{r['quality']:7g}  {r['mean_abs_y']:.3f}  {r['nonzero']:6.1%}   {r['rate_share']:6.1%}   {r['bpp_grown']:.3f} ({r['bpp']:.3f})  "
              f"{r['psnr']:.3f}  {r['psnr_without']:.3f}  {r['psnr'] - r['psnr_without']:+.3f} dB")  # fmt: skip
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        record = {"weights": args.weights, "id": model.id, "steps": model.config.get("steps"), "grow": model.config.get("grow"),
                  "grown_from": m0, "folder": args.folder, "crops": len(x), "crop": args.crop, "qualities": rows}  # fmt: skip
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
