"""Encode on a GPU, decode on the CPU and on the GPU: does it round-trip, and how fast is each side?

For every (model, size): the model encodes a generated image (or ``--image``) on the GPU and,
unless ``--no-cpu-encode``, on the CPU; a CPU copy of the model and the GPU model decode the GPU's
streams and synthesize the image. Round trip means the CPU decoder's latents equal, integer for
integer, the latents the GPU encoder coded (the entropy model's arithmetic is exact on both, see
``fixedpoint``); the GPU decoder must give the same latents and, with the exact synthesis
(``synthesis``), the same pixels as the CPU. The
analysis transform runs in float32, so the GPU may round a few latents the other way than the
CPU: the two files can differ and both decode. Each GPU encode follows one warm-up encode of a
64x64 image (CUDA context, kernel loading). Prints and writes JSON with per-stage seconds.

    python benchmarks/gpu_coding.py --models grm/small/vr grm/paper --sizes kodak 1080p 4k -o gpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from PIL import Image

from refcodec import codec, profiling
from refcodec.eval.bench import SIZES, build_model, parse_size
from refcodec.sample import sample_image


def timed(fn, *args):
    """(result, total seconds, seconds per stage), the GPU's queued work included."""
    with profiling.record() as seconds:
        start = time.perf_counter()
        result = fn(*args)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    return result, round(total, 4), {k: round(v, 4) for k, v in seconds.items()}


@torch.no_grad()
def measure(ref: str, size, image: Path | None, cpu_encode: bool, decode: bool) -> dict:
    name, preset, *rest = ref.split("/")
    quality = int(rest[0][1:]) if rest else 3
    cpu_model, weights = build_model(name, preset, quality, "wavefront")
    gpu_model = copy.deepcopy(cpu_model).cuda()
    gpu_model.encode(codec.padded_tensor(sample_image(64, 64)).cuda())  # warm-up
    picture = Image.open(image).convert("RGB") if image else sample_image(*size)
    x = codec.padded_tensor(picture)
    (streams, y_gpu), gpu_s, gpu_stages = timed(gpu_model.encode, x.cuda())
    y_gpu = y_gpu.cpu()
    row = {"model": ref, "weights": weights, "size": "x".join(map(str, picture.size)), "bytes": sum(map(len, streams)),
           "gpu_encode_seconds": gpu_s, "gpu_encode_stages": gpu_stages}  # fmt: skip
    if cpu_encode:
        (cpu_streams, y_cpu), row["cpu_encode_seconds"], row["cpu_encode_stages"] = timed(cpu_model.encode, x)
        row["same_bytes_as_cpu_encoder"] = cpu_streams == streams
        row["latents_rounded_differently"] = int((y_cpu != y_gpu).sum())
    if decode:
        y_dec, row["cpu_decode_seconds"], row["cpu_decode_stages"] = timed(cpu_model.decode, streams, x.shape[2], x.shape[3])
        row["round_trip"] = bool(torch.equal(y_dec, y_gpu))
        y_gdec, row["gpu_decode_seconds"], row["gpu_decode_stages"] = timed(gpu_model.decode, streams, x.shape[2], x.shape[3])
        row["gpu_decode_same_latents"] = bool(torch.equal(y_gdec.cpu(), y_dec))
        x_cpu, row["cpu_synthesis_seconds"], _ = timed(cpu_model.synthesize, y_dec)
        x_gpu, row["gpu_synthesis_seconds"], _ = timed(gpu_model.synthesize, y_gdec)
        row["gpu_decode_same_pixels"] = bool(torch.equal(x_gpu.cpu(), x_cpu))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["grm/small/vr", "grm/paper"], help="model ids, or name/preset (random weights)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[SIZES["kodak"]], help=f"WxH or {', '.join(SIZES)}")
    p.add_argument("--image", type=Path, help="an image file instead of generated ones")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU encode and decode)")
    p.add_argument("--no-cpu-encode", action="store_true", help="skip the CPU encode (large sizes)")
    p.add_argument("--no-decode-above", type=int, default=10**12, help="skip the CPU decode above this many pixels")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_coding: no CUDA device")
    torch.set_num_threads(args.threads)
    report = {"gpu": torch.cuda.get_device_name(), "cpu": f"{os.cpu_count()} cores ({platform.machine()})",
              "threads": args.threads, "torch": torch.__version__, "runs": []}  # fmt: skip
    for ref in args.models:
        for size in [None] if args.image else args.sizes:
            pixels = size[0] * size[1] if size else 0
            report["runs"].append(measure(ref, size, args.image, not args.no_cpu_encode, pixels <= args.no_decode_above))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
