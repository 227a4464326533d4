"""The speed ratios of the fast-coding issue on one image, as medians of alternating rounds.

Single runs on a shared 2-core machine swing by 20-30%, so a ratio of two single runs says
little. Each round runs, one after the other, ``refcodec bench`` (grm at the paper preset,
wavefront and raster; every compress and decompress in a fresh process) and CompressAI's
``mbt2018`` (``compressai_mbt2018.py``, in its own environment); the ratios are taken per
round and their medians reported, with every round's seconds:

    python benchmarks/kodak_ratios.py ../shared/datasets/kodak/kodim01.png --rounds 4 \\
        --compressai-python .venv-compressai/bin/python --shim ../shared/tools/compressai-shim \\
        -o results/bench/kodak-ratios.json

Without ``--compressai-python`` (or if CompressAI does not import there) only the
wavefront/raster ratio is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ours(image: Path, preset: str, threads: int, out: Path) -> dict[str, float]:
    """Encode and decode seconds of grm with each schedule, from one ``refcodec bench``."""
    cmd = [sys.executable, "-m", "refcodec.cli", "bench", "--model", "grm", "--preset", preset, "--image", str(image),
           "--schedules", "wavefront", "raster", "--threads", str(threads), "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = {}
    for run in json.loads(out.read_text())["runs"]:
        seconds[f"{run['schedule']}_encode"] = run["compress"]["total_seconds"]
        seconds[f"{run['schedule']}_decode"] = run["decompress"]["total_seconds"]
    return seconds


def compressai(python: str, shim: str | None, image: Path, threads: int, out: Path) -> dict[str, float] | None:
    """Encode and decode seconds of CompressAI's mbt2018 at quality 3, or None if it cannot run."""
    env = dict(os.environ, PYTHONPATH=shim or "")
    cmd = [python, str(HERE / "compressai_mbt2018.py"), str(image), "--quality", "3", "--threads", str(threads), "-o", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        print(f"CompressAI skipped: {(done.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return None
    result = json.loads(out.read_text())
    return {"mbt2018_encode": result["encode_seconds"], "mbt2018_decode": result["decode_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--preset", default="paper", help="grm's size (default paper: N=192, M=384)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compressai-python", help="a Python with CompressAI 1.2.8 (see compressai_mbt2018.py)")
    p.add_argument("--shim", help="PYTHONPATH for that Python (../shared/tools/compressai-shim here)")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            seconds = ours(args.image, args.preset, args.threads, Path(tmp) / "ours.json")
            if args.compressai_python:
                seconds |= compressai(args.compressai_python, args.shim, args.image, args.threads, Path(tmp) / "cai.json") or {}
            seconds = {k: round(v, 3) for k, v in seconds.items()}
            rounds.append(seconds)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)

    def median_ratio(num: str, den: str) -> float | None:
        ratios = [r[num] / r[den] for r in rounds if num in r and den in r]
        return round(statistics.median(ratios), 2) if ratios else None

    result = {
        "image": str(args.image), "preset": args.preset, "threads": args.threads, "rounds": rounds,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {os.getloadavg()[0]:.1f} at the end",
        "median_seconds": {k: round(statistics.median(r[k] for r in rounds if k in r), 2) for k in dict.fromkeys(k for r in rounds for k in r)},
        "decode_vs_mbt2018": median_ratio("mbt2018_decode", "wavefront_decode"),
        "encode_vs_mbt2018": median_ratio("mbt2018_encode", "wavefront_encode"),
        "decode_vs_raster": median_ratio("raster_decode", "wavefront_decode"),
        "encode_vs_raster": median_ratio("raster_encode", "wavefront_encode"),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
