"""Determinism matrix: every image x shipped model, encoded with 1 and 2 threads, each file decoded
with 1 and 2 threads, every encode and every decode in a fresh process; with the CPU model and
instruction set, so that runs on different machines can be compared. A variable-rate model is run at
several qualities, a fractional one among them (``--models grm/small/vr@2.5`` names one).

    python scripts/determinism.py ../shared/datasets/kodak -o results/reliability
    python scripts/determinism.py ../shared/datasets/kodak --compare other-machine/determinism.json

Passes when, for every (image, model), both encoders wrote the same bytes and all four
(encoder threads, decoder threads) combinations decoded the same pixels, and, with ``--compare``,
when every file that is byte-identical to the other machine's decoded to the same pixels there
(encoders may round a latent differently on another machine; a file decodes everywhere to its own
pixels). Writes ``determinism.json`` (the machine; per model, per image: file hash, pixel hash of
each combination) and ``determinism.md`` (a table per model); exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from refcodec import codec
from refcodec.models import registry
from refcodec.images import find_images

THREADS = (1, 2)
VARIABLE_QUALITIES = (1.0, 2.5, 8.0)
INSTRUCTION_SETS = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2"}  # fmt: skip


def machine() -> dict:
    """The CPU model, its vector instruction sets (``/proc/cpuinfo`` flags), the kernels torch picked, the platform."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first core's
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"cpu": name, "instruction_sets": sorted(flags & INSTRUCTION_SETS), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip


def compare(report: dict, other: dict) -> dict:
    """Per model: images coded on both machines, how many files are byte-identical, and how many of
    those decoded to the same pixels (must be all); pixels are compared for the 1-thread encode and decode."""
    out = {"other_machine": other.get("machine"), "models": {}, "failures": 0}
    for model_id, mine in report["models"].items():
        theirs = other.get("models", {}).get(model_id, {}).get("per_image", {})
        common = sorted(set(mine["per_image"]) & set(theirs))
        same_file = [i for i in common if mine["per_image"][i]["file_sha256"]["1"] == theirs[i]["file_sha256"]["1"]]
        same_pixels = [i for i in same_file if mine["per_image"][i]["pixels_sha256"]["enc1-dec1"] == theirs[i]["pixels_sha256"]["enc1-dec1"]]
        out["models"][model_id] = {"images": len(common), "same_bytes": len(same_file), "same_pixels_of_same_bytes": len(same_pixels)}
        out["failures"] += len(same_file) - len(same_pixels)
    return out


def load(ref: str):
    """The model of a reference: a model id, or ``id@quality`` for a variable-rate model at that quality."""
    model_id, _, quality = ref.partition("@")
    return registry.load_model(model_id, float(quality) if quality else registry.DEFAULT_QUALITY)


def shipped_refs() -> list[str]:
    """Every shipped model; a variable-rate one at each of ``VARIABLE_QUALITIES``."""
    refs = []
    for model_id in registry.shipped_ids():
        variable = registry.read_config(registry.weights_path(model_id)).get("flags", {}).get("levels", 0)
        refs += [f"{model_id}@{q:g}" for q in VARIABLE_QUALITIES] if variable else [model_id]
    return refs


def child_encode(models: list[str], images: list[Path], out: Path) -> None:
    for model_id in models:
        model = load(model_id)
        for image in images:
            path = out / model_id.replace("/", "-") / (image.stem + ".rfc")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(codec.compress(image, model))


def child_decode(models: list[str], folder: Path) -> dict:
    """sha256 of the decoded pixels of every file, by model and image."""
    hashes = {}
    for model_id in models:
        model = load(model_id)
        for path in sorted((folder / model_id.replace("/", "-")).glob("*.rfc")):
            image = codec.decompress(path.read_bytes(), model)
            hashes.setdefault(model_id, {})[path.stem] = hashlib.sha256(image.tobytes()).hexdigest()
    return hashes


