"""Training steps per second of grm against joint (the training-throughput issue), in alternating rounds.

A step is what ``refcodec train`` does per batch: forward, ``rate_distortion`` loss, backward and
an Adam step, on random crops. Each round times ``--steps`` steps of every model, one model after
the other, so that a slow spell of a shared machine hits all of them; the grm/joint ratio is taken
per round and its median reported:

    python benchmarks/train_step.py --threads 2 --batch 8 --crop 256 --steps 3 --rounds 3 \\
        -o results/bench/train-step.json

``--levels 9`` adds the variable-rate grm (gain units, Cui et al. 2021), each image at a random quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from refcodec.layers import gain
from refcodec.models import registry
from refcodec.train.trainer import rate_distortion, training_layout


def step_fn(model: torch.nn.Module, x: torch.Tensor, levels: int):
    """One training step of ``model`` on ``x`` (lambda of quality 3, or a random quality per image)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    level_lambdas = [registry.LAMBDAS[q] for q in sorted(registry.LAMBDAS)][:levels]

    def step() -> None:
        if levels:
            q = torch.rand(len(x)) * (levels - 1)
            out, lmbda = model(x, q.to(x.device)), gain.interpolate_log(level_lambdas, q).to(x.device)
        else:
            out, lmbda = model(x), registry.LAMBDAS[3]
        loss = rate_distortion(out, x, lmbda, warm=False)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (allocator, Adam state)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", type=int, default=0, help="also time a variable-rate grm with this many levels (9)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/bench/train-step.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    x = training_layout(torch.rand(args.batch, 3, args.crop, args.crop, device=device))
    models = {"joint": (registry.build("joint", args.preset), 0), "grm": (registry.build("grm", args.preset), 0)}
    if args.levels:
        models["grm-vr"] = (registry.build("grm", args.preset, levels=args.levels), args.levels)
    steps = {}
    for name, (model, levels) in models.items():
        steps[name] = step_fn(model.to(device).train(), x, levels)
        for _ in range(args.warmup):
            steps[name]()

    rounds = []
    for i in range(args.rounds):
        rate = {}
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            rate[name] = round(args.steps / (time.perf_counter() - start), 3)
        rounds.append(rate)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.3f} steps/s" for k, v in rate.items()), flush=True)

    median = {name: round(statistics.median(r[name] for r in rounds), 3) for name in steps}
    ratio = {name: round(statistics.median(r["joint"] / r[name] for r in rounds), 2) for name in steps if name != "joint"}
    print(f"\n{'model':<8} {'steps/s':>8} {'s/step':>8} {'x joint':>8}")
    for name in steps:
        print(f"{name:<8} {median[name]:>8.3f} {1 / median[name]:>8.2f} {ratio.get(name, 1.0):>8.2f}")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset, "batch": args.batch, "crop": args.crop, "steps": args.steps, "threads": args.threads,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {os.getloadavg()[0]:.1f} at the end",
        "torch": torch.__version__, "rounds": rounds, "median_steps_per_second": median,
        "step_time_vs_joint": ratio,  # median over rounds of (joint steps/s) / (model steps/s)
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
