"""Ship a training run's weights into the package, with a model card measured on real bitstreams.

    python scripts/ship_weights.py runs/grm-small-q3 --eval ../shared/datasets/kodak

Writes src/refcodec/models/weights/<name>-<preset>-<q<quality> or vr>.safetensors (float16) and a
model card (.md) with the architecture, data, steps, wall time, hardware and the measured
bpp/PSNR/MS-SSIM, encode/decode times and the gap between file size and estimated rate (for a
variable-rate model, at every quality of ``--qualities``). Variable-rate models are shipped
through ``scripts/ship_gate.py``, which calls this script with ``--weights``. Weights that replace a
shipped model's under the same id record the old weights hash in ``replaced.json`` (``registry.record_replaced``),
with the release and the git commit (HEAD, where the old weights must be committed) that decode them, so that
files written with them are refused with a line naming both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

import refcodec
from refcodec.eval.bdrate import msssim_db
from refcodec.eval.evaluate import evaluate_image, summarize
from refcodec.models import registry
from refcodec.images import find_images
from refcodec.train.trainer import logged_time


KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
VARIABLE_QUALITIES = [0, 1, 2, 3, 4, 5, 6, 7, 8]
OBJECTIVES = {"mse": "loss R + lambda * 255^2 * MSE", "ms-ssim": "loss R + lambda * (1 - MS-SSIM) (trained for MS-SSIM)"}


def release_commit(weights: Path) -> str:
    """The last git commit of the release whose ``weights`` a ship replaces or retires: HEAD, which must hold
    them as they are (``registry.record_replaced``, ``registry.retire``)."""
    repo = Path(__file__).resolve().parent.parent
    git = lambda *args: subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)  # noqa: E731
    head, released = git("rev-parse", "HEAD"), git("rev-parse", f"HEAD:{os.path.relpath(weights.resolve(), repo)}")
    if head.returncode or released.returncode or released.stdout != git("hash-object", str(weights)).stdout:
        raise SystemExit(f"ship: commit {weights.name} as released before replacing it, so that its files name a commit that decodes them")
    return head.stdout.strip()


def write_curve(name: str, preset: str, metric: str, folder: Path) -> None:
    """The RD curve of a shipped model, from its model cards (the variable-rate model's qualities, or every
    fixed-rate quality), in CompressAI's results layout: ``folder/<name>-<preset>[-<metric>].json``."""
    suffix = "" if metric == "mse" else f"-{metric}"
    variable = registry.weights_path(registry.model_id(name, preset, None, metric)).with_suffix(".json")
    if variable.is_file():
        card = json.loads(variable.read_text())
        points = card["evaluation"]["qualities"]
        qualities, sources, label = [p["quality"] for p in points], card["id"], card["id"]
    else:
        cards = [json.loads(p.read_text()) for p in registry.WEIGHTS_DIR.glob(f"{name}-{preset}-q*.json")]
        cards = sorted((c for c in cards if (c["id"].split("/")[2].partition("-")[2] or "mse") == metric),
                       key=lambda c: int(c["id"].split("/q")[1].split("-")[0]))  # fmt: skip
        points, qualities, sources = [c["evaluation"] for c in cards], [c["id"] for c in cards], ", ".join(c["id"] for c in cards)
        label = f"{name}/{preset}{suffix}"
    curve = {
        "name": f"refcodec {label}",
        "description": f"shipped weights, real bitstreams, from the model cards of {sources}",
        "qualities": qualities,
        "results": {k: [p[k] for p in points] for k in KEYS},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{preset}{suffix}.json").write_text(json.dumps(curve, indent=2))


def shipped_training(model_id: str | None) -> dict | None:
    """The training record of a shipped model's card, if ``model_id`` is one (read before it is replaced)."""
    if not model_id:
        return None
    try:
        card = registry.weights_path(model_id).with_suffix(".json")
    except registry.ModelNotFoundError:  # not a model id
        return None
    return json.loads(card.read_text())["training"] if card.is_file() else None


def data_history(earlier: dict | None, data: list[str], steps: int) -> list[dict]:
    """The training folders of each span of steps, ``[{"data": [...], "steps": [first, last]}]``: those of
    the ``earlier`` card's training (its ``data_history``, or its folders for all its steps), then ``data``
    up to ``steps``."""
    if earlier is None:
        return [{"data": data, "steps": [1, steps]}]
    history = [dict(h) for h in earlier.get("data_history") or [{"data": earlier["data"], "steps": [1, earlier["steps"]]}]]
    if history[-1]["data"] == data:
        history[-1]["steps"] = [history[-1]["steps"][0], steps]
    else:
        history.append({"data": data, "steps": [earlier["steps"] + 1, steps]})
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="training run folder (checkpoint.pt or weights.safetensors, log.csv)")
    p.add_argument("--eval", required=True, help="evaluation images (e.g. Kodak)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init-id", help="model the run started from, for runs whose config does not record it")
    p.add_argument("--recipe", help="how the run was trained (crops, batches, learning rates, scripts), for the card")
    p.add_argument("--data-as", nargs="+", help="the training folders to record, where the run trained on a copy of them")
    p.add_argument("--weights", type=Path, help="ship these weights of the run (default: its checkpoint, else its weights)")
    p.add_argument("--qualities", nargs="+", type=float, default=VARIABLE_QUALITIES,
                   help="qualities measured for a variable-rate model's card")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.weights is None and (args.run / "checkpoint.pt").exists():
        state = torch.load(args.run / "checkpoint.pt", weights_only=False)
        hours = state.get("elapsed", logged_time(args.run / "log.csv")) / 3600
        config = {**state["config"], "steps": state["step"], "wall_seconds": round(hours * 3600)}
        base = state.get("base_step", 0)
        model = registry.MODELS[config["name"]](N=config["N"], M=config["M"], **config["flags"])
        model.load_state_dict(state["model"])
    else:  # given weights, or a run that came back as weights only (e.g. from a GPU machine)
        model = registry.load_model(str(args.weights or args.run / "weights.safetensors"))
        config = model.config
        hours = config["wall_seconds"] / 3600
        base = config.get("init", {}).get("steps", 0)
    model.eval()
    if args.data_as:
        config["data"] = args.data_as
    steps, before = config["steps"], config.get("init", {})
    init = before.get("id") or args.init_id
    hardware = config.get("hardware") or f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
    # a shipped model's card holds its whole history: the one this run continues (the same id, shipped
    # before at fewer steps) or the one it started from
    cards = [shipped_training(ref) for ref in (config["id"], init)] if base else []
    earlier = next((c for c in cards if c and base <= c["steps"] < steps), None)
    history = data_history(earlier, config["data"], steps)
    if earlier:
        done, own = earlier["steps"], hours - earlier["wall_hours"]
        hardware = f"{earlier['hardware']}; then {hardware} for steps {done + 1}-{steps} ({own:.2f} h)"
    elif base and before.get("hardware"):  # two machines: say which did what
        own = hours - before["wall_seconds"] / 3600
        hardware = f"{before['hardware']} for steps 1-{base} ({before['wall_seconds'] / 3600:.2f} h), {hardware} for the last {steps - base} ({own:.2f} h)"
    data = "; ".join(f"{', '.join(h['data'])} for steps {h['steps'][0]}-{h['steps'][1]}" for h in history) if len(history) > 1 else ", ".join(config["data"])
    origin = f" (steps 1-{base}: the run of `{init}` it started from; {steps - base} steps here)" if base else ""
    if config.get("cooldown"):  # a cooled-down branch (scripts/continue_training.py --cooldown)
        origin += f", the last {config['cooldown']['steps']} with the learning rate decaying linearly to 0"
    out = registry.weights_path(config["id"])
    name = out.stem
    old_hash = registry.load_model(str(out)).weights_hash() if out.is_file() else None
    commit = release_commit(out) if old_hash is not None else None
    registry.save(model, out, config, dtype=torch.float16)

    shipped = registry.load_model(str(out))
    if old_hash is not None and old_hash != shipped.weights_hash():  # files of the weights replaced name the release that decodes them
        registry.record_replaced(shipped.id, old_hash, refcodec.__version__, commit)
        print(f"replaced weights {old_hash.hex()} of {shipped.id} (their files name refcodec {refcodec.__version__}); bump the version")
    load = os.getloadavg()[0]  # other work on the machine slows the timings
    files = find_images(args.eval)
    if shipped.levels:  # one card, a point per quality
        points = []
        for q in args.qualities:
            shipped.use_quality(q)
            rows = [evaluate_image(shipped, f, estimate=True) for f in files]
            points.append({"quality": q, **summarize(rows), "per_image": rows})
            print(f"{shipped.id} q={q:g}: {points[-1]['bpp']:.4f} bpp, {points[-1]['psnr-rgb']:.2f} dB", flush=True)
        mean = {"qualities": [{k: v if k == "per_image" else round(v, 5) for k, v in p.items()} for p in points]}
        rows = []
    else:
        rows = [evaluate_image(shipped, f, estimate=True) for f in files]
        mean = summarize(rows)
    card = {
        "id": shipped.id,
        "architecture": {"model": config["name"], "preset": config["preset"], "N": config["N"], "M": config["M"], "flags": config["flags"]},
        "training": {"data": config["data"], "metric": config.get("metric", "mse"), "steps": config["steps"], "initialized_from": init if base else None,
                     "steps_from_init": steps - base, "cooldown": config.get("cooldown"), "lambda": config["lambda"], "wall_hours": round(hours, 2),
                     "hardware": hardware, "data_history": history},
        "evaluation": {"images": str(args.eval), "count": len(files), "threads": args.threads, "load_average": round(load, 1),
                       **{k: v if k == "qualities" else round(v, 5) for k, v in mean.items()}},
        "per_image": rows,
    }  # fmt: skip
    (registry.WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(card, indent=2))
    ev = card["evaluation"]
    points = ev["qualities"] if shipped.levels else [ev]
    table = "".join(
        (f"| {p['quality']:g} " if shipped.levels else "")
        + f"| {p['bpp']:.4f} | {p['psnr-rgb']:.2f} | {p['ms-ssim-rgb']:.4f} ({msssim_db(p['ms-ssim-rgb']):.2f} dB) | {p['encoding_time']:.2f} | "
        f"{p['decoding_time']:.2f} | {100 * p['estimate_gap']:+.2f}% |\n"
        for p in points
    )
    (registry.WEIGHTS_DIR / f"{name}.md").write_text(
        f"# {shipped.id}\n\n"
        f"- Architecture: `{config['name']}`, preset `{config['preset']}` (N={config['N']}, M={config['M']}), flags {config['flags'] or 'default'}\n"
        f"- Training: {data}; {config['steps']} steps{origin}, {OBJECTIVES[config.get('metric', 'mse')]}, lambda {config['lambda']}, "
        f"{card['training']['wall_hours']} h wall time on {card['training']['hardware']}\n"
        + (f"- Recipe: {args.recipe}\n" if args.recipe else "")
        + f"- Stored as float16 safetensors; weights hash `{shipped.weights_hash().hex()}`\n\n"
        f"## Measured on {ev['count']} images of `{args.eval}` (real bitstreams, {args.threads} threads)\n\n"
        + ("| quality " if shipped.levels else "")
        + "| bpp | PSNR (dB) | MS-SSIM | encode (s) | decode (s) | file vs estimate |\n"
        + ("|---" if shipped.levels else "")
        + "|---|---|---|---|---|---|\n"
        + table
        + "\n"
        f"Timings were taken with a load average of {load:.1f} on {os.cpu_count()} cores.\n"
    )
    write_curve(config["name"], config["preset"], config.get("metric", "mse"), Path("results") / Path(args.eval).name)
    print(json.dumps({k: v for k, v in card.items() if k != "per_image"}, indent=2))


if __name__ == "__main__":
    main()
