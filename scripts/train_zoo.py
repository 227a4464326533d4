"""Train the shipped zoo: the same recipe, data and seed for every model, resumable at any point.

    python scripts/train_zoo.py --data ../shared/datasets/bsds500 --models grm joint --qualities 1 2 3 4 5

Recipe (per model): a base run at quality 3 for 9,000 steps of a 20,000-step schedule
(256-px crops, batch 4, lr 3e-4), then a fine-tune of 2,000 steps to each quality's lambda
from the base weights (lr 6e-4 on the schedule's tail). Each model's runs form one chain
that runs in its own process with one thread, so two models train side by side on two
cores. A run that exists is resumed (``--resume``); a finished one is skipped. Ship the
results with ``scripts/ship_weights.py RUN --eval KODAK``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

BASE = {"quality": 3, "steps": 20000, "stop_at": 9000, "lr": 3e-4}
FINE_TUNE = {"steps": 11000, "lr": 6e-4}


def finished(run: Path, step: int) -> bool:
    ckpt = run / "checkpoint.pt"
    return ckpt.exists() and torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= step


def command(args, run: Path, quality: int, steps: int, lr: float, extra: list[str]) -> list[str]:
    data = Path(args.data)
    return [sys.executable, "-m", "refcodec.cli", "train", "--data", str(data / "train"), str(data / "test"),
            "--val", str(data / "val"), "--out", str(run), "--model", run.name.split("-")[0], "--preset", args.preset,
            "--quality", str(quality), "--steps", str(steps), "--batch", "4", "--crop", "256", "--lr", str(lr),
            "--threads", str(args.threads), "--seed", "0", *extra]  # fmt: skip


def chain(args, model: str) -> list[tuple[Path, int, list[str]]]:
    """(run folder, last step, command) of one model's runs, in order."""
    base = Path(args.runs) / f"{model}-{args.preset}-q{BASE['quality']}"
    runs = [(base, BASE["stop_at"], command(args, base, BASE["quality"], BASE["steps"], BASE["lr"], ["--stop-at", str(BASE["stop_at"])]))]
    for q in args.qualities:
        run = Path(args.runs) / f"{model}-{args.preset}-q{q}" if q != BASE["quality"] else base.with_name(base.name + "ft")
        runs.append((run, FINE_TUNE["steps"], command(args, run, q, FINE_TUNE["steps"], FINE_TUNE["lr"], ["--init", str(base / "weights.safetensors")])))
    return runs


def run_chain(args, model: str) -> None:
    for run, last, cmd in chain(args, model):
        if finished(run, last):
            continue
        if (run / "checkpoint.pt").exists():
            cmd = cmd + ["--resume"]
        print(" ".join(cmd), flush=True)
        with open(run.with_suffix(".log"), "a") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="BSDS500-style folder with train/, test/ (training) and val/")
    p.add_argument("--runs", default="runs")
    p.add_argument("--models", nargs="+", default=["grm", "joint"])
    p.add_argument("--qualities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each chain")
    p.add_argument("--model", help=argparse.SUPPRESS)  # one chain, in a child process
    args = p.parse_args()
    if args.model:
        return run_chain(args, args.model)
    Path(args.runs).mkdir(exist_ok=True)
    children = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--model", m]) for m in args.models]
    sys.exit(max(c.wait() for c in children))


if __name__ == "__main__":
    main()
