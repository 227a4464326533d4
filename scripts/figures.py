"""Every figure and table made from the results files, in one command: none is edited by hand.

    python scripts/figures.py

1. the Kodak learning curve, ``results/learning-curve/kodak.json`` and ``kodak.png`` (``learning_curve.py --kodak``):
   the BD-rates of every kept Kodak curve of a shipped MSE model against its training steps;
2. the Kodak BD tables and RD plots in PSNR and in MS-SSIM (``refcodec compare --codecs none``) over every curve of
   ``results/kodak``, anchored on HEVC, WebP, JPEG, every shipped MSE variable-rate model, the retired per-quality
   models and the newest kept release of the MSE model (``bdrate.md``, ``bdrate-ms-ssim.md``, ``rd-*.png``);
3. the README's figure and table, ``results/kodak/current/``: the shipped models and the classical codecs only;
4. the history of releases, ``docs/history.md`` (``scripts/history.py``).

``scripts/release.py`` runs it after a ship. The figures of ``docs/examples`` code images: their commands are
beside them in the docs (``refcodec viz``, ``refcodec compare --visual``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from refcodec.eval import compare
from refcodec.models import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import kodak_plot, kodak_points  # noqa: E402  (a script beside this one)

ROOT = Path(__file__).resolve().parent.parent
KODAK = Path("results/kodak")
LEARNING_CURVE = Path("results/learning-curve")
CLASSICAL = ("jpeg", "webp", "jpeg2000", "avif", "hevc", "jpegxl")  # refcodec compare's curves, in its order
CURRENT = KODAK / "current"  # the README's figure: the shipped models against the classical codecs
CURRENT_CLASSICAL = ("jpeg", "webp", "avif", "hevc", "jpegxl")
ANCHORS = ("hevc", "webp", "jpeg")  # then every shipped MSE variable-rate model, the retired per-quality ones and the newest kept release
RETIRED_ANCHOR = "refcodec grm/small/q1-q4 (0.2.0)"
KEPT = re.compile(r"-(\d+)\.(\d+)\.(\d+)\.json$")  # a kept release's curve: <model id>-<version>.json


def curve_file(model_id: str) -> Path:
    """The Kodak curve ``ship_weights.write_curve`` writes for a shipped model (``<name>-<preset>[-<metric>].json``)."""
    name, preset, rest = model_id.split("/")
    metric = rest.partition("-")[2]
    return KODAK / f"{name}-{preset}{'-' + metric if metric else ''}.json"


def kept_version(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in KEPT.search(path.name).groups())


def compare_curves(folder: Path = KODAK) -> list[Path]:
    """Every curve of ``folder``: the classical codecs, the shipped models, the kept releases (newest first), the rest."""
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("bdrate"))
    classical = [folder / f"{c}.json" for c in CLASSICAL if (folder / f"{c}.json").is_file()]
    kept = sorted((p for p in files if KEPT.search(p.name)), key=kept_version, reverse=True)
    shipped = [p for p in map(curve_file, registry.shipped_ids()) if p.is_file()]
    return classical + shipped + kept + [p for p in files if p not in classical + shipped + kept]


def anchors(curves: list[Path]) -> list[str]:
    """``ANCHORS``, every shipped MSE variable-rate model, the retired per-quality models (where their curve is
    kept) and the newest kept release of the MSE model, where there is one."""
    names = [json.loads(p.read_text())["name"] for p in curves]
    shipped = [f"refcodec {i}" for i in registry.shipped_ids() if i.endswith(f"/{registry.VARIABLE}")]
    mse = [p for p in curves if re.fullmatch(r"grm-small-vr-\d+\.\d+\.\d+\.json", p.name)]
    return list(ANCHORS) + shipped + [RETIRED_ANCHOR] * (RETIRED_ANCHOR in names) + ([json.loads(mse[0].read_text())["name"]] if mse else [])


def current_figure() -> None:
    """Step 3: the README's RD plots and BD table (``refcodec compare``), the shipped models and the classical codecs."""
    shipped = [p for p in map(curve_file, registry.shipped_ids()) if p.is_file()]
    curves = shipped + [KODAK / f"{c}.json" for c in CURRENT_CLASSICAL if (KODAK / f"{c}.json").is_file()]
    with contextlib.redirect_stdout(io.StringIO()):
        compare.main(["--codecs", "none", "-o", str(CURRENT), "--anchor", "hevc,webp", "--curves", *map(str, curves)])


def rebuild() -> None:
    """Steps 1-4, in the repository's results folders."""
    kodak_plot(kodak_points(LEARNING_CURVE, KODAK), LEARNING_CURVE)
    curves = compare_curves()
    command = ["--codecs", "none", "-o", str(KODAK), "--anchor", ",".join(anchors(curves)), "--curves", *map(str, curves)]
    for metric in ("psnr", "ms-ssim"):
        with contextlib.redirect_stdout(io.StringIO()):  # the tables go to bdrate*.md
            compare.main(command + ["--metric", metric])
    current_figure()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "history.py")], check=True)


def main() -> int:
    os.chdir(ROOT)  # the paths above are the repository's
    rebuild()
    print(f"rebuilt {LEARNING_CURVE}/kodak.png, {KODAK}/bdrate*.md and rd-*.png, {CURRENT}/, docs/history.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
