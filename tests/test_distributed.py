"""Data-parallel training: two CPU processes (gloo) stay bit-identical, and only rank 0 writes."""

import csv
import gc
import hashlib
import itertools
import os
import socket
import time

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from refcodec.train import distributed, trainer

from conftest import natural_image


def _train_and_hash(argv, hashes, poisoned_rank):
    """One process: train (with an infinite loss, but finite gradients, at the second batch of
    ``poisoned_rank`` only), check that no DDP wrapper outlives the process group, then write a hash of the parameters and buffers."""
    rank = int(os.environ["RANK"])
    if rank == poisoned_rank:
        calls, rate_distortion = itertools.count(), trainer.rate_distortion

        def poisoned(*args, **kwargs):
            metrics = rate_distortion(*args, **kwargs)
            if next(calls) == 1:
                metrics["loss"] = metrics["loss"] + float("inf")
            return metrics

        trainer.rate_distortion = poisoned
    close, ddp_left = distributed.Context.close, []

    def close_and_count(ctx):  # a DDP wrapper that outlives the process group frees it, and can deadlock
        close(ctx)
        ddp_left.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))

    distributed.Context.close = close_and_count
    model = trainer.train(trainer.parse_args(argv))
    assert ddp_left == [0]
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values()))
    (hashes / f"{rank}.txt").write_text(f"{digest.hexdigest()} {os.environ.get('GLOO_SOCKET_IFNAME')}")


def test_two_processes_stay_in_sync_and_only_rank_0_writes(tmp_path, capfd):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(4):
        natural_image(72, 64, seed=i).save(data / f"{i}.png")
    out, hashes = tmp_path / "run", tmp_path / "hashes"
    hashes.mkdir()
    argv = ["--data", str(data), "--val", str(data), "--out", str(out), "--steps", "3", "--batch", "1", "--crop", "64",
            "--save-every", "2", "--val-every", "3", "--val-images", "1", "--lr-warmup", "1", "--tensorboard"]  # fmt: skip
    distributed.launch(2, _train_and_hash, argv, hashes, 1, timeout=600)

    assert (hashes / "0.txt").read_text() == (hashes / "1.txt").read_text()
    if any(name == "lo" for _, name in socket.if_nameindex()):  # Linux: the processes talk over loopback
        assert (hashes / "0.txt").read_text().endswith(" lo")
    assert capfd.readouterr().out.count("non-finite loss or gradient, step skipped") == 1  # rank 0 reports, once
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and state["batches"] == 4  # both processes skipped the poisoned batch
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == ["checkpoint.prev.pt", "checkpoint.pt", "log.csv", "tensorboard", "weights.safetensors"]


def test_processes_that_do_not_finish_in_time_are_ended():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 5 s"):
        distributed.launch(2, time.sleep, 600, timeout=5)
    assert time.monotonic() - start < 60
