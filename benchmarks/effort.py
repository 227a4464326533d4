"""Encoder effort on a folder: rate saved by each effort over ``default``, against classical anchors, and encode times.

    OMP_NUM_THREADS=1 python benchmarks/effort.py ../shared/datasets/kodak --model grm -q 1 2 3 4 \\
        --efforts default fast slow --threads 1 --anchors results/kodak/webp.json results/kodak/hevc.json \\
        -o results/effort/kodak

For each image, quality and effort the image is encoded (a real file) and decoded. Every measurement is
cached in OUT-cache/EFFORT.json as soon as it is made (with the effort's refinement steps; a cache of
other steps is not reused), so a killed run resumes where it stopped and runs of different efforts can
go side by side (also of one effort: ``--reverse`` for the second). ``--sweep N ...`` adds levels ``sgaN`` of N steps, to choose the steps of a level.

``--device cuda`` encodes on a GPU (refinement runs on the model's device; each row records its device).
``--measure-only`` writes the caches and no report: it runs where the bench extra (bjontegaard, scipy,
matplotlib) is missing, as on a lent GPU machine, and ``--report-only`` makes the report from the caches here.

The report (OUT.json, OUT.md, OUT.png) covers the images that every effort has at every quality:
the BD-rate of each effort against ``default`` and against each anchor (CompressAI-layout files of
``refcodec compare`` with per-image rows, restricted to the same images), the mean bpp, PSNR and
encode seconds per quality, the saving at equal lambda split into rate and distortion (the change of
bpp, and of lambda * D in bpp, between the two files of one quality: their sum is the change of the RD
objective, eq. 1), every image's rate and PSNR change, and a plot of bits saved against encode time.
The curves and D are the model's metric's: PSNR and D = 255^2 * MSE, or for a model trained for MS-SSIM,
MS-SSIM in dB and D = 1 - MS-SSIM (``refine.distortion``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from refcodec import codec, metrics, refine
from refcodec.images import find_images, read_rgb
from refcodec.models.registry import load_model


def measure(model, image, effort: str) -> dict:
    """One real file: its rate, quality and encode time (the bytes exist when ``compress`` returns, so a
    GPU's work is done by then)."""
    start, cpu = time.perf_counter(), time.process_time()
    data = codec.compress(image, model, effort=effort)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = codec.decompress(data, model).convert("RGB")
    return {"bpp": 8 * len(data) / (image.width * image.height), "psnr": codec.psnr(image, out), "ms_ssim": metrics.ms_ssim(image, out),
            "encode_seconds": seconds, "encode_cpu_seconds": cpu, "steps": refine.EFFORTS[effort],
            "device": next(model.parameters()).device.type}  # fmt: skip


def load_image(path: Path, crop: tuple[int, int] | None):
    image = codec.to_rgb(codec.load_image(path))[0]
    if crop:
        w, h = min(crop[0], image.width), min(crop[1], image.height)
        left, top = (image.width - w) // 2, (image.height - h) // 2
        image = image.crop((left, top, left + w, top + h))
    return image


class Cache:
    """Measurements of one effort, ``{"q|image": row}``, written to disk after each one."""

    def __init__(self, path: Path, steps: int):
        self.path, self.steps = path, steps
        rows = json.loads(path.read_text()) if path.exists() else {}
        self.rows = {k: r for k, r in rows.items() if r.get("steps") == steps}

    def put(self, key: str, row: dict) -> None:
        """Add a row, merged under a lock with what other runs of the same effort wrote meanwhile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.rows = {**Cache(self.path, self.steps).rows, **self.rows, key: row}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rows, indent=1) + "\n")
            os.replace(tmp, self.path)


def bdrate():
    """``refcodec.eval.bdrate``, imported only where a report is built: a ``--measure-only`` run (a GPU
    machine's) needs neither bjontegaard nor scipy."""
    from refcodec.eval import bdrate as module

    return module


class Metric:
    """The model's metric: the quality score of its curves (PSNR, or MS-SSIM in dB) and the D of the
    objective R + lambda * D it refines for (``refine.distortion``), of a row's PSNR and MS-SSIM."""

    def __init__(self, name: str):
        self.name, self.label = name, "PSNR-RGB" if name == "mse" else "MS-SSIM-RGB in dB"

    def score(self, row: dict) -> float:
        return row["psnr"] if self.name == "mse" else float(bdrate().msssim_db(row["ms_ssim"]))

    def distortion(self, row: dict) -> float:
        return 255**2 * 10 ** (-row["psnr"] / 10) if self.name == "mse" else 1 - row["ms_ssim"]


def results_curve(name: str, points: list[dict]):
    """The ``bdrate.Curve`` of points with a bpp and a score (the metric's quality axis)."""
    return bdrate().curve({"name": name, "results": {"bpp": [p["bpp"] for p in points], "psnr-rgb": [p["score"] for p in points]}})


def anchor_curve(path: str, images: list[str], metric: Metric):
    """An anchor's ``bdrate.Curve`` over ``images`` only, from the per-image rows of its results file."""
    report = json.loads(Path(path).read_text())
    points = []
    if missing := set(images) - {r["image"] for r in report["per_image"][f"{report['qualities'][0]:g}"]}:
        raise SystemExit(f"{path} has no row of {', '.join(sorted(missing))}")
    for q in report["qualities"]:
        rows = {r["image"]: r for r in report["per_image"][f"{q:g}"]}
        points.append({"bpp": float(np.mean([rows[i]["bpp"] for i in images])),
                       "score": float(np.mean([metric.score({"psnr": rows[i]["psnr-rgb"], "ms_ssim": rows[i]["ms-ssim-rgb"]}) for i in images]))})
    return results_curve(report["name"], points)


def build_report(args, caches: dict[str, Cache], files: list[str], lambdas: dict, metric: Metric) -> dict:
    keys = [(q, f) for f in files for q in args.quality]
    done = [f for f in files if all(f"{q:g}|{f}" in c.rows for c in caches.values() for q in args.quality)]
    missing = sum(f"{q:g}|{f}" not in c.rows for q, f in keys for c in caches.values())
    if not done:
        return {"images": [], "missing": missing}
    efforts = list(caches)
    row = lambda e, q, f: {**caches[e].rows[f"{q:g}|{f}"], "score": metric.score(caches[e].rows[f"{q:g}|{f}"])}  # noqa: E731
    per_quality = []
    for q in args.quality:
        rows = {e: [row(e, q, f) for f in done] for e in efforts}
        entry = {"quality": q, "lambda": lambdas[q]}
        for e in efforts:
            entry[e] = {k: float(np.mean([r[k] for r in rows[e]])) for k in ("bpp", "psnr", "score", "encode_seconds")}
            entry[e]["steps"] = caches[e].steps
            if e != "default":
                pairs = list(zip(rows[e], rows["default"]))
                d_rate = [r["bpp"] - b["bpp"] for r, b in pairs]
                d_dist = [lambdas[q] * (metric.distortion(r) - metric.distortion(b)) for r, b in pairs]
                entry[e] |= {"rate_change": float(np.mean([r["bpp"] / b["bpp"] - 1 for r, b in pairs])),
                             "score_change": float(np.mean([r["score"] - b["score"] for r, b in pairs])),
                             "objective_rate_change": float(np.mean(d_rate)), "objective_distortion_change": float(np.mean(d_dist))}  # fmt: skip
        per_quality.append(entry)
    curves = {e: results_curve(e, [p[e] for p in per_quality]) for e in efforts}
    anchors = {"default": curves["default"], **{a.name: a for a in (anchor_curve(p, done, metric) for p in args.anchors)}} if done else {}
    bd = {a: {e: bdrate().delta(c, curves[e]) for e in efforts if curves[e] is not c} for a, c in anchors.items()}
    per_image = []
    for f in done:
        image = {"image": f}
        for e in efforts:
            if e != "default":
                pairs = [(row(e, q, f), row("default", q, f)) for q in args.quality]
                image[e] = {"rate_change": float(np.mean([r["bpp"] / b["bpp"] - 1 for r, b in pairs])),
                            "score_change": float(np.mean([r["score"] - b["score"] for r, b in pairs])),
                            "bd_rate": bdrate().delta(results_curve("default", [b for _, b in pairs]), results_curve(e, [r for r, _ in pairs]))["bd_rate"]}  # fmt: skip
        per_image.append(image)
    return {"model": args.model, "metric": metric.name, "score": metric.label, "qualities": args.quality, "folder": args.folder, "crop": args.crop, "threads": args.threads,
            "conditions": args.conditions, "devices": sorted({caches[e].rows[f"{q:g}|{f}"].get("device", "cpu") for e in efforts for q, f in keys if f in done}),
            "efforts": {e: caches[e].steps for e in efforts}, "images": done,
            "missing": missing,
            "bd": bd, "per_quality": per_quality, "per_image": per_image}  # fmt: skip


def timing(out: Path, efforts: list[str]) -> dict:
    """Mean encode seconds of each effort in another run's caches, and what they cover."""
    rows = {e: json.loads((out.parent / f"{out.name}-cache" / f"{e}.json").read_text()) for e in efforts}
    return {"run": str(out), "measured": sorted(rows[efforts[0]]),
            "encode_seconds": {e: float(np.mean([r["encode_seconds"] for r in rows[e].values()])) for e in efforts},
            "encode_cpu_seconds": {e: float(np.mean([r["encode_cpu_seconds"] for r in rows[e].values()])) for e in efforts}}  # fmt: skip


def markdown(report: dict) -> str:
    efforts = list(report["efforts"])
    refined = [e for e in efforts if e != "default"]
    out = [f"# Encoder effort, {report['model']}, {len(report['images'])} images of {report['folder']}"
           + (f" (center crops {report['crop'][0]}x{report['crop'][1]})" if report["crop"] else "") + "\n",
           f"Steps of each effort: {', '.join(f'{e} {s}' for e, s in report['efforts'].items())}. Encode times: "
           f"{report['threads']} thread(s), {report['conditions']}; encoded on {', '.join(report.get('devices', ['cpu']))}.\n", f"## BD-rate ({report['score']}, akima) of each effort\n",
           "| effort | steps | encode s/image (wall, over this run's load) | " + " | ".join(f"against {a}" for a in report["bd"]) + " |",
           "|---|---|---|" + "---|" * len(report["bd"])]  # fmt: skip
    if "timing" in report:
        t = report["timing"]
        out.insert(2, f"Encode time back to back in one process ({t['run']}: {', '.join(t['measured'])}), CPU seconds of the "
                      "process (what one uncontended thread takes) and wall seconds: "
                      + ", ".join(f"{e} {t['encode_cpu_seconds'][e]:.1f} s ({t['encode_seconds'][e]:.1f} s wall)" for e in efforts) + ".\n")  # fmt: skip
    for e in efforts:
        seconds = np.mean([p[e]["encode_seconds"] for p in report["per_quality"]])
        cells = [f"{report['bd'][a][e]['bd_rate']:+.2f}%" if e in report["bd"][a] else "" for a in report["bd"]]
        out.append(f"| {e} | {report['efforts'][e]} | {seconds:.1f} | " + " | ".join(cells) + " |")
    score, d = ("PSNR", "lambda*255^2*MSE") if report["metric"] == "mse" else ("MS-SSIM dB", "lambda*(1 - MS-SSIM)")
    out += ["\n## Per quality, at equal lambda\n",
            f"Rate and {score} change of each effort's file against the default file of the same quality (mean over images); "
            f"the objective change R + lambda*D split into its rate part (bpp) and its distortion part ({d}, bpp).\n",
            f"| quality | lambda | default bpp | default {score} | " + " | ".join(f"{e} bpp | {e} {score} | {e} rate | {e} {score} change | "
                                                                          f"{e} dR | {e} lambda dD | {e} s" for e in refined) + " |",
            "|---|---|---|---|" + "---|" * 7 * len(refined)]  # fmt: skip
    for p in report["per_quality"]:
        cells = [f"{p[e]['bpp']:.4f} | {p[e]['score']:.2f} | {100 * p[e]['rate_change']:+.1f}% | {p[e]['score_change']:+.2f} dB | "
                 f"{p[e]['objective_rate_change']:+.4f} | {p[e]['objective_distortion_change']:+.4f} | {p[e]['encode_seconds']:.1f}" for e in refined]  # fmt: skip
        out.append(f"| {p['quality']:g} | {p['lambda']:.4g} | {p['default']['bpp']:.4f} | {p['default']['score']:.2f} | " + " | ".join(cells) + " |")
    out += ["\n## Per image (mean over qualities)\n",
            "| image | " + " | ".join(f"{e} rate | {e} {score} change | {e} BD-rate" for e in refined) + " |", "|---|" + "---|" * 3 * len(refined)]  # fmt: skip
    for r in report["per_image"]:
        out.append(f"| {r['image']} | " + " | ".join(f"{100 * r[e]['rate_change']:+.1f}% | {r[e]['score_change']:+.2f} dB | {r[e]['bd_rate']:+.1f}%"
                                                     for e in refined) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=100)
    efforts = sorted(report["efforts"], key=report["efforts"].get)
    seconds = [report["timing"]["encode_cpu_seconds"][e] if "timing" in report else np.mean([p[e]["encode_seconds"] for p in report["per_quality"]])
               for e in efforts]  # fmt: skip
    saved = [0.0 if e == "default" else -report["bd"]["default"][e]["bd_rate"] for e in efforts]
    ax.plot(seconds, saved, "o-")
    for e, s, b in zip(efforts, seconds, saved):
        ax.annotate(f"{e} ({report['efforts'][e]} steps)", (s, b), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("symlog", linthresh=1)
    on = report.get("devices", ["cpu"])
    ax.set_xlabel("encode CPU seconds per image (1 thread)" if "timing" in report else
                  f"encode seconds per image (on {', '.join(on)})" if on != ["cpu"] else
                  f"encode seconds per image ({report['threads']} thread" + (", under contention)" if "contention" in report["conditions"] else ")"))  # fmt: skip
    ax.set_ylabel("bits saved over default (BD-rate, %)")
    ax.set_title(f"{report['model']}, {len(report['images'])} images of {Path(report['folder']).name}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--model", default="grm")
    p.add_argument("-q", "--quality", type=float, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--efforts", nargs="+", default=["default", "slow"], help="efforts to measure (the report takes default from its cache)")
    p.add_argument("--sweep", type=int, nargs="+", default=[], metavar="N", help="also levels sgaN of N refinement steps")
    p.add_argument("--every", type=int, default=1, help="take every k-th image (sorted by path)")
    p.add_argument("--reverse", action="store_true", help="measure the images in reverse order (a second run beside a first)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("W", "H"), help="center crop of each image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model encodes (and decodes)")
    p.add_argument("--anchors", nargs="*", default=[], help="results files of refcodec compare with per-image rows")
    p.add_argument("--conditions", default="", help="what else ran on the machine, for the report")
    p.add_argument("--report-only", action="store_true", help="write the report of what the caches hold")
    p.add_argument("--measure-only", action="store_true", help="fill the caches, write no report (no bench extra needed)")
    p.add_argument("--timing", metavar="OUT2", help="also report the encode seconds of another run's caches (OUT2-cache/), "
                   "measured back to back in one process: comparable across efforts, unlike a long run's under varying load")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="OUT: writes OUT.json, OUT.md, OUT.png; caches in OUT-cache/")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("effort.py: --device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    for n in args.sweep:
        refine.EFFORTS[f"sga{n}"] = n
    efforts = list(dict.fromkeys(["default", *args.efforts, *(f"sga{n}" for n in args.sweep)]))
    for e in efforts:
        refine.steps_of(e)
    out = Path(args.output)
    caches = {e: Cache(out.parent / f"{out.name}-cache" / f"{e}.json", refine.EFFORTS[e]) for e in efforts}
    files = find_images(args.folder)[:: args.every]
    names = [f.name for f in files]
    models = {q: load_model(args.model, q).to(args.device) for q in args.quality}
    metric = Metric(refine.model_metric(models[args.quality[0]]))
    lambdas = {q: refine.model_lambda(m) for q, m in models.items()}
    measuring = [] if args.report_only else list(dict.fromkeys([*args.efforts, *(f"sga{n}" for n in args.sweep)]))
    for f in files[::-1] if args.reverse else files:
        image = None
        for q in args.quality:
            for e in measuring:
                key = f"{q:g}|{f.name}"
                if key in caches[e].rows:
                    continue
                image = image or load_image(f, args.crop)
                row = measure(models[q], image, e)
                caches[e].put(key, row)
                print(f"q{q:g} {f.name} {e}: {row['bpp']:.4f} bpp {row['psnr']:.2f} dB {row['encode_seconds']:.1f} s", flush=True)
    if args.measure_only:
        return
    report = build_report(args, caches, names, lambdas, metric)
    if args.timing and report["images"]:
        report["timing"] = timing(Path(args.timing), efforts)
    if report["images"]:
        written = lambda suffix: out.parent / (out.name + suffix)  # noqa: E731  (OUT may hold dots: kodak-0.6.0)
        written(".json").write_text(json.dumps(report, indent=1) + "\n")
        written(".md").write_text(markdown(report))
        plot(report, written(".png"))
        print(markdown(report))
    print(f"{len(report['images'])} of {len(files)} images complete; {report['missing']} measurements missing")


if __name__ == "__main__":
    main()
