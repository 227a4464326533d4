"""The ship gate: a candidate replaces the shipped model only if it is better on the validation sets.

    python scripts/ship_gate.py runs/continue/weights.safetensors                  # judge only
    python scripts/ship_gate.py runs/continue/weights.safetensors --ship --run runs/continue

The candidate is judged as it would ship (float16, ``registry.save``) with real bitstreams
(``refcodec eval``'s ``evaluate_image``) at ``--qualities`` (at least five, spanning 1-8) on the
first ``--limit`` images of each validation set (``photos/val`` and ``bsds500/val``; never
Kodak). The shipped model is measured the same way: the shipped variable-rate model of the candidate's
preset (``grm/medium/vr``; before it ships, ``grm/small/vr``, which it is grown from), or before one exists the fixed-rate ``grm/small/q1``-``q4``. BD-rate (``eval.bdrate``: Akima,
over the common PSNR range) of the candidate against the shipped model must be below 0 on every
set. The whole curve counts too (a wider model, issue 36): the candidate's top quality must reach at least
the shipped model's top PSNR, and over the common range below the shipped model's top quality it may lose
at most BELOW_TOP_LIMIT (1%) BD-rate, so that a gain at the top does not buy a loss below it. The gate
also reports both models' BD-rates against WebP and HEVC (x265) on each set, with the share of the
union of the two curves' PSNR ranges that each BD-rate covers. A
candidate trained for MS-SSIM (``--metric ms-ssim``) is judged on MS-SSIM in dB instead, against the
shipped ``grm/small/vr-ms-ssim``, or before one exists against the MSE model it is fine-tuned from.

Curves that do not change (the shipped model, WebP, HEVC) are cached in ``results/gate/cache``
under a hash of the weights, images and settings. Every verdict goes to
``results/gate/verdicts.json``. With ``--ship``, an accepted candidate is written into the
package by ``scripts/ship_weights.py`` (which measures Kodak for the model card and the README:
reported, never used to choose). Every judged candidate, shipped or not, is a point of the
learning-curve log ``results/learning-curve/gate-log.json``, and the history page ``docs/history.md`` is remade
(``scripts/history.py``) where that log is the repository's. The first variable-rate model to pass retires the
per-quality ``grm/small`` and ``joint/small`` models (``registry.retire``: their files are then
refused with a line that names the release that decodes them). Shipping also removes the carried run
(``training/``, see ``scripts/continue_training.py``) that it supersedes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import refcodec
from refcodec.eval import bdrate, compare
from refcodec.eval.evaluate import evaluate_image, summarize
from refcodec.images import find_images, read_rgb
from refcodec.models import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship_weights import release_commit  # noqa: E402  (a script beside this one)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("results/gate")
CURVE = Path("results/learning-curve/gate-log.json")  # every judged candidate: the learning curve
ANCHORS = ("webp", "hevc")
DEFAULT_QUALITIES = [1.0, 2.75, 4.5, 6.25, 8.0]
BELOW_TOP_LIMIT = 1.0  # %: a candidate may not lose more BD-rate than this below the shipped model's top quality


def shipped_models(metric: str = "mse", preset: str = "small") -> list:
    """The models a candidate must beat: the shipped variable-rate model of its metric and preset, or before
    one exists the small one it was grown from (issue 36); before a variable-rate model of its metric exists,
    for MS-SSIM the MSE model it is fine-tuned from (section 5.1), for MSE the fixed-rate grm/small ones."""
    for m in dict.fromkeys([metric, "mse"]):
        for p in dict.fromkeys([preset, "small"]):
            variable = registry.model_id("grm", p, None, m)
            if variable in registry.shipped_ids():
                return [variable]
    return [i for i in registry.shipped_ids() if i.startswith("grm/small/q") and i[len("grm/small/q"):].isdigit()]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(name: str, key: str, compute) -> dict:
    path = RESULTS / "cache" / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    return result


def model_curve(weights: str, qualities: list[float | None], files: list[Path], label: str) -> dict:
    """Mean bpp/PSNR/MS-SSIM per quality, real bitstreams, in CompressAI's results layout."""
    results, per_image = {}, {}
    model = registry.load_model(weights)
    for q in qualities:
        model.use_quality(q)
        rows = [evaluate_image(model, f, estimate=False) for f in files]
        for k, v in summarize(rows).items():
            results.setdefault(k, []).append(v)
        per_image[f"{model.id}@{model.quality}"] = rows
        ms_ssim = results["ms-ssim-rgb"][-1]
        print(f"  {label} {model.id} q={model.quality}: {results['bpp'][-1]:.4f} bpp, PSNR {results['psnr-rgb'][-1]:.2f} dB, "
              f"MS-SSIM {ms_ssim:.4f} ({bdrate.msssim_db(ms_ssim):.2f} dB)", flush=True)  # fmt: skip
    return {"name": label, "qualities": qualities, "results": results, "per_image": per_image}


