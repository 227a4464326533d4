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

    python scripts/learning_curve.py --kodak results/kodak -o results/learning-curve

With ``--kodak``, the points are the shipped models' Kodak curves kept as
``results/learning-curve/kodak-grm-small-<steps>.json`` (``scripts/release.py`` adds one per release):
the BD-rate (``eval.bdrate``) of each against WebP and HEVC, over its whole range and over qualities
1-4 (the per-quality models' curves are qualities 1-4), against steps (``kodak.json``, ``kodak.png``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from refcodec.codec import tensor_to_image
from refcodec.eval.bdrate import curve, delta, in_metric, load_curve, rd_points
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


KODAK_POINT = re.compile(r"kodak-grm-(small|medium)-(\d+)\.json$")  # a shipped MSE model's Kodak curve at a number of steps
LOW_QUALITIES = (1, 4)  # where the variable-rate model is below its transforms' ceiling, and the per-quality models were


def within(report: dict, span: tuple[float, float] = LOW_QUALITIES) -> dict | None:
    """A results file cut to its points at qualities within ``span`` (its ``qualities``: numbers, or ids that end
    in /q<number>), or None where it does not say its qualities or keeps fewer than two points."""
    qualities = [float(str(q).rpartition("/q")[2]) for q in report.get("qualities") or []]
    keep = [span[0] <= q <= span[1] for q in qualities]
    if len(keep) != len(report["results"]["bpp"]) or sum(keep) < 2:
        return None
    return {**report, "results": {k: [v for kept, v in zip(keep, values) if kept] for k, values in report["results"].items()}}


def bd_rates(anchor, report: dict, source: str, metric: str = "psnr") -> tuple[float, float | None]:
    """BD-rate (%) of a results file against the ``anchor`` curve in ``metric`` (``bdrate.in_metric``), over its
    whole range and over ``LOW_QUALITIES`` (``within``; None where that cut is not known)."""
    low = within(report)
    full, cut = (in_metric(curve(r, source), metric) if r else None for r in (report, low))
    return delta(anchor, full)["bd_rate"], delta(anchor, cut)["bd_rate"] if cut else None


def kodak_points(points: Path, anchors: Path) -> list[dict]:
    """BD-rate of every ``points/kodak-grm-<preset>-<steps>.json`` (small, or the wide medium grown from it, whose
    steps go on from small's) against ``anchors``' WebP and HEVC curves, over the curve's whole range and over
    ``LOW_QUALITIES`` (``within``), by steps."""
    refs = {name: load_curve(anchors / f"{name}.json") for name in ("webp", "hevc")}
    rows = []
    for path in sorted(points.glob("kodak-grm-*.json")):
        if not (m := KODAK_POINT.search(path.name)):
            continue
        report = json.loads(path.read_text())
        row = {"preset": m.group(1), "steps": int(m.group(2)), "file": path.name, "qualities": report.get("qualities"),
               "variable_rate": all(isinstance(q, (int, float)) for q in report.get("qualities") or ["?"])}  # fmt: skip
        for name, ref in refs.items():
            row[f"vs_{name}"], low = bd_rates(ref, report, str(path))
            if low is not None:
                row[f"vs_{name}_q1_4"] = low
        rows.append(row)
    return sorted(rows, key=lambda r: r["steps"])


def kodak_plot(rows: list[dict], out: Path) -> None:
    """``kodak.json`` and ``kodak.png``: the Kodak BD-rates of ``kodak_points`` against training steps."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "kodak.json").write_text(json.dumps({"method": "BD-rate, PSNR-RGB, akima (refcodec.eval.bdrate)", "points": rows}, indent=1))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    steps = [r["steps"] for r in rows]
    for preset, marker in (("small", "o"), ("medium", "s")):
        mine = [r for r in rows if r["preset"] == preset]
        for name, color in (("webp", "tab:blue"), ("hevc", "tab:red")) if mine else ():
            x, anchor = [r["steps"] for r in mine], name.upper() if name == "hevc" else "WebP"
            ax.plot(x, [r[f"vs_{name}"] for r in mine], marker=marker, color=color, label=f"grm/{preset}/vr vs {anchor}, whole range")
            ax.plot(x, [r.get(f"vs_{name}_q1_4", np.nan) for r in mine], marker=".", ls="--", color=color, label="qualities 1-4")
    ax.axhline(0, color="gray", lw=0.8)
    first = next((i for i, r in enumerate(rows) if r["variable_rate"]), 0)
    if first:  # the per-quality models before it, one variable-rate model from it on
        ax.axvline((steps[first - 1] + steps[first]) / 2, color="gray", lw=0.8, ls=":")
        ax.text((steps[first - 1] + steps[first]) / 2, ax.get_ylim()[1], " one variable-rate model ->", va="top", fontsize=8, color="gray")
    ax.set_xlabel("training steps (the wide grm/medium/vr goes on from the grm/small/vr it was grown from)")
    ax.set_ylabel("Kodak BD-rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("What compute buys: the shipped models on Kodak (24 images, real files)")
    fig.tight_layout()
    fig.savefig(out / "kodak.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="training run folders (log.csv, checkpoint.pt)")
    p.add_argument("--val", help="the validation folder the runs used")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--kodak", type=Path, metavar="FOLDER", help="instead: the kept Kodak curves of -o against FOLDER's webp.json and hevc.json")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()
    if args.kodak:
        rows = kodak_points(args.out, args.kodak)
        kodak_plot(rows, args.out)
        for r in rows:
            print(f"{r['steps']:>7} steps: {r['vs_webp']:+.1f}% vs WebP, {r['vs_hevc']:+.1f}% vs HEVC")
        return
    if not args.runs or not args.val:
        p.error("give training run folders and --val (or --kodak)")

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
