"""Data-parallel training on several processes with torch.distributed.

Each process trains a replica of the model on its own batches (``--batch`` is per
process); DistributedDataParallel averages the gradients, so the replicas stay
identical. Processes come from ``torchrun --nproc_per_node=K -m refcodec.train`` or
from ``refcodec train --nproc K`` (``launch``); both describe the process group in the
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...). Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import inspect
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

_FORWARD_SYNC_BUFFERS = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


@dataclass(frozen=True)
class Context:
    """This process: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def hardware(self) -> str:
        """What trains, for model cards: the GPU name or the CPU cores, the process count and torch version."""
        if self.device.type == "cuda":
            what = torch.cuda.get_device_name(self.device)
        else:
            what = f"{os.cpu_count()} CPU cores ({platform.machine()})"
        return f"{what}{f' x {self.world} processes' if self.world > 1 else ''}, torch {torch.__version__}"

    @property
    def main(self) -> bool:
        """Rank 0, the only process that writes files and reports."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose backward pass averages the gradients of all processes.

        Buffers are synchronized once, not before every forward pass: training does not change them.
        torch before 2.13 has no ``forward_sync_buffers``; there its default also syncs them before
        every forward pass, which is the same training, a little slower.
        """
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        once = {"forward_sync_buffers": False} if _FORWARD_SYNC_BUFFERS else {}
        return DistributedDataParallel(model, device_ids=ids, **once)

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalars averaged over the processes (one all_reduce): non-finite if any process's is."""
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        if self.world > 1:
            dist.all_reduce(stacked)
            stacked /= self.world
        return dict(zip(values, stacked.tolist()))

    def agree(self, flag: bool) -> bool:
        """True in every process if ``flag`` is true in any (one all_reduce)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order."""
        if self.world == 1:
            return [obj]
        objs = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def close(self) -> None:
        """Leave the process group; call it after the last reference to ``wrap``'s model is dropped.

        A DDP reducer that outlives the group becomes its last owner, and then frees it from a
        destructor that holds the GIL while it joins gloo's worker threads, one of which may need
        the GIL to free a finished collective's tensors: a deadlock at exit (pytorch/pytorch#56297).
        """
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto", threads: int = 0) -> Context:
    """Join the process group described by the environment (if any) and pick the device.

    ``device`` is auto (CUDA when available), cpu or cuda; a process of a group uses
    cuda:LOCAL_RANK. CPU threads: ``threads``, or the cores shared among local processes.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"refcodec train: no CUDA device {local_rank} (found {torch.cuda.device_count()})")
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest convolution once
        torch.backends.cuda.matmul.allow_tf32 = True
    if threads or local_world > 1:
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return Context(rank, world, dev)


def launch(nproc: int, fn: Callable, *args, timeout: float | None = None) -> None:
    """Run ``fn(*args)`` in ``nproc`` local processes that form a process group (like torchrun).

    The processes talk over the loopback interface: gloo would otherwise use the address that
    the host name resolves to, which in some containers is not reachable and hangs the
    rendezvous. After ``timeout`` seconds (None: no limit) the processes are ended and
    TimeoutError is raised.
    """
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_process, args=(nproc, port, fn, args), nprocs=nproc, join=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not context.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
        if deadline is not None and time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
                process.join()
            raise TimeoutError(f"{nproc} training processes did not finish within {timeout:g} s")


def _loopback() -> str | None:
    """The name of the loopback network interface (Linux lo, macOS lo0), if there is one."""
    return next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)


def _process(rank: int, nproc: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))  # fmt: skip
    if "GLOO_SOCKET_IFNAME" not in os.environ and (loopback := _loopback()):
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    fn(*args)
