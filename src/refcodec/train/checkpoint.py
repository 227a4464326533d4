"""What a run writes and reads back: checkpoints, random states, weights.

A checkpoint holds the model, optimizer and schedule states, the step, the number of
batches drawn, the random states of every process, the run config and the elapsed wall
time. It is written to a temporary file and renamed into place, and the one it replaces is
kept as ``checkpoint.prev.pt``: a process killed at any moment leaves a readable
checkpoint, and ``load`` falls back to the previous one if the newest is damaged.
"""

from __future__ import annotations

import copy
import csv
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..models import registry

NAME, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


def save(run: Path, state: dict) -> None:
    """Write ``run/checkpoint.pt`` atomically, keeping the checkpoint it replaces as the previous one."""
    path, tmp = run / NAME, run / (NAME + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, run / PREVIOUS)
    os.replace(tmp, path)


def load(run: Path, quiet: bool = False) -> dict | None:
    """The newest readable checkpoint of a run (None if it has none), on the CPU."""
    paths = [p for p in (run / NAME, run / PREVIOUS) if p.exists()]
    for path in paths:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or otherwise damaged
            fallback = f", falling back to {PREVIOUS}" if path.name == NAME and len(paths) == 2 else ""
            if not quiet:
                print(f"refcodec train: {path} is unreadable ({type(e).__name__}){fallback}", file=sys.stderr)
    if paths:
        raise SystemExit(f"refcodec train: no readable checkpoint in {run}")
    return None


def rng_state(device: torch.device) -> dict:
    """The random states of this process (torch draws the noise of the rate proxy)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(states: list[dict] | dict, rank: int, device: torch.device) -> None:
    """Restore the random states that process ``rank`` saved (checkpoints before data-parallel training hold one dict)."""
    states = states if isinstance(states, list) else [states]
    if rank >= len(states):  # more processes than the run had: keep the fresh seed
        return
    state = states[rank]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed(value: int) -> None:
    """Seed every random generator of this process."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def export(model: torch.nn.Module, path: Path, config: dict) -> None:
    """Write weights (registry format) from a CPU copy: the coding tables are filled in the copy only."""
    registry.save(copy.deepcopy(model).cpu(), path, config)


def logged_time(log: Path) -> float:
    """Wall time of the last logged step (for checkpoints written before elapsed time was stored)."""
    if not log.exists():
        return 0.0
    with open(log, newline="") as f:
        rows = list(csv.reader(f))
    return float(rows[-1][1]) if len(rows) > 1 else 0.0