def anchor_curve(name: str, files: list[Path], threads: int) -> dict:
    """A classical codec's default sweep on the images (``refcodec compare``)."""
    images = {f.name: read_rgb(f) for f in files}
    classical = compare.CODECS[name](threads)
    return compare.sweep(classical, images, classical.sweep)


def judge(candidate: Path, sets: list[Path], qualities: list[float], limit: int, threads: int) -> dict:
    """Curves and BD-rates of the candidate (as float16) and the shipped model on every set, in the
    candidate's metric (PSNR, or MS-SSIM in dB)."""
    model = registry.load_model(str(candidate))
    metric = model.config.get("metric", "mse")
    axis = "ms-ssim" if metric == "ms-ssim" else "psnr"  # the deltas' quality axis (bdrate.in_metric)
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "candidate.safetensors"  # what would ship
        registry.save(model, half, model.config, dtype=torch.float16)
        as_shipped = registry.load_model(str(half))
        shipped = shipped_models(metric, model.config.get("preset", "small"))
        verdict = {"candidate": str(candidate), "candidate_hash": as_shipped.weights_hash().hex(),
                   "candidate_steps": model.config.get("steps"), "metric": metric, "shipped": shipped, "qualities": qualities,
                   "limit": limit, "sets": {}}  # fmt: skip
        for folder in sets:
            files = find_images(folder)[:limit]
            names = [f.name for f in files]
            content = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]  # the cache key: what the images are
            print(f"{folder}: {len(files)} images", flush=True)
            cand = model_curve(str(half), qualities, files, "candidate")
            reference = [registry.load_model(i) for i in shipped]
            ref_qualities = qualities if reference[0].levels else [None]
            ref = _cached("shipped", _key([m.weights_hash().hex() for m in reference], content, ref_qualities),
                          lambda: _merge([model_curve(i, ref_qualities, files, "shipped") for i in shipped]))  # fmt: skip
            curves = {"candidate": bdrate.in_metric(bdrate.curve(cand), axis), "shipped": bdrate.in_metric(bdrate.curve(ref), axis)}
            anchors = {a: bdrate.in_metric(bdrate.curve(_cached(a, _key(a, content), lambda a=a: anchor_curve(a, files, threads))), axis)
                       for a in ANCHORS}  # fmt: skip
            shipped_top = sorted(bdrate.rd_points(curves["shipped"])[1])
            verdict["sets"][str(folder)] = {
                "images": names,
                "candidate_vs_shipped": bdrate.delta(curves["shipped"], curves["candidate"]),
                # the whole curve (issue 36): the top, and the range below the shipped model's top quality
                "top": {who: float(max(bdrate.rd_points(c)[1], default=math.nan)) for who, c in curves.items()},
                "candidate_vs_shipped_below_top": bdrate.bd_rate_below(curves["shipped"], curves["candidate"], shipped_top[-2])
                if len(shipped_top) > 1 else math.nan,
                **{f"{who}_vs_{a}": bdrate.delta(anchors[a], curves[who]) for who in curves for a in ANCHORS},
                "candidate": cand["results"],
                "shipped": ref["results"],
            }
    verdict["accepted"] = accepted(verdict["sets"].values())
    return verdict


def accepted(sets) -> bool:
    """The gate's rule on every set: fewer bits than the shipped model over the common range, a top at least as
    high, and at most BELOW_TOP_LIMIT more bits below the shipped model's top quality."""
    return all(math.isfinite(s["candidate_vs_shipped"]["bd_rate"]) and s["candidate_vs_shipped"]["bd_rate"] < 0
               and s["top"]["candidate"] >= s["top"]["shipped"]
               and not s["candidate_vs_shipped_below_top"] > BELOW_TOP_LIMIT for s in sets)  # fmt: skip


def _merge(curves: list[dict]) -> dict:
    """One curve from the fixed-rate models' points."""
    results = {}
    for c in curves:
        for k, v in c["results"].items():
            results.setdefault(k, []).extend(v)
    return {"name": "shipped", "qualities": [q for c in curves for q in c["qualities"]], "results": results}


