"""The paper's ablation (Figure 7, section 5.2): the entropy model's components added one at a time.

    python scripts/ablation.py --data ../shared/datasets/bsds500/train ../shared/datasets/bsds500/test \
        --eval ../shared/datasets/kodak --anchor results/kodak/hevc.json --qualities 1 3 --steps 2000

Five flag sets of the ``grm`` model, each adding one component to the one before:
context only; + global reference (similarity S only); + confidence U; + hyperprior (the
paper's entropy model, GDN transforms); + GSDN (the full model). All keep the progressive
stages (the reference needs them). Every variant trains with the same data, steps, crop,
batch, learning rate and seed. The paper reports a rate saving of about 5.3% for the
reference over context only at low rates, and about 2% for GSDN.

Stages (``--stage``, default ``all``):

- ``train``: one run per variant and quality, RUNS/<variant>-<preset>-q<q>, each a process
  of ``refcodec train``; a finished run is skipped, a partial one resumed (``--resume``).
  By default every quality trains from scratch for ``--steps``. With ``--fine-tune K`` only
  the first quality does, and the others start from its weights for K more steps (as in
  scripts/train_zoo.py), which saves compute. RUNS/recipe.json keeps the budget, and a
  different one is refused, so all variants in RUNS share it; later stages read it there.
- ``eval``: real bitstreams on the ``--eval`` images with ``refcodec eval``'s functions;
  OUT/<variant>.json in CompressAI's layout, one point per quality, with the steps and wall
  time of each run. A variant whose weights have not changed is not evaluated again.
- ``report``: BD-rate of each variant against the previous one and against ``--anchor``
  (for example HEVC), in OUT/ablation.json and OUT/ablation.md with the budget;
  OUT/ablation.png shows the rate savings over the anchor as Figure 7 does, and
  OUT/ablation-rd.png the RD curves.

BD-rates need two qualities per curve and cover only the PSNR range that both curves
span; more qualities give better estimates.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from refcodec.eval import bdrate, plot
from refcodec.eval.evaluate import evaluate_image, summarize
from refcodec.models import registry
from refcodec.train import checkpoint
from refcodec.images import find_images

LABELS = {  # Figure 7's variants, in order; each switches on its own flag and keeps the ones before it
    "context": "context only",
    "reference": "+ reference",
    "confidence": "+ confidence",
    "hyperprior": "+ hyperprior",
    "gsdn": "+ GSDN (full model)",
}
FLAGS = list(LABELS)[1:]
PAPER = ("Paper (Figure 7, on Kodak against BPG): the reference saves about 5.3% over context only at low rates, "
         "the confidence adds to it, and GSDN saves about 2% over the GDN model.")  # fmt: skip


def flags(variant: str) -> dict[str, bool]:
    """The ``grm`` flags of a variant: every component up to and including its own."""
    return {f: FLAGS.index(f) < list(LABELS).index(variant) for f in FLAGS}


def recipe(args) -> dict:
    """What every run of RUNS must share."""
    base = {"base_quality": args.qualities[0]} if args.fine_tune else {}
    return {"model": "grm", "preset": args.preset, "steps": args.steps, "fine_tune": args.fine_tune, **base, "crop": args.crop,
            "batch": args.batch, "lr": args.lr, "seed": args.seed, "data": [str(d) for d in args.data]}  # fmt: skip


def check_recipe(args) -> dict:
    """The budget of RUNS (RUNS/recipe.json), written by the first training; another budget is refused."""
    path = args.runs / "recipe.json"
    wanted = recipe(args)
    if not path.exists():
        args.runs.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2))
    found = json.loads(path.read_text())
    if found != wanted:
        raise SystemExit(f"{args.runs} holds runs of another budget:\n  {found}\nnot\n  {wanted}\n(use another --runs)")
    return found


def plan(args, budget: dict, variant: str) -> list[tuple[int, Path, int, list[str]]]:
    """(quality, run folder, last step, extra training arguments) of a variant's runs at ``--qualities``."""
    runs = []
    for q in args.qualities:
        run = args.runs / f"{variant}-{budget['preset']}-q{q}"
        if budget["fine_tune"] and q != budget["base_quality"]:
            base = args.runs / f"{variant}-{budget['preset']}-q{budget['base_quality']}"
            runs.append((q, run, budget["steps"] + budget["fine_tune"], ["--init", str(base / "weights.safetensors")]))
        else:
            runs.append((q, run, budget["steps"], []))
    return runs


