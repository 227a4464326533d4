"""A release's bookkeeping, after the ship gate has shipped new weights, in one command.

    python scripts/ship_gate.py runs/candidate.safetensors --ship --run runs/continue --eval ../shared/datasets/kodak
    python scripts/release.py        # then update the README from what it prints, and commit

The release is the shipped model whose weights differ from HEAD's (the commit of the release they
replace, ``ship_weights.release_commit``), or a model HEAD did not ship (a new one, such as the wide
``grm/medium/vr`` grown from ``grm/small/vr``). Run again, it redoes the same steps and changes nothing more:

1. keeps the replaced release's Kodak curve, HEAD's ``results/kodak/<name>-<preset>.json``, as
   ``<model id>-<version>.json`` named "refcodec <model id> (<version>)" (a new model replaces none);
2. bumps the minor version (``src/refcodec/__init__.py``), unless HEAD's was already bumped;
3. writes the new weights' conformance files (``scripts/conformance.py``);
4. keeps the new curve as a learning-curve point, ``results/learning-curve/kodak-<name>-<preset>-<steps>.json``;
5. rebuilds every figure and table of the results (``scripts/figures.py``): the Kodak learning curve, the BD
   tables and plots over every curve, the README's figure of the shipped models and the classical codecs only
   (past releases are in the learning curve), the history of releases;
6. prints what the README takes: the model card's table, the BD-rates of the new and the replaced
   weights over their whole range and over qualities 1-4 (``learning_curve.within``), the steps added.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from refcodec.eval import bdrate
from refcodec.models import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import CURRENT, KODAK, LEARNING_CURVE, anchors, compare_curves, curve_file, rebuild  # noqa: E402  (scripts beside this one)
from learning_curve import LOW_QUALITIES, bd_rates, within  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INIT = Path("src/refcodec/__init__.py")


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def at_head(path: Path) -> str | None:
    """``path`` as HEAD holds it, or None where HEAD has no such file."""
    shown = git("show", f"HEAD:{path.as_posix()}")
    return shown.stdout if shown.returncode == 0 else None


def in_head(path: Path) -> bool:
    """Whether HEAD holds ``path`` (any file, binary weights too: ``at_head`` reads text)."""
    return git("cat-file", "-e", f"HEAD:{path.as_posix()}").returncode == 0


def shipped_release() -> str:
    """The id of the shipped model whose weights the working tree changed or added (what ``ship_gate.py --ship`` wrote)."""
    changed = [i for i in registry.shipped_ids() if not in_head(weights_file(i))
               or git("diff", "--quiet", "HEAD", "--", str(registry.weights_path(i))).returncode]  # fmt: skip
    if len(changed) != 1:
        raise SystemExit("release: " + (f"{', '.join(changed)} all changed; release one model at a time" if changed else
                                        "no shipped weights differ from HEAD's; ship first (scripts/ship_gate.py --ship)"))  # fmt: skip
    return changed[0]


def grown_from(model_id: str) -> str:
    """The shipped model a new one was grown from (issue 36): the preset of the size its config's ``grow``
    records (``models.widen``), of the same name and metric; its training runs may have started from
    each other's carried weights since, so their ``init`` names the new model itself."""
    config = registry.read_config(registry.weights_path(model_id))
    grow = config.get("grow", {})
    preset = registry.preset_of(grow.get("N"), grow.get("M"))
    origin = preset and registry.model_id(config["name"], preset, None, config.get("metric", "mse"))
    if origin not in registry.shipped_ids():
        raise SystemExit(f"release: {model_id} is a new model grown from no shipped one (its config's grow: {config.get('grow')})")
    return origin


def weights_file(model_id: str) -> Path:
    """A shipped model's weights, relative to the repository (as git names them)."""
    return registry.weights_path(model_id).relative_to(ROOT)


def version_of(init_text: str) -> str:
    return re.search(r'^__version__ = "([^"]+)"', init_text, re.M).group(1)


def bumped(version: str) -> str:
    """The next minor version: 0.10.0 -> 0.11.0."""
    major, minor, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor + 1}.0"


def keep_replaced(model_id: str, version: str, steps: int) -> Path:
    """Step 1: HEAD's curve of ``model_id`` (the release being replaced), named for its version."""
    old = at_head(curve_file(model_id))
    if old is None:
        raise SystemExit(f"release: HEAD has no {curve_file(model_id)} to keep")
    curve = json.loads(old)
    curve["name"] = f"refcodec {model_id} ({version})"
    curve["description"] = f"{model_id} of release {version} ({steps:,} steps): shipped weights, real bitstreams, from the model cards of {model_id}"
    out = KODAK / f"{model_id.replace('/', '-')}-{version}.json"
    out.write_text(json.dumps(curve, indent=2) + "\n")
    return out


