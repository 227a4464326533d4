"""Conformance files: small .rfc files that every machine must decode to known pixels.

Like a video standard's conformance bitstreams: ``tests/conformance/`` holds files of generated
images (a few odd sizes, one grayscale) for every shipped model, a variable-rate one at several
qualities, fractional ones among them, and ``MANIFEST.json`` maps each file
name to the sha256 of its decoded image as RGB bytes in row-major order
(``image.convert("RGB").tobytes()``). ``tests/test_conformance.py`` decodes them all on every test run.

    python scripts/conformance.py            # check every file, then add those of new models
    python scripts/conformance.py --check    # only check

Files are written once and kept: a regeneration adds the files of models (id and weights hash) that
have none (a newly shipped model, or new weights shipped under an old id: their names then carry the
weights hash) and never re-encodes an existing file. It refuses, changing nothing, when an existing
file decodes to other pixels than the manifest says: that is a format break, which needs a new format
version instead. Files of a retired model or of replaced weights stay; the test expects them to be
refused with the documented one-line message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from refcodec import codec
from refcodec.bitstream import BitstreamError, read_header
from refcodec.errors import RefcodecError
from refcodec.models import registry
from refcodec.sample import sample_image

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "conformance"
MANIFEST = "MANIFEST.json"
MAX_BYTES = 64 * 1024


def pattern(width: int, height: int) -> Image.Image:
    """Rings, stripes and a colour ramp: edges at every angle and flat areas, from formulas only."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = np.hypot(xx - width / 3, yy - height / 2)
    arr = np.stack([128 + 100 * np.sin(r / 3), 255 * xx / max(width - 1, 1), 128 + 100 * np.sign(np.sin((xx + 2 * yy) / 5))], -1)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")


VARIABLE_QUALITIES = (0.0, 1.5, 3.0, 5.25, 8.0)  # a variable-rate model's files: both ends, and fractional qualities


def codings(model_id: str, levels: int) -> dict[str, tuple[float, Image.Image]]:
    """The files of a model, by name stem, each with its quality and image: two odd-sized RGB images at the
    default quality, or at every quality of ``VARIABLE_QUALITIES`` for a variable-rate model; for the default
    model also a grayscale image and one large enough for the synthesis to run in several blocks of positions
    in each of its tiles."""
    small = {"scene-131x97": sample_image(131, 97, seed=1), "pattern-67x45": pattern(67, 45)}
    qualities = VARIABLE_QUALITIES if levels else (registry.DEFAULT_QUALITY,)
    out = {(f"q{q:g}-{stem}" if levels else stem): (q, image) for q in qualities for stem, image in small.items()}
    if model_id == registry.resolve_id(registry.DEFAULT_MODEL, registry.DEFAULT_QUALITY):
        default = f"q{registry.DEFAULT_QUALITY:g}-" if levels else ""
        out[f"{default}gray-53x70"] = (registry.DEFAULT_QUALITY, sample_image(53, 70, seed=2).convert("L"))
        out[f"{default}scene-515x387"] = (registry.DEFAULT_QUALITY, sample_image(515, 387, seed=3))
    return out


def pixels_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def check(folder: Path, manifest: dict[str, str]) -> list[str]:
    """One line per file that does not decode to its manifest's pixels (files of retired models and of
    replaced weights must be refused)."""
    failures = []
    for name, expected in sorted(manifest.items()):
        path = folder / name
        if not path.is_file():
            failures.append(f"{name}: missing")
            continue
        data = path.read_bytes()
        header = read_header(data)
        if registry.retired_reason(header.model, header.weights_hash):
            try:
                codec.decompress(data)
                failures.append(f"{name}: a file of retired or replaced weights decoded instead of being refused")
            except BitstreamError:
                pass
            continue
        try:
            got = pixels_sha256(codec.decompress(data))
        except RefcodecError as e:
            failures.append(f"{name}: {e}")
            continue
        if got != expected:
            failures.append(f"{name}: decodes to pixels {got[:16]}..., the manifest says {expected[:16]}...")
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=FOLDER)
    p.add_argument("--check", action="store_true", help="only check the files against the manifest")
    args = p.parse_args()
    path = args.folder / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    failures = check(args.folder, manifest)
    if failures:
        print(f"conformance: {len(failures)} of {len(manifest)} files do not decode to their manifest's pixels "
              "(a format break: keep these files and bump the format version); nothing written:", file=sys.stderr)  # fmt: skip
        print("\n".join(failures), file=sys.stderr)
        return 1
    print(f"conformance: all {len(manifest)} files decode to their manifest's pixels")
    if args.check:
        return 0
    args.folder.mkdir(parents=True, exist_ok=True)
    added = 0
    covered = {(h.model, h.weights_hash) for h in (read_header((args.folder / name).read_bytes()) for name in manifest)}
    for model_id in registry.shipped_ids():
        model = registry.load_model(model_id)
        if (model_id, model.weights_hash()) in covered:
            continue
        for stem, (quality, image) in codings(model_id, model.levels).items():
            name = f"{model_id.replace('/', '-')}-{stem}.rfc"
            if name in manifest:  # taken by weights that this ship replaced: name these by their hash
                name = f"{model_id.replace('/', '-')}-{model.weights_hash().hex()[:8]}-{stem}.rfc"
            data = codec.compress(image, model, quality=quality if model.levels else None)
            if len(data) > MAX_BYTES:
                raise SystemExit(f"conformance: {name} is {len(data)} bytes, over {MAX_BYTES}")
            (args.folder / name).write_bytes(data)
            manifest[name] = pixels_sha256(codec.decompress(data))
            added += 1
            print(f"added {name}: {len(data)} bytes")
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    total = sum((args.folder / name).stat().st_size for name in manifest)
    print(f"conformance: {len(manifest)} files ({added} new), {total} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
