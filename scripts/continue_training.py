"""Continue training the shipped variable-rate model in the background, within a time limit.

    python scripts/continue_training.py --minutes 150                 # CPU: nice, one thread; the default model
    python scripts/continue_training.py --minutes 150 --preset small --out runs/small   # the fast model
    python scripts/continue_training.py --minutes 150 --out runs/continue --data-root ../shared/datasets
    python scripts/continue_training.py --minutes 150 --metric ms-ssim --out runs/continue-ms-ssim

The first call starts OUT from the model with the most training steps among the carried
candidate ``training/grm-PRESET-vr.safetensors`` and the shipped ``grm/PRESET/vr`` of the default model's
preset (``grm/medium/vr`` since 0.14.0; ``--preset`` names another; ``--init`` starts it from other weights;
fixed-rate ones are turned into a variable-rate model: ``models.convert``); every later call with the same
OUT resumes its checkpoint exactly (``refcodec train --resume``: the same batches, noise and qualities as one
uninterrupted run), so a session can stop and restart it at will. Before a carried or shipped model of a wider
preset exists, its run starts from the shipped ``grm/small/vr``, widened function-preservingly
(``models.widen``: ``refcodec train --init`` of a narrower model; issue 36). At the end, the weights are
carried (float16, as they would ship) to ``--carry``, which the session commits: run folders are not kept
between sessions, and a candidate the gate refuses would otherwise be lost with its compute. Where the shipped
weights leave no room for it within the repository's 40 MB (``WEIGHTS_BUDGET``; the three shipped models take
39.7 MB), the run says so instead, and only the run folder, where the machine keeps it, carries the run: a
session then cools its run down and ships it through the gate (``--cooldown``). The optimizer's moments are
not carried; Adam starts afresh with a short warm-up. The run trains on ``photos/train`` and BSDS500's train
and test splits (``--data``: other folders) and validates on ``photos/val``; the candidate it leaves in OUT/weights.safetensors goes to
``scripts/ship_gate.py``. The learning rate stays near its peak (a schedule of a million steps):
this run has no end, every session adds to it. What is validated, exported and carried is the average
of the weights over about the last 1,000 steps (``--ema``), whose scatter at that rate it smooths out.

``--cooldown N`` makes a release candidate instead: it forks OUT's checkpoint into a branch
(``--branch``, default OUT-cooldown) and trains the branch N steps more with the learning rate
decaying linearly to 0 (the decay phase of a warmup-stable-decay schedule, ``refcodec train
--cooldown``); OUT itself stays at its peak rate, for later sessions to continue. The branch's
weights go to the gate; a later call with the same branch resumes it towards the same end step.

The process lowers its own priority (``nice``) and uses ``--threads`` torch threads (default 1),
so that the session's other work keeps the second core. The model's forward pass is compiled
(``torch.compile``; ``--no-compile`` leaves it eager): on 2 threads a step takes 0.82 s instead of 1.03 s
once the first one has spent about 90 s compiling (``results/bench/train-compile.json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from refcodec import allocator
from refcodec.models import registry
from refcodec.train import checkpoint, trainer

SCHEDULE_STEPS = 1_000_000
EMA = 0.999  # the weight average's decay per step: a window of about 1,000 steps (refcodec train --ema)
CARRIED = Path(__file__).resolve().parent.parent / "training"  # tracked: the run's weights between sessions
WEIGHTS_BUDGET = 40_000_000  # bytes: the repository's weights, shipped and carried together, at most 40 MB


def carried_path(metric: str = "mse", preset: str = "small") -> Path:
    """Where the run of the variable-rate model of ``preset`` and ``metric`` is carried between sessions."""
    return CARRIED / (registry.model_id("grm", preset, None, metric).replace("/", "-") + ".safetensors")


def _steps(weights: str | Path) -> int:
    path = Path(weights) if str(weights).endswith(".safetensors") else registry.weights_path(str(weights))
    return registry.read_config(path).get("steps", 0)


def initial_weights(metric: str = "mse", carried: Path | None = None, preset: str = "small") -> str:
    """The most trained of the carried candidate and the shipped variable-rate model of the metric and preset
    (a tie goes to the shipped one); for MS-SSIM, before either exists, the MSE ones (section 5.1 fine-tunes
    MS-SSIM models from MSE ones); for a wider preset, before either exists, the small ones (widened)."""
    for p in dict.fromkeys([preset, "small"]):
        for m in dict.fromkeys([metric, "mse"]):
            shipped = registry.model_id("grm", p, None, m)
            path = carried if carried is not None and (p, m) == (preset, metric) else carried_path(m, p)
            found = [shipped] * registry.weights_path(shipped).is_file() + [str(path)] * path.is_file()
            if found:
                return max(found, key=_steps)  # max keeps the first (shipped) of equals
    raise SystemExit(f"continue_training: no shipped or carried variable-rate grm/{preset} model: start from weights with --init")


def carry(run: Path, path: Path) -> None:
    """Store the run's weights at ``path`` as they would ship (float16), for the next session to continue."""
    model = registry.load_model(str(run / "weights.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    registry.save(model, path, model.config, dtype=torch.float16)


def carry_note(path: Path, out: str) -> str:
    """What to do with the carried weights at ``path``: commit them, unless the shipped weights and every carried
    file together would pass ``WEIGHTS_BUDGET``; then the run folder ``out`` is what the next session resumes."""
    mb = lambda paths: sum(p.stat().st_size for p in paths) / 1e6  # noqa: E731
    shipped, carried = mb(registry.WEIGHTS_DIR.glob("*.safetensors")), mb(path.parent.glob("*.safetensors"))
    if shipped + carried <= WEIGHTS_BUDGET / 1e6:
        return f"carried to {path}: commit it, so that the next session continues this run"
    return (f"carried to {path}, but do not commit it: with the shipped weights ({shipped:.1f} MB) it would pass the "
            f"repository's {WEIGHTS_BUDGET / 1e6:.0f} MB weights budget ({shipped + carried:.1f} MB); the next session resumes "
            f"{out} (the same --out) where this machine keeps it, and a candidate the gate accepts ships this session")  # fmt: skip


def train_args(args: argparse.Namespace) -> list[str]:
    """The ``refcodec train`` command line of this run (of its cooled-down branch with ``--cooldown``)."""
    root = Path(args.data_root)
    data = args.data or [root / "photos" / "train", root / "bsds500" / "train", root / "bsds500" / "test"]
    out = args.branch if args.cooldown else args.out
    argv = ["--data", *map(str, data), "--val", str(root / "photos" / "val"), "--val-images", str(args.val_images),
            "--out", out, "--model", "grm", "--preset", args.preset, "--variable-rate", "--steps", str(SCHEDULE_STEPS),
            "--batch", str(args.batch), "--crop", str(args.crop), "--lr", str(args.lr), "--threads", str(args.threads),
            "--device", args.device, "--val-every", str(args.val_every), "--save-every", str(args.save_every),
            "--metric", args.metric, "--ema", str(args.ema)] + ["--compile"] * args.compile  # fmt: skip
    if args.cooldown:
        return argv + branch(Path(args.out), Path(args.branch), args.cooldown) + ["--resume"]
    argv += ["--time-limit", str(args.minutes * 60)]
    if (Path(args.out) / "checkpoint.pt").is_file():
        return argv + ["--resume"]
    if args.grow_warmup or args.grow_reseed:  # a new ramp; one that the initial weights record goes on by itself
        argv += ["--grow-warmup", str(args.grow_warmup)] + (["--grown-from", args.grown_from] if args.grown_from else [])
        argv += ["--grow-reseed", str(args.grow_reseed)] if args.grow_reseed else []
    return argv + ["--init", args.init or initial_weights(args.metric, args.carry, args.preset)]


def branch(run: Path, folder: Path, steps: int) -> list[str]:
    """The cooldown options of the branch in ``folder`` of ``run``: forked from the run's newest checkpoint (and log)
    on the first call, leaving the run as it is; a later call resumes the branch towards the end step it recorded."""
    if not (folder / checkpoint.NAME).is_file():
        if not any((run / name).is_file() for name in (checkpoint.NAME, checkpoint.PREVIOUS)):
            raise SystemExit(f"continue_training: {run} has no checkpoint to branch a cooldown from")
        folder.mkdir(parents=True, exist_ok=True)
        for name in (checkpoint.NAME, checkpoint.PREVIOUS, "log.csv"):
            if (run / name).is_file():
                shutil.copy2(run / name, folder / name)
    state = checkpoint.load(folder)
    cooldown = state["config"].get("cooldown") or {"steps": steps, "until": state["step"] + steps}
    return ["--stop-at", str(cooldown["until"]), "--cooldown", str(cooldown["steps"])]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="training time of this call (a checkpoint is saved at the end)")
    p.add_argument("--out", default="runs/continue", help="run folder (resumed if it has a checkpoint)")
    p.add_argument("--cooldown", type=int, help="instead of training OUT: train its branch this many steps more with the "
                   "learning rate decaying linearly to 0, for the gate (OUT stays at its peak rate)")  # fmt: skip
    p.add_argument("--branch", help="with --cooldown: the branch's run folder (default: OUT-cooldown)")
    p.add_argument("--data-root", default="../shared/datasets", help="folder holding photos/ and bsds500/")
    p.add_argument("--data", nargs="+", metavar="DIR", help="training folders instead of photos/train and bsds500's train "
                   "and test under --data-root (a final phase at --crop 512: the folders whose images hold such a crop)")  # fmt: skip
    p.add_argument("--init", help="weights to start a new run from (default: the most trained of the carried and the "
                   "shipped grm/PRESET/vr; for medium, before either exists, grm/small/vr widened)")
    p.add_argument("--carry", type=Path, help="where the weights are carried at the end (default: training/grm-PRESET-vr"
                   ".safetensors, or -ms-ssim; commit it)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="patch side (the paper's 512 in a final phase)")
    p.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"], help="ms-ssim: the MS-SSIM model (use its own --out)")
    p.add_argument("--preset", choices=sorted(registry.PRESETS), help="the model's size: small (grm/small/vr) or medium (the "
                   "wide grm/medium/vr, started from the widened small model; use its own --out); default: the default model's "
                   "(registry.default_preset: grm/medium/vr once shipped, else grm/small/vr), which takes the compute")  # fmt: skip
    p.add_argument("--grow-warmup", type=int, default=0, metavar="STEPS",
                   help="a new run of the wide model: ramp the rate's pull on its grown latent channels from 0 to 1 over STEPS "
                   "(refcodec train --grow-warmup; without it they stay at 0)")  # fmt: skip
    p.add_argument("--grow-reseed", type=int, default=0, metavar="HOLD",
                   help="a new run of the wide model: re-initialize its grown latent channels and hold their rows of g_a "
                   "for HOLD steps before the --grow-warmup ramp (refcodec train --grow-reseed)")  # fmt: skip
    p.add_argument("--grown-from", metavar="NxM", help="with --grow-warmup or --grow-reseed from already widened weights: the size they grew from")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=EMA, help="decay of the weight average that is exported (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the model (refcodec train --compile: 1.25x the steps per second after ~90 s)")
    p.add_argument("--nice", type=int, default=19, help="added to the process's niceness (0: none)")
    args = p.parse_args(argv)
    if (args.minutes is None) == (args.cooldown is None):
        p.error("give either --minutes (continue the run) or --cooldown (train its cooled-down branch)")
    if args.cooldown is not None and args.cooldown <= 0:
        p.error(f"--cooldown must be a positive number of steps, got {args.cooldown}")
    args.preset = args.preset or registry.default_preset("grm", args.metric)
    args.carry = args.carry or carried_path(args.metric, args.preset)
    args.branch = args.branch or args.out.rstrip("/") + "-cooldown"
    os.nice(args.nice)
    command = train_args(args)
    print("refcodec train " + " ".join(command), flush=True)
    trainer.main(command)
    if args.cooldown:
        print(f"the cooled-down candidate: {Path(args.branch) / 'weights.safetensors'} (for scripts/ship_gate.py)", flush=True)
        return
    carry(Path(args.out), args.carry)
    print(carry_note(args.carry, args.out), flush=True)


if __name__ == "__main__":
    allocator.reexec()  # glibc's tunables are read at start: restart with them (refcodec.allocator)
    main()
