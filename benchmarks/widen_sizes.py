"""Which width for the high-quality model: the cost of a training step and the transforms' ceiling per (N, M).

For each candidate size, the shipped variable-rate model is widened to it (``models.widen``,
function-preserving), and the script measures:

- parameters and float16 weights size (what would ship);
- the time of one variable-rate training step (batch, crop, eager, Adam), the step of ``refcodec train``;
- the transforms' ceiling: g_a and g_s alone are trained for ``--ceiling-steps`` Adam steps on the
  unquantized round trip g_s(g_a(x)) (MSE, random ``--ceiling-crop`` crops of the training folder, after a
  linear learning-rate warm-up), and the PSNR of
  ``--val-images`` center crops of the validation folder is taken before and after. The same steps are
  given to the shipped size, so that its gain from dropping the rate term is not counted as the width's.

Sizes run one after the other on the same machine and threads:

    python benchmarks/widen_sizes.py ../shared/datasets/photos/train ../shared/datasets/photos/val \\
        --sizes 64x96 64x192 128x192 128x320 --ceiling-steps 400 --ceiling-lr 2e-4 --threads 2 -o results/bench/widen-sizes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from refcodec.layers import gain
from refcodec.models import registry
from refcodec.models.grm import GRM
from refcodec.models.widen import widen
from refcodec.train.data import ImageFolder, batches
from refcodec.train.trainer import rate_distortion, training_layout

WARMUP = 100  # steps of the ceiling's linear learning-rate warm-up: a fresh Adam moves every weight by ~lr at once


def widened(source: GRM, n: int, m: int) -> GRM:
    """``source`` grown to N=n, M=m (seed 0 for the new units)."""
    torch.manual_seed(0)
    model = GRM(N=n, M=m, levels=source.levels)
    widen(source, model)
    return model


def step_seconds(model: GRM, batch: int, crop: int, steps: int) -> float:
    """Seconds per variable-rate training step (after one untimed step), each image at a random quality."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lambdas = [registry.LAMBDAS[q] for q in sorted(registry.LAMBDAS)]
    x = training_layout(torch.rand(batch, 3, crop, crop))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        q = torch.rand(batch) * (model.levels - 1)
        loss = rate_distortion(model(x, q), x, gain.interpolate_log(lambdas, q), warm=False)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def round_trip_psnr(g_a, g_s, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of g_s(g_a(x)) over the images, without quantization."""
    with torch.no_grad():
        mse = (g_s(g_a(images)).clamp(0, 1) - images).square().flatten(1).mean(1)
    return float((-10 * torch.log10(mse)).mean())


def ceiling(model: GRM, train: ImageFolder, val: torch.Tensor, steps: int, batch: int, lr: float) -> dict:
    """The round-trip PSNR on ``val`` before and after ``steps`` MSE steps of g_a and g_s alone."""
    g_a, g_s = copy.deepcopy(model.g_a).train(), copy.deepcopy(model.g_s).train()
    before = round_trip_psnr(g_a, g_s, val)
    optimizer = torch.optim.Adam([*g_a.parameters(), *g_s.parameters()], lr=lr)
    warm = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP))  # a fresh Adam's first steps
    start = time.perf_counter()
    for _, x in zip(range(steps), batches(train, batch)):
        loss = (g_s(g_a(x)) - x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warm.step()
    seconds = time.perf_counter() - start
    return {"before": before, "after": round_trip_psnr(g_a, g_s, val), "steps": steps, "seconds_per_step": seconds / max(steps, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("train", help="training images (random crops for the ceiling's steps)")
    p.add_argument("val", help="validation images (center crops)")
    p.add_argument("--weights", default="grm/small/vr", help="the variable-rate model to widen")
    p.add_argument("--sizes", nargs="+", default=["64x96", "64x192", "128x192", "128x320"], help="NxM candidates")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--timed-steps", type=int, default=2, help="timed training steps per size (after one untimed)")
    p.add_argument("--ceiling-steps", type=int, default=400)
    p.add_argument("--ceiling-crop", type=int, default=128, help="training crops of the ceiling's steps (the transforms are convolutional)")
    p.add_argument("--ceiling-lr", type=float, default=1e-4)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--output", type=Path, default=Path("results/bench/widen-sizes.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = registry.load_model(args.weights)
    train = ImageFolder(args.train, args.ceiling_crop, seed=0) if args.ceiling_steps else None
    val_folder = ImageFolder(args.val, args.crop, limit=args.val_images)
    val = torch.stack([val_folder[i] for i in range(len(val_folder))])
    rows = {}
    for size in args.sizes:  # every step time first, one short stretch of the machine's time
        n, m = map(int, size.split("x"))
        params = sum(t.numel() for t in widened(source, n, m).parameters())
        rows[size] = {"N": n, "M": m, "parameters": params, "float16_mb": round(params * 2 / 1e6, 1),
                      "seconds_per_step": step_seconds(widened(source, n, m), args.batch, args.crop, args.timed_steps)}  # fmt: skip
    print(f"{'N x M':>8} {'params':>8} {'fp16 MB':>8} {'s/step':>7} {'vs ' + args.sizes[0]:>9} {'ceiling':>8} {'trained':>8}")
    for size, row in rows.items():
        params = row["parameters"]
        if args.ceiling_steps:
            row["ceiling"] = ceiling(widened(source, row["N"], row["M"]), train, val, args.ceiling_steps, args.batch, args.ceiling_lr)
        ratio = row["seconds_per_step"] / rows[args.sizes[0]]["seconds_per_step"]
        c = row.get("ceiling", {"before": float("nan"), "after": float("nan")})
        print(f"{size:>8} {params / 1e6:7.1f}M {row['float16_mb']:8.1f} {row['seconds_per_step']:7.2f} {ratio:8.2f}x "
              f"{c['before']:8.2f} {c['after']:8.2f}", flush=True)  # fmt: skip
    result = {"weights": args.weights, "steps": source.config.get("steps"), "train": args.train, "val": args.val,
              "val_images": len(val), "batch": args.batch, "crop": args.crop, "threads": args.threads,
              "ceiling_lr": args.ceiling_lr, "ceiling_crop": args.ceiling_crop, "torch": torch.__version__,
              "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})",
              "sizes": rows}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
