"""Exact synthesis against the float32 synthesis ("float") it replaced, per kernel and CPU dispatch: decode time, PSNR, pixels.

Every image is encoded once per model (a format version 3 file), then decoded in the same process
with the float32 synthesis (``exact=False``, what files before version 3 get), with the exact one as
the kernel probe chooses it (``synthesis.kernel_for``), and with each exact kernel forced
(``--kernels``), in rotating order, timing each whole decode (entropy decoding and synthesis; the least
of ``--repeat`` decodes, the least disturbed by other work on the machine; one decode where the first took
over SLOW times the float one). Every exact decode must give the same pixels. Also records each model's
per-layer worst-case sums and their limits, as powers of two, and what the probe measured and chose.

``--dispatch`` runs the same measurement again under other CPU dispatches, each in a child process, in
the same run: ``avx2`` is how torch runs on a CPU without AVX-512 VNNI (``ATEN_CPU_CAPABILITY=avx2`` and
oneDNN off, so that ``torch._int_mm`` takes torch's generic int8 GEMM, as on AMD Zen 2/3 or older Intel).
Prints a table per dispatch and writes JSON (and the tables as Markdown beside it).

    python benchmarks/exact_synthesis.py ../shared/datasets/kodak --models grm/small/vr --dispatch native avx2 \\
        -o results/exact-synthesis/kodak-kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from refcodec import codec, synthesis
from refcodec.bitstream import unpack
from refcodec.images import find_images
from refcodec.models import registry
from refcodec.synthesis import KERNEL_VARIABLE, KERNELS, exact_synthesis

SLOW = 4.0  # a kernel whose first decode takes this many times the float32 one is timed once
DISPATCH = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2"}}  # and torch.backends.mkldnn off (--no-mkldnn)


def decode(model, data: bytes, way: str, repeat: int, bound: float = float("inf")) -> tuple[float, np.ndarray]:
    """Seconds of a whole decode (the least of ``repeat``; one if it passes ``bound``) and its 8-bit pixels.
    ``way``: "float" (the float32 synthesis), "probe" (the exact one, kernels as probed) or a kernel of KERNELS."""
    header, streams = unpack(data)
    os.environ[KERNEL_VARIABLE] = way if way in KERNELS else ""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        x_hat = model.decompress(streams, *header.padded_size, exact=way != "float")
        times.append(time.perf_counter() - start)
        if times[0] > bound:
            break
    os.environ[KERNEL_VARIABLE] = ""
    return min(times), np.asarray(codec.to_image(header, x_hat))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def measure(args: argparse.Namespace, images: list[Path]) -> dict:
    """The report of this process's dispatch: per model, per image and in the mean."""
    ways = ["float", "probe", *args.kernels]
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn": torch.backends.mkldnn.enabled,
              "repeat": args.repeat, "images": [i.name for i in images], "models": {}}  # fmt: skip
    for model_id in args.models or registry.shipped_ids():
        model = registry.load_model(model_id)
        margins = exact_synthesis(model.g_s).margins()
        rows = []
        for n, path in enumerate(images):
            original = np.asarray(codec.to_rgb(codec.load_image(path))[0])
            data = codec.compress(path, model)
            runs = {"float": decode(model, data, "float", args.repeat)}
            for way in (ways[1:] * 2)[n % (len(ways) - 1) :][: len(ways) - 1]:  # rotating order
                runs[way] = decode(model, data, way, args.repeat, SLOW * runs["float"][0])
            pixels = {way: x for way, (_, x) in runs.items() if way != "float"}
            if any(not np.array_equal(x, pixels["probe"]) for x in pixels.values()):
                raise SystemExit(f"exact_synthesis: the kernels decode {path.name} to different pixels: a bug")
            x_float, x_exact = runs["float"][1], pixels["probe"]
            rows.append({"image": path.name, "bytes": len(data), "seconds": {way: t for way, (t, _) in runs.items()},
                         "psnr_float32": psnr(original, x_float), "psnr_exact": psnr(original, x_exact),
                         "values_changed": int((x_float != x_exact).sum()), "values": int(x_exact.size)})  # fmt: skip
        seconds = {way: float(np.mean([r["seconds"][way] for r in rows])) for way in ways}
        report["models"][model_id] = {
            "seconds": seconds, "vs_float": {way: seconds[way] / seconds["float"] for way in ways},
            "psnr_float32": float(np.mean([r["psnr_float32"] for r in rows])), "psnr_exact": float(np.mean([r["psnr_exact"] for r in rows])),
            "values_changed_fraction": sum(r["values_changed"] for r in rows) / sum(r["values"] for r in rows),
            "worst_case_log2": margins, "per_image": rows,
        }  # fmt: skip
    report["probed"] = synthesis.probed()
    return report


def table(report: dict, ways: list[str]) -> str:
    chosen = ", ".join(sorted({p["kernel"] for p in report["probed"]})) or "none"
    lines = [f"dispatch {report['cpu_capability']}, oneDNN {'on' if report['mkldnn'] else 'off'}; the probe chose: {chosen}", "",
             "| model | " + " | ".join(f"decode {w} (s)" for w in ways) + " | exact (probe) vs float | PSNR float32 | PSNR exact | 8-bit values changed |",
             "|---|" + "---|" * (len(ways) + 4)]  # fmt: skip
    for model_id, m in report["models"].items():
        lines.append(f"| {model_id} | " + " | ".join(f"{m['seconds'][w]:.3f}" for w in ways) + f" | {m['vs_float']['probe']:.2f}x | "
                     f"{m['psnr_float32']:.4f} | {m['psnr_exact']:.4f} | {100 * m['values_changed_fraction']:.3f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", type=Path)
    p.add_argument("--models", nargs="+", default=None, help="model ids (default: every shipped model)")
    p.add_argument("--every", type=int, default=1, help="take every n-th image (1: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="decodes per image and synthesis; the least time is kept")
    p.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=KERNELS, help="exact kernels to time forced")
    p.add_argument("--dispatch", nargs="+", default=["native"], choices=["native", *DISPATCH],
                   help="CPU dispatches to measure in this run (others in child processes)")  # fmt: skip
    p.add_argument("--no-mkldnn", action="store_true", help="turn oneDNN off in this process (set by --dispatch avx2)")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    images = find_images(args.images)[:: args.every]
    ways = ["float", "probe", *args.kernels]
    reports = {}
    for dispatch in args.dispatch:
        if dispatch == "native":
            reports[dispatch] = measure(args, images)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            child = [str(args.images), "--threads", str(args.threads), "--repeat", str(args.repeat), "--every", str(args.every),
                     "--kernels", *args.kernels, "--no-mkldnn", "-o", f"{tmp}/r.json"] + ["--models", *args.models] * bool(args.models)  # fmt: skip
            subprocess.run([sys.executable, __file__, *child], env=os.environ | DISPATCH[dispatch], check=True)
            reports[dispatch] = json.loads(Path(tmp, "r.json").read_text())["dispatch"]["native"]
    text = f"{len(images)} images from {args.images}\n\n" + "\n".join(table(r, ways) for r in reports.values())
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"dispatch": reports}, indent=1) + "\n")
        args.output.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
