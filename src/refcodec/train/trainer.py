"""Training loop: loss R + lambda * D (eq. 1, 3), checkpoints, validation, weights export.

Run ``refcodec train --data DIR --val DIR --out RUN`` (see ``refcodec train --help``).
For models with several entropy stages the rate is a weighted sum of the stages'
rates: 0.3:0.3:0.4 during warm-up, 0.1:0.1:0.8 afterwards (section 5.1); only the
last stage codes, so it keeps the larger weight.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..models import registry
from .data import ImageFolder


def stage_weights(stages: int, warm: bool) -> list[float]:
    """Rate weights: the last stage gets 0.4 (warm-up) or 0.8, the others share the rest."""
    if stages == 1:
        return [1.0]
    last = 0.4 if warm else 0.8
    return [(1 - last) / (stages - 1)] * (stages - 1) + [last]


def rate_distortion(out: dict, x: torch.Tensor, lmbda: float, warm: bool) -> dict:
    """bpp (weighted over stages, plus z), the coding-stage bpp, MSE and the loss."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    lik = out["likelihoods"]
    stage_bits = [-torch.log2(p).sum() for p in lik["y"]]
    z_bits = -torch.log2(lik["z"]).sum() if "z" in lik else x.new_zeros(())
    weights = stage_weights(len(stage_bits), warm)
    bpp = (sum(w * b for w, b in zip(weights, stage_bits)) + z_bits) / pixels
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return {
        "loss": bpp + lmbda * 255**2 * mse,
        "bpp": bpp,
        "coding_bpp": (stage_bits[-1] + z_bits) / pixels,
        "mse": mse,
        "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a killed process leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def validate(model, images: ImageFolder, lmbda: float) -> dict:
    model.eval()
    rows = [rate_distortion(model(x.unsqueeze(0)), x.unsqueeze(0), lmbda, warm=False) for x in images]
    model.train()
    return {k: float(torch.stack([r[k] for r in rows]).mean()) for k in ("coding_bpp", "psnr", "loss")}


def logged_time(log: Path) -> float:
    """Wall time of the last logged step (for checkpoints written before elapsed time was stored)."""
    if not log.exists():
        return 0.0
    rows = list(csv.reader(open(log)))
    return float(rows[-1][1]) if len(rows) > 1 else 0.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refcodec train", description="Train a registry model on a folder of images.")
    p.add_argument("--data", required=True, nargs="+", help="folders of training images (searched recursively)")
    p.add_argument("--val", help="folder of validation images (center crops)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, weights")
    p.add_argument("--model", default="grm", choices=sorted(registry.MODELS))
    p.add_argument("--preset", default="small", choices=sorted(registry.PRESETS))
    p.add_argument("--quality", type=int, default=registry.DEFAULT_QUALITY, choices=sorted(registry.LAMBDAS))
    p.add_argument("--lmbda", type=float, help="override the quality's lambda")
    p.add_argument("--flags", default="{}", help='model flags as JSON, e.g. \'{"reference": false}\'')
    p.add_argument("--steps", type=int, default=100_000, help="length of the schedule (learning rate, rate weights)")
    p.add_argument("--stop-at", type=int, help="stop after this step, leaving the schedule as if --steps were run")
    p.add_argument("--warmup-steps", type=int, help="steps with the 0.3:0.3:0.4 rate weights (default: steps / 5)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-warmup", type=int, default=100, help="steps of linear learning-rate warm-up")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (about 20%% faster steps on CPU after ~2 min)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    p.add_argument("--init", help="start from these weights (model id or .safetensors), e.g. to continue shipped weights")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lmbda = args.lmbda or registry.LAMBDAS[args.quality]
    warmup = args.warmup_steps if args.warmup_steps is not None else args.steps // 5
    flags = json.loads(args.flags)
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)

    model = registry.build(args.model, args.preset, **flags)
    step, elapsed, base, ckpt = 0, 0.0, 0, out / "checkpoint.pt"
    resume = args.resume and ckpt.exists()
    state = torch.load(ckpt, weights_only=False) if resume else None
    if resume:
        base = state.get("base_step", 0)
    elif args.init:  # weights only (e.g. shipped float16 weights): fresh optimizer, step count continues
        init = registry.load_model(args.init)
        model.load_state_dict(init.state_dict())
        step = base = init.config.get("steps", 0)
        elapsed = init.config.get("wall_seconds", 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up (per run), cosine decay to 10% over all steps
        optimizer,
        lambda s: min(1.0, (s + 1) / args.lr_warmup) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, (base + s) / args.steps))),
    )
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed = state["step"], state.get("elapsed", logged_time(out / "log.csv"))
        random.setstate(state["rng"]["python"]), np.random.set_state(state["rng"]["numpy"]), torch.set_rng_state(state["rng"]["torch"])
    data = ImageFolder(args.data, args.crop)
    val = ImageFolder(args.val, args.crop, train=False) if args.val else None
    if val is not None:
        val.images = val.images[: args.val_images]
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    config = {"name": args.model, "preset": args.preset, **registry.PRESETS[args.preset], "flags": flags, "quality": args.quality,
              "lambda": lmbda, "id": registry.model_id(args.model, args.preset, args.quality), "data": [str(d) for d in args.data]}  # fmt: skip
    log = open(out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    if log.tell() == 0:
        writer.writerow(["step", "time", "loss", "bpp", "psnr", "val_bpp", "val_psnr"])
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    forward = torch.compile(model) if args.compile else model
    start = time.time() - elapsed  # wall time accumulates across resumes
    model.train()
    last = min(args.steps, args.stop_at or args.steps)
    while step < last:
        for x in loader:
            metrics = rate_distortion(forward(x), x, lmbda, warm=step < warmup)
            optimizer.zero_grad(set_to_none=True)
            metrics["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            if not torch.isfinite(metrics["loss"]) or not torch.isfinite(grad_norm):
                tqdm.write(f"step {step}: non-finite loss or gradient, step skipped")
                continue
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", bpp=f"{metrics['bpp']:.3f}", psnr=f"{metrics['psnr']:.2f}")
            row = [step, round(time.time() - start, 1), *(float(metrics[k].detach()) for k in ("loss", "bpp", "psnr")), "", ""]
            if val is not None and (step % args.val_every == 0 or step == last):
                v = validate(model, val, lmbda)
                row[5:] = [v["coding_bpp"], v["psnr"]]
                tqdm.write(f"step {step}: val bpp {v['coding_bpp']:.4f} psnr {v['psnr']:.2f}")
            writer.writerow(row)
            if step % args.save_every == 0 or step == last:
                log.flush()
                rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
                save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "schedule": schedule.state_dict(), "step": step, "rng": rng, "config": config,
                                       "elapsed": time.time() - start, "base_step": base})  # fmt: skip
                registry.save(model, out / "weights.safetensors", {**config, "steps": step, "wall_seconds": round(time.time() - start)})
                model.train()
            if step >= last:
                break
    bar.close()
    log.close()


if __name__ == "__main__":
    main()