def train(args, budget: dict, variant: str) -> None:
    """Train (or resume) a variant's runs one after the other (the base run first); finished runs are skipped."""
    for q, run, last, extra in plan(args, budget, variant):
        state = checkpoint.load(run, quiet=True)
        if state is not None and state["step"] >= last:
            continue
        cmd = [sys.executable, "-m", "refcodec.cli", "train", "--data", *budget["data"], "--out", str(run),
               "--model", "grm", "--preset", budget["preset"], "--flags", json.dumps(flags(variant)), "--quality", str(q),
               "--steps", str(last), "--crop", str(budget["crop"]), "--batch", str(budget["batch"]), "--lr", str(budget["lr"]),
               "--seed", str(budget["seed"]), "--threads", str(args.threads), *extra]  # fmt: skip
        cmd += ["--val", str(args.val)] * bool(args.val) + ["--resume"] * (state is not None)
        print(" ".join(cmd), flush=True)
        log = run.with_suffix(".log")
        with open(log, "a") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"{run}: training failed, see {log}")


def evaluate(args, budget: dict, variant: str) -> None:
    """OUT/<variant>.json: mean bpp/PSNR/MS-SSIM of real bitstreams per quality, and each run's budget."""
    out = args.out / f"{variant}.json"
    files = find_images(args.eval)
    runs, models = [], []
    for q, run, last, _ in plan(args, budget, variant):
        state = checkpoint.load(run, quiet=True)
        if state is None or state["step"] < last:
            raise SystemExit(f"{run}: not trained to step {last}; run --stage train first")
        model = registry.load_model(str(run / "weights.safetensors"))
        if model.config["flags"] != flags(variant):
            raise SystemExit(f"{run}: flags {model.config['flags']}, expected {flags(variant)}")
        models.append(model)
        runs.append({"quality": q, "run": str(run), "lambda": state["config"]["lambda"], "steps": state["step"],
                     "from_step": state.get("base_step", 0), "wall_seconds": round(state["elapsed"]),
                     "weights_hash": model.weights_hash().hex()})  # fmt: skip
    if out.exists():
        done = json.loads(out.read_text())
        if done.get("images") == str(args.eval) and done.get("training") == runs:
            return
    results, per_image = {}, {}
    for model in models:
        rows = [evaluate_image(model, f, estimate=False) for f in files]
        per_image[model.id] = rows
        for k, v in summarize(rows).items():
            results.setdefault(k, []).append(v)
        print(f"{variant} {model.id}: bpp {results['bpp'][-1]:.4f}, PSNR {results['psnr-rgb'][-1]:.2f} dB", flush=True)
    report = {
        "name": LABELS[variant],
        "description": f"refcodec grm/{args.preset} {LABELS[variant]}, flags {flags(variant)}; real bitstreams on "
        f"{len(files)} images of {args.eval}, {torch.get_num_threads()} threads",
        "variant": variant,
        "flags": flags(variant),
        "images": str(args.eval),
        "qualities": args.qualities,
        "recipe": budget,
        "training": runs,
        "results": results,
        "per_image": per_image,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def _bd(d: dict | None) -> str:
    if d is None:
        return "-"
    return "n/a" if math.isnan(d["bd_rate"]) else f"{d['bd_rate']:+.1f}% ({d['psnr_overlap']:.0%})"


def report(args, variants: list[str]) -> None:
    """OUT/ablation.json, ablation.md, ablation.png (savings over the anchor) and ablation-rd.png."""
    files = [json.loads((args.out / f"{v}.json").read_text()) for v in variants]
    budgets = {json.dumps(f["recipe"], sort_keys=True) for f in files}
    if len(budgets) > 1:
        raise SystemExit(f"{args.out}: the variants were trained with different budgets")
    anchor = bdrate.load_curve(args.anchor)
    curves = [bdrate.curve(f, str(args.out / f"{v}.json")) for v, f in zip(variants, files)]
    rows = []
    for i, (f, c) in enumerate(zip(files, curves)):
        previous = bdrate.delta(curves[i - 1], c) if i else None
        rows.append({"variant": f["variant"], "label": f["name"], "flags": f["flags"], "qualities": f["qualities"],
                     "bpp": f["results"]["bpp"], "psnr-rgb": f["results"]["psnr-rgb"], "training": f["training"],
                     "vs_previous": previous, "vs_anchor": bdrate.delta(anchor, c)})  # fmt: skip
    summary = {"figure": "Figure 7", "paper": PAPER, "images": files[0]["images"], "recipe": files[0]["recipe"],
               "anchor": {"name": anchor.name, "file": str(args.anchor), "description": anchor.description}, "variants": rows}  # fmt: skip
    (args.out / "ablation.json").write_text(json.dumps(summary, indent=2))

    budget = files[0]["recipe"]
    how = (f"{budget['steps']} steps at quality {budget['base_quality']}, the other qualities fine-tuned from it for "
           f"{budget['fine_tune']} more" if budget["fine_tune"] else f"{budget['steps']} steps per quality from scratch")  # fmt: skip
    lines = [
        "# Ablation of the entropy model (the paper's Figure 7)",
        "",
        f"`grm/{budget['preset']}` variants on {files[0]['images']}, real bitstreams. Budget of every variant: {how}; "
        f"{budget['crop']}-px crops, batch {budget['batch']}, lr {budget['lr']}, seed {budget['seed']}, "
        f"data {', '.join(budget['data'])}.",
        "",
        f"| variant | {' | '.join(FLAGS)} | "
        + " | ".join(f"q{q} bpp / PSNR" for q in files[0]["qualities"])
        + f" | BD-rate vs previous | BD-rate vs {anchor.name} | notes |",
        "|---" * (len(FLAGS) + len(files[0]["qualities"]) + 4) + "|",
    ]
    for r in rows:
        points = [f"{b:.4f} / {p:.2f}" for b, p in zip(r["bpp"], r["psnr-rgb"])]
        notes = [f"{k}: {r[key]['note']}" for k, key in (("previous", "vs_previous"), (anchor.name, "vs_anchor"))
                 if r[key] and r[key]["note"]]  # fmt: skip
        marks = ["yes" if r["flags"][f] else "-" for f in FLAGS]
        lines.append(f"| {r['label']} | {' | '.join(marks + points)} | {_bd(r['vs_previous'])} | {_bd(r['vs_anchor'])} | {'; '.join(notes)} |")
    lines += [
        "",
        "BD-rate: negative is fewer bits at equal PSNR (PSNR-RGB, akima); in brackets the common PSNR range as a share of "
        "both curves' ranges. n/a: the curves do not overlap or have fewer than two increasing points.",
        "",
        "| run | lambda | steps | from step | wall time (h) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {t['run']} | {t['lambda']} | {t['steps']} | {t['from_step']} | {t['wall_seconds'] / 3600:.2f} |" for r in rows for t in r["training"]]
    lines += ["", "Wall time as the trainer counts it: a fine-tune includes the run it started from.", "", PAPER, ""]
    (args.out / "ablation.md").write_text("\n".join(lines))
    title = f"grm/{budget['preset']} ablation on {Path(files[0]['images']).name}"
    plot.savings_plot(curves, anchor, args.out / "ablation.png", title=title)
    plot.rd_plot(curves + [anchor], args.out / "ablation-rd.png", anchor=anchor, title=title)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=["train", "eval", "report", "all"])
    p.add_argument("--variants", nargs="+", default=list(LABELS), choices=list(LABELS), help="a subset, kept in Figure 7's order")
    p.add_argument("--qualities", nargs="+", type=int, default=[1, 3], choices=sorted(registry.LAMBDAS))
    p.add_argument("--data", nargs="+", type=Path, help="folders of training images (train stage)")
    p.add_argument("--val", type=Path, help="validation folder for the training logs (optional)")
    p.add_argument("--eval", type=Path, help="evaluation images, e.g. Kodak (eval stage)")
    p.add_argument("--anchor", type=Path, help="anchor curve in CompressAI's layout, e.g. results/kodak/hevc.json (report stage)")
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("-o", "--out", type=Path, help="default: results/<eval folder name>/ablation")
    budget = p.add_argument_group("budget of every variant (train stage; eval reads it from RUNS/recipe.json)")
    budget.add_argument("--preset", default="small", choices=sorted(registry.PRESETS))
    budget.add_argument("--steps", type=int, default=2000, help="steps of each run from scratch")
    budget.add_argument("--fine-tune", type=int, default=0, metavar="K",
                        help="train only the first quality from scratch and fine-tune the others from it for K steps")
    budget.add_argument("--crop", type=int, default=256)
    budget.add_argument("--batch", type=int, default=4)
    budget.add_argument("--lr", type=float, default=3e-4)
    budget.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="variants trained side by side")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training run and of the evaluation")
    args = p.parse_args()
    stages = ["train", "eval", "report"] if args.stage == "all" else [args.stage]
    needs = {"train": "data", "eval": "eval", "report": "anchor"}
    for stage in stages:
        if getattr(args, needs[stage]) is None:
            p.error(f"the {stage} stage needs --{needs[stage]}")
    if "report" in stages and args.out is None and args.eval is None:
        p.error("the report stage needs --out or --eval")
    args.out = args.out or Path("results") / args.eval.name / "ablation"
    variants = [v for v in LABELS if v in args.variants]

    if "train" in stages:
        budget = check_recipe(args)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda v: train(args, budget, v), variants))
    if "eval" in stages:
        torch.set_num_threads(args.threads)
        recipe_file = args.runs / "recipe.json"
        if not recipe_file.exists():
            raise SystemExit(f"{recipe_file}: missing; run --stage train first")
        budget = json.loads(recipe_file.read_text())
        for v in variants:
            evaluate(args, budget, v)
    if "report" in stages:
        report(args, variants)


if __name__ == "__main__":
    main()