def report(verdict: dict) -> str:
    lines = ["| set | vs shipped | below its top | candidate vs WebP | shipped vs WebP | candidate vs HEVC (range covered) | "
             "shipped vs HEVC (range covered) | top: candidate / shipped |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for folder, s in verdict["sets"].items():
        hevc = [f"{s[k]['bd_rate']:+.1f}% ({100 * s[k]['psnr_overlap']:.0f}%)" for k in ("candidate_vs_hevc", "shipped_vs_hevc")]
        cells = [f"{s[k]['bd_rate']:+.1f}%" for k in ("candidate_vs_shipped",)] + [f"{s.get('candidate_vs_shipped_below_top', math.nan):+.1f}%"]
        cells += [f"{s[k]['bd_rate']:+.1f}%" for k in ("candidate_vs_webp", "shipped_vs_webp")] + hevc
        top = s.get("top", {})
        cells.append(f"{top.get('candidate', math.nan):.2f} / {top.get('shipped', math.nan):.2f}")
        lines.append(f"| {folder} | " + " | ".join(cells) + " |")
    lines.append(f"\n{'ACCEPTED' if verdict['accepted'] else 'REFUSED'}: candidate {verdict['candidate']} "
                 f"({verdict['candidate_steps']} steps) against {', '.join(verdict['shipped'])}, "
                 f"BD-rate in {'MS-SSIM (dB)' if verdict['metric'] == 'ms-ssim' else 'PSNR'}")  # fmt: skip
    return "\n".join(lines)


def curve_point(verdict: dict, config: dict, shipped: bool) -> dict:
    """The learning-curve log's entry of a judged candidate: steps, hours, hardware, validation BD-rates."""
    return {"date": verdict["date"], "id": config["id"], "steps": config.get("steps"), "shipped": shipped,
            "hours": round(config.get("wall_seconds", 0) / 3600, 2), "hardware": config.get("hardware"),
            "validation": {f: {k: s[k]["bd_rate"] for k in ("candidate_vs_webp", "candidate_vs_hevc", "candidate_vs_shipped")}
                           for f, s in verdict["sets"].items()}}  # fmt: skip


def _append(path: Path, entry: dict) -> None:
    entries = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries + [entry], indent=1, allow_nan=True) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidate", type=Path, help="weights of the candidate (a variable-rate model)")
    p.add_argument("--val", nargs="+", type=Path, default=[Path("../shared/datasets/photos/val"), Path("../shared/datasets/bsds500/val")])
    p.add_argument("--qualities", nargs="+", type=float, default=DEFAULT_QUALITIES, help="at least five, spanning 1-8")
    p.add_argument("--limit", type=int, default=8, help="images per validation set (the first, sorted by path)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ship", action="store_true", help="ship an accepted candidate (scripts/ship_weights.py)")
    p.add_argument("--run", type=Path, help="with --ship: the training run folder of the candidate")
    p.add_argument("--eval", default="../shared/datasets/kodak", help="with --ship: images for the model card (reported only)")
    p.add_argument("--recipe", help="with --ship: how the candidate was trained, for the model card (ship_weights.py --recipe)")
    args = p.parse_args(argv)
    if len(args.qualities) < 5 or min(args.qualities) > 1 or max(args.qualities) < 8:
        p.error("--qualities: at least five, spanning 1-8")
    if args.ship and args.run is None:
        p.error("--ship needs --run (the candidate's training run, for the model card)")
    torch.set_num_threads(args.threads)
    start = time.time()
    verdict = judge(args.candidate, args.val, sorted(args.qualities), args.limit, args.threads)
    verdict |= {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.time() - start),
                "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"}  # fmt: skip
    _append(RESULTS / "verdicts.json", verdict)
    print(report(verdict))
    config = registry.read_config(args.candidate)
    shipping = verdict["accepted"] and args.ship
    _append(CURVE, curve_point(verdict, config, shipping))
    if Path.cwd().resolve() == ROOT:  # the repository's log (not a test's folder): the history page lists every verdict
        subprocess.run([sys.executable, str(ROOT / "scripts" / "history.py")], check=True)
    if not verdict["accepted"]:
        return 1
    if shipping:
        subprocess.run([sys.executable, str(Path(__file__).parent / "ship_weights.py"), str(args.run), "--eval", args.eval,
                        "--weights", str(args.candidate), *(["--recipe", args.recipe] if args.recipe else [])], check=True)  # fmt: skip
        fixed = [i for i in registry.shipped_ids() if "/q" in i]  # the per-quality grm and joint models leave the package
        if fixed and not verdict["shipped"][0].endswith(f"/{registry.VARIABLE}"):
            commits = {release_commit(registry.weights_path(i)) for i in fixed}  # HEAD, which must hold each as released
            registry.retire(fixed, refcodec.__version__, commits.pop())
            print(f"retired {', '.join(fixed)} (their files name refcodec {refcodec.__version__}); bump the version")
        carried = ROOT / "training" / (config["id"].replace("/", "-") + ".safetensors")
        if carried.is_file() and registry.read_config(carried).get("steps", 0) <= config.get("steps", 0):
            carried.unlink()  # scripts/continue_training.py's carried run is now the shipped model: it continues from that
            print(f"removed {carried.name} from training/: the next session continues the shipped model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
