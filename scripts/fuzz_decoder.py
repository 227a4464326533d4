"""Decoder fuzzer: mutated refcodec files in, and nothing but a decode or refcodec's own error out.

    python scripts/fuzz_decoder.py --inputs 100000 -o results/reliability/fuzz.json

Starts from real files (generated images coded with shipped models) and feeds ``codec.decompress``
one mutation at a time: truncations, bit flips, random bytes, huge declared sizes, another model's
weights hash, unknown format versions, random header fields, and payload damage behind a valid
checksum (so that the range decoder and the entropy model really run on garbage). The only
outcomes allowed are a decoded image of the declared size or a ``RefcodecError`` with a one-line
message, each within ``--time-limit`` seconds and under ``--max-pixels``. Prints and writes the
count of every outcome; exits 1 on any other outcome. The test suite runs a few hundred inputs.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import signal
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from refcodec import codec
from refcodec.bitstream import MAGIC, READABLE_VERSIONS, read_header, unpack
from refcodec.errors import RefcodecError
from refcodec.models import registry
from refcodec.sample import sample_image

SIZES = ((64, 64), (80, 48), (1, 1), (33, 70))
SEED_QUALITIES = (0.0, 2.5, 8.0)  # a variable-rate model's seed files: both ends and a fractional quality


class Hang(Exception):
    pass


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def payload_start(data: bytes) -> int:
    """Offset of the first stream of a valid file (the stream lengths end there; the CRC is the last 4 bytes)."""
    return len(data) - 4 - sum(read_header(data).stream_lengths)


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One mutation of a valid file; all but the first three keep the checksum valid."""
    b = bytearray(data)
    body = b[:-4]
    if kind == "truncate":
        return bytes(b[: rng.integers(0, len(b))])
    if kind == "bit flips":
        for bit in rng.integers(0, 8 * len(b), rng.integers(1, 9)):
            b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)
    if kind == "random bytes":
        junk = rng.bytes(int(rng.integers(0, 400)))
        return MAGIC + b"\x01" + junk if rng.random() < 0.5 else junk
    if kind == "huge size":
        for offset in (25, 27, 29, 31):  # width, height, padding
            if rng.random() < 0.7:
                body[offset : offset + 2] = int(rng.integers(0, 65536)).to_bytes(2, "little")
    elif kind == "other weights":
        body[9 + rng.integers(0, 16)] ^= int(rng.integers(1, 256))
    elif kind == "unknown version":
        body[4] = int(rng.choice([v for v in range(256) if v not in READABLE_VERSIONS]))
    elif kind == "header field":
        for _ in range(rng.integers(1, 4)):
            body[rng.integers(5, payload_start(data))] = int(rng.integers(0, 256))
    elif kind == "payload bytes":
        start = payload_start(data)
        for at in rng.integers(start, len(body), rng.integers(1, 17)):
            body[at] = int(rng.integers(0, 256))
    elif kind == "payload random":
        start = payload_start(data)
        body[start:] = rng.bytes(len(body) - start)
    elif kind == "stream cut":  # shorten the last stream and its declared length
        header, streams = unpack(data)
        cut = int(rng.integers(0, len(streams[-1]) + 1))
        at = payload_start(data) - 4  # the last stream's length
        body[at : at + 4] = (len(streams[-1]) - cut).to_bytes(4, "little")
        del body[len(body) - cut :]
    return with_crc(bytes(body))


KINDS = ("truncate", "bit flips", "random bytes", "huge size", "other weights", "unknown version",
         "header field", "payload bytes", "payload random", "stream cut")  # fmt: skip


def outcome_of(data: bytes, models: dict, max_pixels: int) -> str:
    """'decoded' or 'RefcodecError subclass: message shape'; anything else raises."""
    try:
        header, _ = unpack(data)
    except RefcodecError:
        header = None
    try:
        image = codec.decompress(data, header and models.get(header.model), max_pixels=max_pixels)
    except RefcodecError as e:
        message = str(e)
        if not message or "\n" in message:
            raise AssertionError(f"unclear message {message!r}") from None
        shape = re.sub(r"[0-9a-f]{6,}|\d+", "N", message)  # numbers and hashes vary: group by wording
        return f"{type(e).__name__}: {shape[:90]}"
    if image.size != (header.width, header.height):
        raise AssertionError(f"decoded {image.size}, header says {header.width}x{header.height}")
    return "decoded"


def seeds(model_ids: list[str]) -> tuple[list[bytes], dict]:
    """Real files of every model and size; a variable-rate model's at each of ``SEED_QUALITIES``."""
    models = {m: registry.load_model(m) for m in model_ids}
    files = [codec.compress(sample_image(w, h, seed=i), model, quality=q) for model in models.values()
             for q in (SEED_QUALITIES if model.levels else [None]) for i, (w, h) in enumerate(SIZES)]  # fmt: skip
    return files, models


def fuzz(inputs: int, seed: int = 0, model_ids=("grm/small/vr",), max_pixels: int = 1 << 16,
         time_limit: float = 10.0, progress: bool = False) -> dict:  # fmt: skip
    """Run the fuzzer; returns counts by mutation and outcome, the failures and the slowest input."""
    torch.set_num_threads(1)
    files, models = seeds(list(model_ids))
    rng = np.random.default_rng(seed)
    counts, failures, slowest = Counter(), [], 0.0

    def alarm(*_):
        raise Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    start = time.perf_counter()
    try:
        for i in range(inputs):
            kind = KINDS[i % len(KINDS)]
            data = mutate(files[rng.integers(0, len(files))], kind, rng)
            t = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                result = outcome_of(data, models, max_pixels)
            except Hang:
                result = f"FAILURE hang over {time_limit} s"
            except Exception as e:  # noqa: BLE001 - every other outcome is what we are looking for
                result = f"FAILURE {type(e).__name__}: {str(e)[:200]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - t)
            counts[(kind, result)] += 1
            if result.startswith("FAILURE") and len(failures) < 20:
                failures.append({"kind": kind, "outcome": result, "input_hex": data.hex()})
            if progress and (i + 1) % 5000 == 0:
                print(f"{i + 1} inputs, {sum(v for (_, r), v in counts.items() if r.startswith('FAILURE'))} failures", flush=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    by_outcome = Counter()
    for (_, result), v in counts.items():
        by_outcome[result] += v
    return {
        "inputs": inputs, "seed": seed, "models": list(model_ids), "max_pixels": max_pixels, "time_limit_s": time_limit,
        "seconds": round(time.perf_counter() - start, 1), "slowest_input_s": round(slowest, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "decoded": by_outcome["decoded"],
        "refcodec_errors": sum(v for r, v in by_outcome.items() if r != "decoded" and not r.startswith("FAILURE")),
        "failures": sum(v for r, v in by_outcome.items() if r.startswith("FAILURE")),
        "by_mutation": {k: dict(sorted((r, v) for (kk, r), v in counts.items() if kk == k)) for k in KINDS},
        "by_outcome": dict(by_outcome.most_common()),
        "failure_examples": failures,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pixels", type=int, default=1 << 16)
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds one decode may take")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    report = fuzz(args.inputs, args.seed, max_pixels=args.max_pixels, time_limit=args.time_limit, progress=True)
    summary = {k: v for k, v in report.items() if k not in ("by_mutation", "failure_examples")}
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
