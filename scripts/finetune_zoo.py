"""Fine-tune every (model, quality) of the zoo side by side on one device, within a time budget.

    python scripts/finetune_zoo.py --data ../shared/datasets/bsds500/{train,test} --base grm=W1 joint=W2 \\
        --qualities 1 2 3 4 --budget 480 --device cuda --out runs/finetune

Every run starts from its model's base weights (``--init``, so the step count and the
schedule continue from the base; a base with ``{q}`` in it names one per quality, e.g.
``grm=grm/small/q{q}`` continues every shipped model from itself) and trains the same number of steps on the same data
order with the same seed, so the models compare as the paper compares them. The step
count is sized to the budget: first all runs train ``--calibrate`` steps at once (they
share the device, so this measures the contended speed and the start-up time), then the
real runs get as many steps as the slowest run can make in what is left, rounded down to
hundreds. A ``--time-limit`` on each run keeps the budget if the device slows down; such
a run stops early and records its real step count. Each run's weights are written in
float16 to OUT/export/<model>-<preset>-q<quality>/ with its log.csv, ready for
``scripts/ship_weights.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from refcodec.models import registry

MARGIN = 0.1  # share of the remaining budget kept for validation, export and slow steps


def command(args, base: Path, model: str, quality: int, out: Path, steps: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "refcodec.cli", "train", "--data", *map(str, args.data),
            "--out", str(out), "--model", model, "--preset", args.preset, "--quality", str(quality),
            "--steps", str(steps), "--batch", str(args.batch), "--crop", str(args.crop), "--lr", str(args.lr),
            "--init", str(base), "--seed", "0", "--device", args.device, "--threads", str(args.threads),
            "--val-every", str(10**9), "--save-every", "500", *extra]  # fmt: skip


def run_all(commands: dict[str, list[str]], logs: Path) -> float:
    """Run the commands at once; wall seconds until all ended. Fails if any failed."""
    logs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    procs = {name: subprocess.Popen(cmd, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT) for name, cmd in commands.items()}
    failed = [name for name, p in procs.items() if p.wait() != 0]
    if failed:
        for name in failed:
            print((logs / f"{name}.log").read_text()[-2000:], file=sys.stderr)
        raise SystemExit(f"runs failed: {', '.join(failed)}")
    return time.time() - start


def seconds_per_step(log: Path) -> float:
    """From a run's log.csv: seconds per step over the last two thirds (after cuDNN's first-step tuning)."""
    with open(log, newline="") as f:
        rows = [(int(r["step"]), float(r["time"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = rows[len(rows) // 3], rows[-1]
    return (t1 - t0) / (s1 - s0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, nargs="+", type=Path, help="folders of training images")
    p.add_argument("--base", required=True, nargs="+", help="MODEL=WEIGHTS (a .safetensors or a model id; {q}: the run's quality), "
                   "the base each model's runs start from")
    p.add_argument("--qualities", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--budget", type=float, required=True, help="wall seconds for calibration and training together")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each run")
    p.add_argument("--calibrate", type=int, default=60, help="steps of the timing runs")
    args = p.parse_args()
    start = time.time()
    models = dict(b.split("=", 1) for b in args.base)
    runs = {f"{m}-{args.preset}-q{q}": (m, q) for m in models for q in args.qualities}
    base = {name: models[m].format(q=q) for name, (m, q) in runs.items()}
    base_steps = {name: registry.read_config(registry.weights_path(w)).get("steps", 0) for name, w in base.items()}

    calib = {name: command(args, base[name], m, q, args.out / "calibrate" / name, base_steps[name] + 10**6,
                           ["--stop-at", str(base_steps[name] + args.calibrate)]) for name, (m, q) in runs.items()}  # fmt: skip
    calib_wall = run_all(calib, args.out / "calibrate")
    per_step = max(seconds_per_step(args.out / "calibrate" / name / "log.csv") for name in runs)
    startup = calib_wall - args.calibrate * per_step
    left = args.budget - (time.time() - start)
    steps = int((left * (1 - MARGIN) - startup) / per_step) // 100 * 100
    if steps <= 0:
        raise SystemExit(f"budget too small: {left:.0f} s left, {startup:.0f} s start-up, {per_step:.3f} s/step")
    print(f"{len(runs)} runs side by side: {per_step:.3f} s/step, {startup:.0f} s start-up; {steps} steps each", flush=True)

    limit = left * (1 - MARGIN / 2) - startup
    train = {name: command(args, base[name], m, q, args.out / name, base_steps[name] + steps, ["--time-limit", str(round(limit))])
             for name, (m, q) in runs.items()}  # fmt: skip
    run_all(train, args.out / "logs")

    summary = {"per_step_calibrated": per_step, "startup": startup, "steps_planned": steps, "runs": {}}
    for name in runs:
        weights = args.out / name / "weights.safetensors"
        model, config = registry.load_model(str(weights)), registry.read_config(weights)
        export = args.out / "export" / name
        export.mkdir(parents=True, exist_ok=True)
        registry.save(model, export / "weights.safetensors", config, dtype=torch.float16)
        shutil.copy(args.out / name / "log.csv", export / "log.csv")
        summary["runs"][name] = {"steps": config["steps"], "wall_seconds": config["wall_seconds"]}
    summary["wall_seconds"] = time.time() - start
    (args.out / "export" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
