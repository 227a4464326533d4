"""Coding speed and memory per stage and image size (the paper's Table 3, measured): ``refcodec bench``.

    refcodec bench --model grm --preset paper --sizes 240p 480p 720p 1080p 4k --threads 2 -o bench.json
    refcodec bench --weights runs/NAME/weights.safetensors --sizes 4k     # a trained run's own weights

Every (size, schedule) is compressed in one fresh process and decompressed in another, so
that each reports its own peak memory (``ru_maxrss``). Each prints the wall time of every
stage (``profiling.STAGES``), the number of decode steps, the bits and the decoded PSNR.
Presets without shipped weights run with seeded random weights (timing only: their rate
and PSNR mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from .. import codec, profiling
from ..bitstream import unpack
from ..models import registry
from ..models.base import STRIDE
from ..sample import sample_image

SIZES = {"240p": (426, 240), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160),
         "8k": (7680, 4320), "kodak": (768, 512)}  # fmt: skip


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) from 'WxH' or a named size (240p ... 8k, kodak)."""
    if text.lower() in SIZES:
        return SIZES[text.lower()]
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use WxH or one of {', '.join(SIZES)}") from None
    return w, h


def build_model(name: str, preset: str, quality: float, schedule: str, path: str | None = None):
    """The weights file ``path``, else shipped weights if there are any for (name, preset, quality), else
    seeded random weights."""
    try:
        model = registry.load_model(path or name, quality, preset)
        weights = path or model.id
    except registry.ModelNotFoundError:
        torch.manual_seed(0)
        model = registry.build(name, preset).eval()
        model.update()
        model.id = f"{name}/{preset}/random"
        weights = "random (seed 0; timing only)"
    if hasattr(model, "context"):  # models without a context model decode all latents at once
        model.use_schedule(schedule)
    return model, weights