def spawn(role: str, threads: int, models: list[str], args: list[str]) -> str:
    cmd = [sys.executable, __file__, "--child", role, "--threads", str(threads), "--models", *models, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"determinism: {role} with {threads} thread(s) failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def file_hashes(folder: Path) -> dict:
    return {p.parent.name + "/" + p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*/*.rfc"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="?", type=Path)
    p.add_argument("--models", nargs="+", default=None, help="model ids, or id@quality (default: every shipped model)")
    p.add_argument("-o", "--output", type=Path, help="folder for determinism.json and determinism.md")
    p.add_argument("--every", type=int, default=1, help="take every n-th image (1: all)")
    p.add_argument("--compare", type=Path, help="another machine's determinism.json: same files must give the same pixels")
    p.add_argument("--child", choices=["encode", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--images-list", nargs="*", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    models = args.models or shipped_refs()
    if args.child:
        torch.set_num_threads(args.threads)
        if args.child == "encode":
            child_encode(models, args.images_list, args.folder)
        else:
            print(json.dumps(child_decode(models, args.folder)))
        return

    images = find_images(args.images)[:: args.every]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {t: Path(tmp) / f"enc{t}" for t in THREADS}
        for t, folder in folders.items():
            print(f"encoding {len(images)} images x {len(models)} models with {t} thread(s)", flush=True)
            spawn("encode", t, models, ["--folder", str(folder), "--images-list", *map(str, images)])
        files = {t: file_hashes(folder) for t, folder in folders.items()}
        pixels = {}
        for te, folder in folders.items():
            for td in THREADS:
                print(f"decoding the {te}-thread files with {td} thread(s)", flush=True)
                pixels[f"enc{te}-dec{td}"] = json.loads(spawn("decode", td, models, ["--folder", str(folder)]).splitlines()[-1])

    report = {"machine": machine(), "images": str(args.images), "threads": list(THREADS), "models": {}}
    failures = 0
    for model_id in models:
        key = model_id.replace("/", "-")
        rows = {}
        for image in images:
            name = f"{key}/{image.stem}"
            combos = {c: pixels[c][model_id][image.stem] for c in pixels}
            same_bytes = len({files[t][name] for t in THREADS}) == 1
            same_pixels = len(set(combos.values())) == 1
            failures += not (same_bytes and same_pixels)
            rows[image.stem] = {"file_sha256": {str(t): files[t][name] for t in THREADS}, "pixels_sha256": combos,
                                "same_bytes": same_bytes, "same_pixels": same_pixels}  # fmt: skip
        report["models"][model_id] = {
            "images": len(rows),
            "same_bytes": sum(r["same_bytes"] for r in rows.values()),
            "same_pixels": sum(r["same_pixels"] for r in rows.values()),
            "per_image": rows,
        }
    if args.compare:
        report["compared"] = compare(report, json.loads(args.compare.read_text()))
        failures += report["compared"]["failures"]
    report["failures"] = failures
    m = report["machine"]
    lines = [f"Determinism matrix: {len(images)} images from {args.images}, encoders and decoders with "
             f"{' and '.join(map(str, THREADS))} threads, each in a fresh process; {m['cpu']} ({m['cores']} cores; "
             f"{', '.join(m['instruction_sets'])}; torch {m['torch']}, kernels {m['torch_cpu_capability']})\n",
             "| model | images | same bytes (1 vs 2 encoder threads) | same pixels (all 4 combinations) |",
             "|---|---|---|---|"]  # fmt: skip
    for model_id, row in report["models"].items():
        lines.append(f"| {model_id} | {row['images']} | {row['same_bytes']}/{row['images']} | {row['same_pixels']}/{row['images']} |")
    if args.compare:
        other = report["compared"]["other_machine"] or {}
        lines += [f"\nAgainst {args.compare} ({other.get('cpu', 'unknown CPU') if isinstance(other, dict) else other}):\n",
                  "| model | images on both | same bytes | same pixels, of the same bytes |", "|---|---|---|---|"]  # fmt: skip
        for model_id, row in report["compared"]["models"].items():
            lines.append(f"| {model_id} | {row['images']} | {row['same_bytes']}/{row['images']} | "
                         f"{row['same_pixels_of_same_bytes']}/{row['same_bytes']} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "determinism.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.output / "determinism.md").write_text(table)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
