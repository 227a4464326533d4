"""The history of releases, docs/history.md, made from the results files (never edited by hand).

    python scripts/history.py            # writes docs/history.md
    python scripts/history.py --check    # exits 1 where docs/history.md is not what it would write

Its sources: the kept Kodak curves of past releases (``results/kodak/*.json`` named "refcodec <model id>
(<version>)", ``scripts/release.py``), the shipped models' cards and the release that shipped their weights
(git: the version at the last commit that changed them), ``weights/replaced.json`` and ``retired.json``
(which releases decode which weights), the ship gate's verdicts (``results/learning-curve/gate-log.json``)
and the Kodak learning curve (``results/learning-curve/kodak.json``). BD-rates are
``learning_curve.bd_rates``'s, against ``results/kodak/webp.json`` and ``hevc.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from refcodec.eval.bdrate import in_metric, load_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import bd_rates  # noqa: E402  (scripts beside this one)
from release import INIT, ROOT, git, version_of, weights_file  # noqa: E402

PAGE = Path("docs/history.md")
KODAK, LEARNING_CURVE, WEIGHTS = Path("results/kodak"), Path("results/learning-curve"), Path("src/refcodec/models/weights")
KEPT_NAME = re.compile(r"^refcodec (\S+) \((\d+\.\d+\.\d+)\)$")  # a kept release's curve
STEPS = re.compile(r"\(([\d,]+) steps\)")
ANCHORS = {"webp": "WebP", "hevc": "HEVC"}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def metric_of(model_id: str) -> str:
    """The quality axis a model is judged on: MS-SSIM for a model trained for it, else PSNR."""
    return "ms-ssim" if model_id.endswith("-ms-ssim") else "psnr"


def shipped_in() -> dict[str, str]:
    """{shipped model id: the release that shipped its weights}: the working tree's version where they differ
    from HEAD's, else the version at the last commit that changed them."""
    releases = {}
    for card in sorted((ROOT / WEIGHTS).glob("*.json")):
        if "evaluation" not in (model := json.loads(card.read_text())):
            continue
        path = str(weights_file(model["id"]))
        last = git("log", "-1", "--format=%H", "--", path).stdout.strip()
        changed = not last or git("diff", "--quiet", "HEAD", "--", path).returncode
        releases[model["id"]] = version_of((ROOT / INIT).read_text() if changed else git("show", f"{last}:{INIT.as_posix()}").stdout)
    return releases


def learning_curve_steps(root: Path) -> dict[str, int]:
    """{a learning-curve point's results, as JSON: its steps} (``kodak-<model>-<steps>.json``)."""
    points = {}
    for path in (root / LEARNING_CURVE).glob("kodak-*.json"):
        if m := re.search(r"-(\d+)\.json$", path.name):
            points[json.dumps(json.loads(path.read_text())["results"])] = int(m.group(1))
    return points