def child(args) -> dict:
    """One compress or decompress in this process; returns its measurements."""
    torch.set_num_threads(args.threads)
    model, weights = build_model(args.model, args.preset, args.quality, args.schedule, args.weights)
    image = Image.open(args.image).convert("RGB") if args.image else sample_image(*args.size)
    start = time.perf_counter()
    with profiling.record() as seconds:
        if args.child == "compress":
            data = codec.compress(image, model)
            Path(args.file).write_bytes(data)
        else:
            data = Path(args.file).read_bytes()
            decoded = codec.decompress(data, model)
    total = time.perf_counter() - start
    header, _ = unpack(data)
    h, w = (side // STRIDE for side in header.padded_size)
    result = {
        "seconds": {k: round(seconds.get(k, 0.0), 4) for k in profiling.STAGES},
        "total_seconds": round(total, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps": len(model.schedule.order(h, w)) if hasattr(model, "context") else 1,
        "latents": [h, w],
        "bytes": len(data),
        "bpp": 8 * len(data) / (header.width * header.height),
        "weights": weights,
    }
    if args.child == "decompress":
        result["psnr"] = codec.psnr(image, decoded)
    return result


def run(args, size: tuple[int, int] | None, schedule: str, workdir: Path) -> dict:
    """Compress, then decompress, each in a fresh process."""
    file = workdir / "bench.rfc"
    base = [sys.executable, "-m", "refcodec.eval.bench", "--model", args.model, "--preset", args.preset,
            "--quality", str(args.quality), "--threads", str(args.threads), "--schedule", schedule, "--file", str(file)]  # fmt: skip
    base += ["--image", str(args.image)] if args.image else ["--size", f"{size[0]}x{size[1]}"]
    base += ["--weights", args.weights] if args.weights else []
    out = {}
    for step in ("compress", "decompress"):
        done = subprocess.run(base + ["--child", step], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"refcodec bench: {step} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        out[step] = json.loads(done.stdout.splitlines()[-1])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="refcodec bench", description="Time and memory of every coding stage, per image size.")
    p.add_argument("--model", default="grm", choices=sorted(registry.MODELS), help="architecture (default grm)")
    p.add_argument("--preset", choices=sorted(registry.PRESETS),
                   help="model size (default: the shipped default's, as everywhere, registry.default_preset); shipped weights if any, else seeded "
                   "random ones (the output says which)")  # fmt: skip
    p.add_argument("--weights", help="a weights file (.safetensors, a training run's or your own) instead of --model and --preset")
    p.add_argument("--quality", type=float, default=3, help="quality of the weights to use (default 3)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[SIZES["kodak"]], help=f"WxH or {', '.join(SIZES)}")
    p.add_argument("--image", type=Path, help="an image file instead of generated ones")
    p.add_argument("--schedules", nargs="+", default=["wavefront"], choices=["wavefront", "raster"],
                   help="decode orders to measure (default wavefront)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch threads of every measurement")
    p.add_argument("-o", "--output", type=Path, help="write the JSON here")
    p.add_argument("--child", choices=["compress", "decompress"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=parse_size, help=argparse.SUPPRESS)
    p.add_argument("--schedule", default="wavefront", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.preset = args.preset or registry.default_preset(args.model)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.weights:  # the file names the architecture and size; a bad file is refused (ModelNotFoundError) before any run
        config = registry.load_model(args.weights, args.quality).config  # here only: a child's peak memory holds one model
        args.model, args.preset = config["name"], config.get("preset", args.preset)
    report = {
        "model": args.model, "preset": args.preset, "weights": args.weights, "quality": args.quality, "threads": args.threads,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}",
        "load_average": round(os.getloadavg()[0], 1), "runs": [],
    }  # fmt: skip
    schedules = args.schedules if args.model in ("grm", "joint") else ["none"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in [None] if args.image else args.sizes:
            for schedule in schedules:
                result = run(args, size, schedule, Path(tmp))
                w, h = size or Image.open(args.image).size
                row = {"size": f"{w}x{h}", "pixels": w * h, "schedule": schedule, **result}
                report["runs"].append(row)
                enc, dec = result["compress"], result["decompress"]
                print(f"{w}x{h} {schedule}: encode {enc['total_seconds']:.2f} s ({enc['peak_rss_mb']:.0f} MB), "
                      f"decode {dec['total_seconds']:.2f} s ({dec['peak_rss_mb']:.0f} MB), {dec['steps']} steps, "
                      f"{enc['bpp']:.3f} bpp", flush=True)  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        args.output.with_suffix(".md").write_text(table(report))
        from .plot import time_plot  # matplotlib and bjontegaard: benchmark extras, not needed to measure

        time_plot(report["runs"], args.output.with_suffix(".png"), f"{args.model}/{args.preset}, {args.threads} thread(s)")


def reference_share(seconds: dict) -> float:
    """The reference's part of the entropy model's time (hyper, context, reference, parameters, coder),
    as the paper's Table 3 gives its part of the entropy model's FLOPs."""
    entropy = sum(seconds[k] for k in ("hyper", "context", "reference", "parameters", "coder"))
    return seconds["reference"] / entropy if entropy else 0.0


def table(report: dict) -> str:
    """Seconds per stage and peak memory of every run, as the paper's Table 3 lays them out."""
    head = "| size | schedule | step | " + " | ".join(profiling.STAGES) + " | total (s) | reference share | peak RSS (MB) | decode steps |"
    lines = [f"{report['model']}/{report['preset']}, {report['threads']} thread(s), {report['machine']}, "
             f"load average {report['load_average']} at the start\n", head, "|---" * (head.count("|") - 1) + "|"]  # fmt: skip
    for r in report["runs"]:
        for step in ("compress", "decompress"):
            m = r[step]
            cells = [r["size"], r["schedule"], step, *(f"{m['seconds'][k]:.2f}" for k in profiling.STAGES),
                     f"{m['total_seconds']:.2f}", f"{reference_share(m['seconds']):.0%}", f"{m['peak_rss_mb']:.0f}", str(m["steps"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
