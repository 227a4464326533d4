"""Learning curve: rate against WebP at equal PSNR, over training steps and CPU hours.

    python scripts/learning_curve.py runs/grm-small-q3 runs/joint-small-q3 \
        --val ../shared/datasets/bsds500/val -o results/learning-curve

Each run's log.csv holds periodic validation points (coding-stage bpp and PSNR on the
center crops of the first ``--val-images`` validation images, as ``refcodec train``
measures them). WebP (Pillow) is swept over the same crops, and every validation point
is turned into the rate difference to WebP at the same PSNR (log-rate interpolated
along WebP's curve): -20% means 20% fewer bits than WebP. One RD point per step count
is all a single-lambda run gives, so this is a matched-PSNR rate difference rather than
a BD-rate over a range; it is what more steps would buy at that lambda.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from refcodec.codec import tensor_to_image
from refcodec.eval.bdrate import curve, rd_points
from refcodec.eval.compare import sweep, webp
from refcodec.train.data import ImageFolder

WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


def validation_points(run: Path) -> dict:
    """Steps, wall hours, bpp and PSNR of a run's validation rows, and its config."""
    rows = [r for r in csv.DictReader(open(run / "log.csv")) if r.get("val_bpp")]
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    return {
        "run": str(run),
        "id": state["config"]["id"],
        "lambda": state["config"]["lambda"],
        "step": [int(r["step"]) for r in rows],
        "hours": [float(r["time"]) / 3600 for r in rows],
        "bpp": [float(r["val_bpp"]) for r in rows],
        "psnr": [float(r["val_psnr"]) for r in rows],
    }


def rate_vs_anchor(bpp: list[float], psnr: list[float], anchor) -> list[float]:
    """Rate difference in % to the anchor curve at the same PSNR (NaN outside its PSNR range)."""
    rates, psnrs = rd_points(anchor)
    at = np.interp(psnr, psnrs, np.log(rates), left=np.nan, right=np.nan)
    return [float(v) for v in 100 * (np.asarray(bpp) / np.exp(at) - 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (log.csv, checkpoint.pt)")
    p.add_argument("--val", required=True, help="the validation folder the runs used")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    crops = ImageFolder(args.val, args.crop, limit=args.val_images)
    images = {f.name: tensor_to_image(crops[i][None]) for i, f in enumerate(crops.files)}
    anchor = sweep(webp(1), images, WEBP_QUALITIES, f"{len(images)} center crops of {args.crop} px from {args.val}")
    anchor_curve = curve(anchor)
    runs = []
    for run in args.runs:
        points = validation_points(run)
        points["rate_vs_webp"] = rate_vs_anchor(points["bpp"], points["psnr"], anchor_curve)
        runs.append(points)
        if points["step"]:
            print(f"{points['id']} ({run}): {len(points['step'])} validation points, "
                  f"last at step {points['step'][-1]}: {points['rate_vs_webp'][-1]:+.1f}% vs WebP")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning-curve.json").write_text(json.dumps({"anchor": anchor, "runs": runs}, indent=1))
    fig = Figure(figsize=(10, 4))
    for ax, x, label in zip(fig.subplots(1, 2), ("step", "hours"), ("training steps", "wall hours (2 CPU cores, shared between runs)")):
        for r in runs:
            ax.plot(r[x], r["rate_vs_webp"], marker=".", label=f"{r['id']} (lambda {r['lambda']})")
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(-10, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("rate vs WebP at equal PSNR (%)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"Validation: {len(images)} center crops ({args.crop} px) of {args.val}")
    fig.tight_layout()
    fig.savefig(args.out / "learning-curve.png", dpi=110)


if __name__ == "__main__":
    main()
