"""Wall time per coding stage (the columns of the paper's Table 3), recorded only when asked.

The models mark their stages with ``with stage("reference"): ...``; outside ``record()``
that costs one context-variable lookup. Stages do not nest: an inner stage's time is not
subtracted from an outer one's, so the models mark leaves only.

    with record() as seconds:
        model.compress(x)
    seconds  # {"analysis": 0.41, "hyper": 0.02, "context": 0.10, "reference": 0.33, ...}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter

import torch

STAGES = ("analysis", "hyper", "context", "reference", "parameters", "coder", "synthesis")

_seconds: ContextVar[dict | None] = ContextVar("refcodec_stage_seconds", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the time spent in the block to stage ``name`` of the active record, if any."""
    seconds = _seconds.get()
    if seconds is None:
        yield
        return
    _sync()
    start = perf_counter()
    try:
        yield
    finally:
        _sync()
        seconds[name] += perf_counter() - start


def _sync() -> None:
    """Wait for queued GPU work, so that it counts in the stage that launched it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect stage times of the calls made inside the block."""
    seconds: dict[str, float] = defaultdict(float)
    token = _seconds.set(seconds)
    try:
        yield seconds
    finally:
        _seconds.reset(token)
