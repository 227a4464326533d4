"""Train the variable-rate model on a lent GPU: prepare the upload here, train there, bring back weights.

Here (once per session, before the device call):

    python scripts/gpu_train.py prepare --init training/grm-small-vr.safetensors
    python scripts/gpu_train.py prepare --init training/grm-medium-vr.safetensors     # the wide model (issue 36)
    python scripts/gpu_train.py prepare --init grm/small/vr --preset medium          # its first start: widened

copies the training photos into ``gpu_data/`` (``photos/train`` first, then BSDS500's train and
test splits, as many as fit next to the working tree in the device's 64 MiB upload), the starting
weights as ``gpu_data/init.safetensors`` (float16; unless they are a tracked file, which travels
with the working tree anyway), and the wheels the device image lacks
(constriction, pytorch-msssim) into ``.whl/``. Both folders are git-ignored. It prints the
device call: the command and the paths to carry.

There (``device`` tool, ``run`` with ``carry: [".whl", "gpu_data"]``):

    python3 scripts/gpu_train.py train --minutes 8 --out $OUT

trains from the starting weights with the paper's 512-px crops (section 5.1) at batch 16,
TF32 matrix products (the losses stay finite; checked every step, a non-finite step is skipped),
until the time limit, and leaves ``weights.safetensors`` (float32) and ``log.csv`` in OUT. The
weights go to ``scripts/ship_gate.py``, and the background CPU run continues from them
(``scripts/continue_training.py --init``, in a new run folder). Both commands take ``--metric ms-ssim``
for the MS-SSIM model (section 5.1; start it from the MSE weights, as the paper does). The model's size is
the starting weights' preset unless ``--preset`` names a wider one, which the training grows them to
(``models.widen``).

``prepare --check FOLDER`` (e.g. ``--check ../shared/datasets/kodak --minutes 6.5``) also brings every
``--check-every``-th image of FOLDER into ``gpu_data/check/``, before the training photos, and the printed
command runs the GPU check after the training, in the same call: ``tests/test_gpu.py`` (output in
``$OUT/test-gpu.txt``) and the encode time and rate of each encoder effort on the GPU
(``benchmarks/effort.py --device cuda --measure-only``, caches in ``$OUT/effort-gpu-cache/``; make the
report here with ``--report-only``: copy the caches next to the report's ``-o`` and give FOLDER with
the same ``--every``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

UPLOAD_LIMIT = 64 * 2**20  # the device's working-tree limit
MARGIN = 2 * 2**20  # kept free: files written before the call, rounding of sizes
DATA = Path("gpu_data")
WHEELS = Path(".whl")
PACKAGES = ["constriction==0.5.0", "pytorch-msssim==1.0.0"]  # what the device image lacks (its Python is 3.12)
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def tree_size(root: Path) -> int:
    """Bytes of what the device call sends without carried paths: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")  # fmt: skip
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def tracked(path: Path) -> bool:
    """Whether ``path`` is a file git tracks in the working tree (it is uploaded with the tree)."""
    return path.is_file() and subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], capture_output=True).returncode == 0


def choose(folders: list[Path], budget: int) -> list[Path]:
    """The images of ``folders``, in order, while they fit in ``budget`` bytes."""
    from refcodec.images import find_images

    chosen, used = [], 0
    for folder in folders:
        for f in find_images(folder):
            size = f.stat().st_size
            if used + size > budget:
                return chosen
            chosen.append(f)
            used += size
    return chosen


def prepare(args: argparse.Namespace) -> None:
    import torch

    from refcodec.models import registry

    root = Path.cwd()
    shutil.rmtree(DATA, ignore_errors=True)
    (DATA / "train").mkdir(parents=True)
    model = registry.load_model(args.init)
    init = Path(args.init)
    if not tracked(init):
        init = DATA / "init.safetensors"
        registry.save(model, init, model.config, dtype=torch.float16)
    if args.check:
        from refcodec.images import find_images

        (DATA / "check").mkdir()
        for f in find_images(args.check)[:: args.check_every]:
            shutil.copyfile(f, DATA / "check" / f.name)
    if not args.no_wheels:
        shutil.rmtree(WHEELS, ignore_errors=True)
        platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", *platforms, "-d", str(WHEELS), *PACKAGES], check=True)  # fmt: skip
    carried = sum(f.stat().st_size for d in (DATA, WHEELS) if d.exists() for f in d.rglob("*") if f.is_file())
    budget = args.limit - MARGIN - tree_size(root) - carried
    root_data = Path(args.data_root)
    files = choose([root_data / "photos" / "train", root_data / "bsds500" / "train", root_data / "bsds500" / "test"], max(budget, 0))
    for i, f in enumerate(files):
        shutil.copyfile(f, DATA / "train" / f"{i:04d}-{f.parent.name}-{f.name}")
    print(f"gpu_data: {len(files)} training images ({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB), "
          f"init {args.init} ({model.config.get('steps')} steps)")  # fmt: skip
    print('device run: carry [".whl", "gpu_data"], timeout_s 600, command:\n' + device_command(init, args))