def bd_rows(curves: list[Path], targets: list[Path], metric: str = "psnr", against: tuple[str, ...] = ("jpeg", "webp", "hevc")) -> list[str]:
    """Markdown lines: each target's BD-rate in ``metric`` against ``against``, over its whole range and over
    ``LOW_QUALITIES``."""
    loaded = {p.stem: json.loads(p.read_text()) for p in curves}
    lines = []
    for target in targets:
        report = loaded[target.stem]
        cells = []
        for name in against:
            full, low = bd_rates(bdrate.in_metric(bdrate.curve(loaded[name], name), metric), report, str(target), metric)
            cells.append(f"{name} {full:+.1f}% (q{LOW_QUALITIES[0]}-{LOW_QUALITIES[1]}: {low:+.1f}%)")
        psnr = bdrate.in_metric(bdrate.curve(report, str(target)), metric).psnr
        lines.append(f"- {report['name']} ({psnr.min():.1f}-{psnr.max():.1f} dB): " + ", ".join(cells))
    return lines


def card_rows(card: dict) -> list[str]:
    """The README's rows of a model card (quality, bpp, PSNR, MS-SSIM, encode, decode, file vs estimate)."""
    return [f"| {p['quality']:g} | {p['bpp']:.3f} | {p['psnr-rgb']:.2f} dB | {p['ms-ssim-rgb']:.4f} | {p['encoding_time']:.2f} | "
            f"{p['decoding_time']:.2f} | {100 * p['estimate_gap']:+.2f}% |" for p in card["evaluation"]["qualities"]]  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-conformance", action="store_true", help="leave step 3 for later (it codes a few small images)")
    args = p.parse_args(argv)
    os.chdir(ROOT)  # the paths above are the repository's
    model_id = shipped_release()
    card_path = registry.weights_path(model_id).with_suffix(".json")
    new_card, old_text = json.loads(card_path.read_text()), at_head(card_path.relative_to(ROOT))
    steps = new_card["training"]["steps"]
    released = version_of(at_head(INIT))
    if old_text is None:  # a new model: the one it was grown from stays shipped, and is what it is measured against
        origin = grown_from(model_id)
        old_steps = json.loads(registry.weights_path(origin).with_suffix(".json").read_text())["training"]["steps"]
        before = curve_file(origin)
        replaced = f"{origin}'s {old_steps:,}, which it was grown from"
    else:
        old_steps = json.loads(old_text)["training"]["steps"]
        before = keep_replaced(model_id, released, old_steps)
        replaced = f"{released}'s {old_steps:,}"
    text = INIT.read_text()
    if version_of(text) == released:
        INIT.write_text(text.replace(f'__version__ = "{released}"', f'__version__ = "{bumped(released)}"'))
    version = version_of(INIT.read_text())
    if not args.skip_conformance:
        if subprocess.run([sys.executable, str(ROOT / "scripts" / "conformance.py")]).returncode:
            raise SystemExit("release: scripts/conformance.py refused (above): steps 3-6 not done")
    point = LEARNING_CURVE / f"kodak-{curve_file(model_id).stem}-{steps}.json"
    point.write_text(curve_file(model_id).read_text())
    rebuild()  # the learning curve, the BD tables and plots, the README's figure, the history (scripts/figures.py)
    curves = compare_curves()
    print(f"\nrelease {version}: {model_id} at {steps:,} steps ({steps - old_steps:,} more than {replaced})")
    print(f"{'kept ' + str(before) if old_text else 'new model'}, wrote {point} and {LEARNING_CURVE}/kodak.png; BD tables in "
          f"{KODAK}/bdrate.md and bdrate-ms-ssim.md; the README's figure and table in {CURRENT}/")  # fmt: skip
    print("\nmodel card (README):\n" + "\n".join(card_rows(new_card)))
    metric = "ms-ssim" if new_card["training"]["metric"] == "ms-ssim" else "psnr"
    print(f"\nBD-rate in {bdrate.METRICS[metric]} (Akima, common range):\n" + "\n".join(bd_rows(curves, [curve_file(model_id), before], metric)))
    print("\nthe README's compare commands take these curves and anchors:")
    print("C=" + " ".join(str(c) for c in curves) + f"\nA='{','.join(anchors(curves))}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