def shipments(root: Path, shipped: dict[str, str]) -> list[dict]:
    """Every release's new weights, oldest first: {version, id, steps, report (its Kodak curve)}, from the kept
    curves (steps from their description, else from the learning-curve point of the same curve) and the cards
    of the ``shipped`` models ({id: release})."""
    points, rows = learning_curve_steps(root), []
    for path in sorted((root / KODAK).glob("*.json")):
        report = json.loads(path.read_text())
        if isinstance(report, dict) and (m := KEPT_NAME.match(str(report.get("name", "")))):
            steps = STEPS.search(report.get("description", ""))
            steps = int(steps.group(1).replace(",", "")) if steps else points.get(json.dumps(report["results"]))
            rows.append({"version": m.group(2), "id": m.group(1), "steps": steps, "report": report, "source": str(path)})
    for model_id, version in shipped.items():
        card = json.loads((root / WEIGHTS / f"{model_id.replace('/', '-')}.json").read_text())
        measured = card["evaluation"]["qualities"]
        report = {"qualities": [q["quality"] for q in measured], "results": {k: [q[k] for q in measured] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")}}
        rows.append({"version": version, "id": model_id, "steps": card["training"]["steps"], "report": report, "source": model_id, "shipped": True})
    return sorted(rows, key=lambda r: (version_key(r["version"]), r["id"]))


def last_releases(root: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({model id: the last release of each set of its weights a later release replaced}, {retired model: its last
    release}, per-quality models named as their kept curve names them, grm/small/q1 ... q4 as grm/small/q1-q4), from
    ``replaced.json`` and ``retired.json``."""
    replaced, qualities = {}, {}
    for entry in json.loads((root / WEIGHTS / "replaced.json").read_text()).values():
        replaced.setdefault(entry["model"], []).append(entry["release"])
    for model_id, entry in json.loads((root / WEIGHTS / "retired.json").read_text()).items():
        prefix, quality = m.groups() if (m := re.fullmatch(r"(.+)/q(\d+)", model_id)) else (model_id, None)
        qualities.setdefault((prefix, entry["release"]), []).append(quality)
    retired = {prefix if None in q else f"{prefix}/q{min(q, key=int)}" + f"-q{max(q, key=int)}" * (len(q) > 1): release
               for (prefix, release), q in qualities.items()}  # fmt: skip
    return replaced, retired


def decoded_by(row: dict, replaced: dict[str, list[str]], retired: dict[str, str]) -> str:
    """The releases that decode the files of a row's weights: from its own to the last that shipped them."""
    if row.get("shipped"):
        return f"{row['version']} (shipped)"
    later = [v for v in replaced.get(row["id"], []) + [retired.get(row["id"], "")] if v and version_key(v) >= version_key(row["version"])]
    last = min(later, key=version_key, default=None)
    return row["version"] if last in (None, row["version"]) else f"{row['version']}-{last}"


def gate_of(row: dict, verdicts: list[dict]) -> dict | None:
    """The gate verdict that shipped a row's weights (same model and steps), if the log has one."""
    return next((v for v in verdicts if v["shipped"] and v["id"] == row["id"] and v["steps"] == row["steps"]), None)


def set_name(path: str) -> str:
    """A validation folder as the tables name it: ../shared/datasets/photos/val -> photos/val."""
    return "/".join(Path(path).parts[-2:])


def percent(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:+.1f}%"


def release_table(root: Path, rows: list[dict], verdicts: list[dict]) -> list[str]:
    """The table of releases: model, steps, Kodak range and BD-rates, the gate, who decodes it, what changed."""
    anchors = {name: load_curve(root / KODAK / f"{name}.json") for name in ANCHORS}
    replaced, retired = last_releases(root)
    versions = sorted({r["version"] for r in rows}, key=version_key)
    lines = ["| release | model | steps | Kodak bpp | Kodak PSNR | vs WebP | vs HEVC | gate: BD-rate vs the shipped model | files decoded by | change |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    seen = set()
    for row in rows:
        metric, results = metric_of(row["id"]), row["report"]["results"]
        bd = [percent(bd_rates(in_metric(anchors[n], metric), row["report"], row["source"], metric)[0]) for n in ANCHORS]
        if metric != "psnr":
            bd = [f"{b} (MS-SSIM)" for b in bd]
        verdict = gate_of(row, verdicts)
        gate = ", ".join(f"{percent(v['candidate_vs_shipped'])} {set_name(s)}" for s, v in verdict["validation"].items()) if verdict else ""
        earlier = [v for v in versions if version_key(v) < version_key(row["version"])]
        gone = sorted(m for m, v in retired.items() if earlier and v == earlier[-1])
        change = ["replaces the weights before it" if row["id"] in seen else "new model"] * bool(earlier) + [f"retires {', '.join(gone)}"] * bool(gone)
        seen.add(row["id"])
        steps = f"{row['steps']:,}" if row["steps"] else ""
        lines.append(f"| {row['version']} | `{row['id']}` | {steps} | {min(results['bpp']):.3f}-{max(results['bpp']):.3f} | "
                     f"{min(results['psnr-rgb']):.2f}-{max(results['psnr-rgb']):.2f} dB | {bd[0]} | {bd[1]} | {gate} | "
                     f"{decoded_by(row, replaced, retired)} | {'; '.join(change)} |")  # fmt: skip
    return lines


def gate_table(rows: list[dict], verdicts: list[dict]) -> list[str]:
    """Every gate verdict, in the order of the log: the candidate, its BD-rates per validation set, its release."""
    sets = list(dict.fromkeys(s for v in verdicts for s in v["validation"]))
    lines = ["| date | candidate | steps | " + " | ".join(f"{set_name(s)}: vs shipped / WebP / HEVC" for s in sets) + " | shipped |",
             "|---|---|---|" + "---|" * len(sets) + "---|"]  # fmt: skip
    for v in verdicts:
        cells = [" / ".join(percent(v["validation"].get(s, {}).get(f"candidate_vs_{k}")) for k in ("shipped", "webp", "hevc")) for s in sets]
        release = next((r["version"] for r in rows if gate_of(r, [v]) is v), None)
        shipped = f"release {release}" if release else "yes" if v["shipped"] else "no"
        lines.append(f"| {v['date']} | `{v['id']}` | {v['steps']:,} | " + " | ".join(cells) + f" | {shipped} |")
    return lines


def learning_curve_table(root: Path) -> list[str]:
    """The Kodak BD-rates of the learning curve's points (``kodak.json``), by steps."""
    points = json.loads((root / LEARNING_CURVE / "kodak.json").read_text())["points"]
    lines = ["| steps | curve | vs WebP | vs HEVC | vs WebP, qualities 1-4 | vs HEVC, qualities 1-4 |", "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['steps']:,} | `{p['file']}` | {percent(p['vs_webp'])} | {percent(p['vs_hevc'])} | "
                     f"{percent(p.get('vs_webp_q1_4'))} | {percent(p.get('vs_hevc_q1_4'))} |")  # fmt: skip
    return lines


def page(root: Path, shipped: dict[str, str]) -> str:
    """docs/history.md from the files under ``root`` (a checkout's layout) and ``shipped`` ({model id: release})."""
    rows = shipments(root, shipped)
    verdicts = json.loads((root / LEARNING_CURVE / "gate-log.json").read_text())
    return "\n".join([
        "# History of releases",
        "",
        "Part of [refcodec](../README.md)'s documentation. Made by `python scripts/history.py` from the results files;",
        "`tests/test_history.py` checks that it is up to date.",
        "",
        "## Releases",
        "",
        "One row for each release that shipped new weights. Kodak: the 24 images coded to real files at every quality of",
        "the model (its card, or the curve kept when a later release replaced it, `results/kodak/<model>-<release>.json`).",
        "BD-rates are over the model's whole range (`refcodec.eval.bdrate`, Akima), in PSNR, or in MS-SSIM (dB) for a",
        "model trained for MS-SSIM. The gate column gives the BD-rate on the validation sets against the model the",
        "candidate was judged against (`results/learning-curve/gate-log.json`). A file names the weights that wrote it;",
        "the releases in \"files decoded by\" decode it, later ones refuse it in one line that names them",
        "(`weights/replaced.json`, `weights/retired.json`; see [File compatibility](compatibility.md)).",
        "",
        *release_table(root, rows, verdicts),
        "",
        "## Every ship-gate verdict",
        "",
        "BD-rate of each candidate on the validation sets (8 images each) against the shipped model it was judged",
        "against, WebP and HEVC; in MS-SSIM (dB) for a model trained for MS-SSIM, else in PSNR",
        "(`results/learning-curve/gate-log.json`).",
        "",
        *gate_table(rows, verdicts),
        "",
        "## Kodak BD-rate by training steps",
        "",
        "The learning curve's points (`results/learning-curve/kodak.json`, drawn in `kodak.png`): each kept Kodak curve",
        "against WebP and HEVC in PSNR, over its whole range and over qualities 1-4.",
        "",
        *learning_curve_table(root),
        "",
    ])  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help=f"exit 1 where {PAGE} differs from what this would write")
    args = p.parse_args(argv)
    text = page(ROOT, shipped_in())
    if args.check:
        same = (ROOT / PAGE).is_file() and (ROOT / PAGE).read_text() == text
        print(f"{PAGE} is {'up to date' if same else 'out of date: run python scripts/history.py'}")
        return 0 if same else 1
    (ROOT / PAGE).write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