def device_command(init: Path, args: argparse.Namespace) -> str:
    """The device call's command: install the wheels, train, then (``--check``) the GPU check."""
    command = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && "
               "export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && "
               f"python3 scripts/gpu_train.py train --init {init} --minutes {args.minutes} --metric {args.metric} --out $OUT")  # fmt: skip
    if args.preset:
        command += f" --preset {args.preset}"
    if args.check:
        command += ("; python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $OUT/test-gpu.txt 2>&1; "
                    f"python3 benchmarks/effort.py {DATA / 'check'} -q 1 3 5 8 --efforts default fast slow --device cuda "
                    "--threads 2 --measure-only -o $OUT/effort-gpu")  # fmt: skip
    return command


def train(args: argparse.Namespace) -> None:
    import torch

    from refcodec.models import registry
    from refcodec.train import trainer

    preset = args.preset or registry.read_config(registry.weights_path(args.init)).get("preset", "small")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed crop size: cuDNN picks its fastest kernels once
    run = Path(args.run)
    trainer.main(["--data", str(DATA / "train"), "--out", str(run), "--model", "grm", "--preset", preset, "--variable-rate",
                  "--init", args.init, "--steps", "1000000", "--batch", str(args.batch),
                  "--crop", str(args.crop), "--lr", str(args.lr), "--device", args.device, "--workers", str(args.workers),
                  "--time-limit", str(args.minutes * 60), "--save-every", "500", "--val-every", "1000000",
                  "--ema", str(args.ema), "--metric", args.metric])  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("weights.safetensors", "log.csv"):
        shutil.copyfile(run / name, out / name)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("prepare", help="here: training data, starting weights and wheels for the upload")
    a.add_argument("--init", required=True, help="weights to start from (a model id or .safetensors)")
    a.add_argument("--data-root", default="../shared/datasets")
    a.add_argument("--limit", type=int, default=UPLOAD_LIMIT, help="bytes the upload may hold")
    a.add_argument("--minutes", type=float, default=8, help="training minutes of the printed device command")
    a.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"], help="the distortion of the printed command")
    a.add_argument("--preset", choices=["small", "medium"], help="the size of the printed command (default: the weights' own)")
    a.add_argument("--check", metavar="FOLDER", help="also the GPU check after the training, on images of FOLDER")
    a.add_argument("--check-every", type=int, default=12, help="take every k-th image of FOLDER (sorted by path)")
    a.add_argument("--no-wheels", action="store_true", help="skip the wheels (tests, or a device that has the packages)")
    a.set_defaults(func=prepare)
    t = sub.add_parser("train", help="there: train until the time limit, copy weights and log to OUT")
    t.add_argument("--minutes", type=float, required=True)
    t.add_argument("--init", default=str(DATA / "init.safetensors"), help="the starting weights (as prepare printed)")
    t.add_argument("--out", required=True, help="where the weights and the log go ($OUT on the device)")
    t.add_argument("--run", default="/tmp/gpu-run", help="the run folder (checkpoints stay there)")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--crop", type=int, default=512)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--ema", type=float, default=0.999, help="decay of the exported weight average (refcodec train --ema)")
    t.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"], help="ms-ssim: the MS-SSIM model (refcodec train --metric)")
    t.add_argument("--preset", choices=["small", "medium"], help="the model's size (default: the starting weights' own; a wider "
                   "one widens them, models.widen)")  # fmt: skip
    t.add_argument("--workers", type=int, default=8, help="DataLoader workers (crops are cut on the CPU)")
    t.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    t.set_defaults(func=train)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
