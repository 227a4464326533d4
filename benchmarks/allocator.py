"""Training step time and page faults with glibc's default malloc settings and with ``refcodec.allocator``'s.

Each round runs the same steps in two fresh processes, one per setting (``GLIBC_TUNABLES`` unset, then
set to ``allocator.TUNABLES``), so that a slow spell of a shared machine hits both; a step is what
``refcodec train`` does per batch for a variable-rate ``grm`` (forward, loss, backward, Adam):

    python benchmarks/allocator.py --threads 1 --rounds 3 -o results/bench/allocator.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    """Time ``--steps`` steps after ``--warmup``; print the step seconds and minor page faults per step as JSON."""
    import torch

    from refcodec.layers import gain
    from refcodec.models import registry
    from refcodec.train import trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = registry.build("grm", args.preset, levels=9).train()
    levels = [registry.LAMBDAS[q] for q in sorted(registry.LAMBDAS)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = trainer.training_layout(torch.rand(args.batch, 3, args.crop, args.crop))

    def step() -> None:
        q = torch.rand(len(x)) * (len(levels) - 1)
        lmbda = gain.interpolate_log(levels, q)
        metrics = trainer.rate_distortion(model(x, q), x, lmbda, warm=False, balance=trainer.balance_weights(lmbda, levels[4]))
        optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    faults, seconds = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps({"seconds": seconds, "faults_per_step": faults, "peak_gib": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tunables", help="GLIBC_TUNABLES of the tuned processes (default: allocator.TUNABLES)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-o", "--output", type=Path, help="JSON file of the results")
    args = p.parse_args()
    if args.child:
        return child(args)
    from refcodec import allocator

    args.tunables = args.tunables or allocator.TUNABLES
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if allocator.environment(plain) is None:
        raise SystemExit("allocator.py: glibc tunables apply on Linux with glibc only")
    tuned = {**plain, "GLIBC_TUNABLES": args.tunables}
    command = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--preset", args.preset, "--batch",
               str(args.batch), "--crop", str(args.crop), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    rounds = []
    for _ in range(args.rounds):
        run = lambda env: json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
        rounds.append({"default": run(plain), "tuned": run(tuned)})
    summary = {}
    for name in ("default", "tuned"):
        steps = [s for r in rounds for s in r[name]["seconds"]]
        summary[name] = {"median_step_seconds": statistics.median(steps),
                         "faults_per_step": statistics.median(r[name]["faults_per_step"] for r in rounds),
                         "peak_gib": max(r[name]["peak_gib"] for r in rounds)}  # fmt: skip
        print(f"{name:8s} median step {summary[name]['median_step_seconds']:.3f} s, "
              f"{summary[name]['faults_per_step']:,.0f} minor page faults per step, peak {summary[name]['peak_gib']:.2f} GiB")  # fmt: skip
    speedup = summary["default"]["median_step_seconds"] / summary["tuned"]["median_step_seconds"]
    print(f"tuned steps are {speedup:.2f}x as fast")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {"threads": args.threads, "preset": args.preset, "batch": args.batch, "crop": args.crop, "steps": args.steps,
                  "tunables": tuned["GLIBC_TUNABLES"], "machine": platform.processor() or platform.machine(),
                  "glibc": platform.libc_ver()[1], "summary": summary, "speedup": speedup, "rounds": rounds}  # fmt: skip
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
