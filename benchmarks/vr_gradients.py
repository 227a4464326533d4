"""How hard each quality pulls a variable-rate model's shared weights during training.

For one batch of random crops, every image at the same quality q, it computes the training loss
(``trainer.rate_distortion``) and the norm of its gradient with respect to the weights that all
qualities share (everything but the gain units), with the plain loss R + lambda D and with the
balanced one (``trainer.balance_weights``, ``refcodec train --balance``):

    python benchmarks/vr_gradients.py training/grm-small-vr.safetensors ../shared/datasets/photos/train \\
        -o results/bench/vr-gradients.json

The same quantization noise is drawn at every quality, so the qualities differ only in lambda and gains.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

from refcodec.layers import gain
from refcodec.models import registry
from refcodec.train import trainer
from refcodec.train.data import ImageFolder, batches


def gradient_norms(model: torch.nn.Module, x: torch.Tensor, qualities: list[float], seed: int = 1) -> list[dict]:
    """Loss, bpp, PSNR and shared-weight gradient norms (plain and balanced) of batch ``x`` at each quality."""
    levels = [registry.LAMBDAS[q] for q in sorted(registry.LAMBDAS)]
    reference = levels[len(levels) // 2]
    shared = [p for n, p in model.named_parameters() if "_gain." not in n]
    rows = []
    for q in qualities:
        quality = torch.full((len(x),), float(q))
        lmbda = gain.interpolate_log(levels, quality)
        row = {"quality": q, "lambda": float(lmbda[0])}
        for name, balance in (("plain", None), ("balanced", trainer.balance_weights(lmbda, reference))):
            torch.manual_seed(seed)
            metrics = trainer.rate_distortion(model(x, quality), x, lmbda, warm=False, balance=balance)
            model.zero_grad(set_to_none=True)
            metrics["loss"].backward()
            norm = math.sqrt(sum(float(p.grad.square().sum()) for p in shared if p.grad is not None))
            row |= {f"loss_{name}": float(metrics["loss"].detach()), f"gradient_{name}": norm}
        row |= {"bpp": float(metrics["bpp"].detach()), "psnr": float(metrics["psnr"].detach())}
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", help="a variable-rate model (id or .safetensors)")
    p.add_argument("data", nargs="+", help="folders of training images")
    p.add_argument("--qualities", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--seed", type=int, default=3, help="which crops")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, help="JSON file of the results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = registry.load_model(args.weights).train()
    if not getattr(model, "levels", 0):
        raise SystemExit(f"vr_gradients: {args.weights} is not a variable-rate model")
    x = trainer.training_layout(next(batches(ImageFolder(args.data, args.crop, seed=args.seed), args.batch, 0, 1)))
    rows = gradient_norms(model, x, args.qualities)
    print("quality  lambda   bpp    PSNR   |grad| plain  |grad| balanced")
    for r in rows:
        print(f"{r['quality']:7.2f} {r['lambda']:7.4f} {r['bpp']:6.3f} {r['psnr']:6.2f} {r['gradient_plain']:13.2f} "
              f"{r['gradient_balanced']:15.2f}")  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {"weights": args.weights, "steps": model.config.get("steps"), "data": args.data, "batch": args.batch,
                  "crop": args.crop, "seed": args.seed, "machine": platform.processor() or platform.machine(), "rows": rows}  # fmt: skip
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
