"""Training loop: loss R + lambda * D (eq. 1, 3), checkpoints, validation, weights export.

Run ``refcodec train --data DIR --val DIR --out RUN`` (see ``refcodec train --help``), on
several processes with ``--nproc K`` or ``torchrun --nproc_per_node=K -m refcodec.train``.
For models with several entropy stages the rate is a weighted sum of the stages' rates:
0.3:0.3:0.4 during warm-up, 0.1:0.1:0.8 afterwards (section 5.1); only the last stage
codes, so it keeps the larger weight. The distortion is MSE or MS-SSIM (section 5.1).

``--resume`` continues exactly: the data order is a pure function of the seed and the
number of batches drawn (see ``data``), and the checkpoint restores the model, optimizer,
schedule, weight average and the random state that draws the quantization noise.

``--ema D`` keeps an exponential moving average of the weights (Polyak and Juditsky 1992,
"Acceleration of Stochastic Approximation by Averaging"; ``torch.optim.swa_utils``), which is
what is validated and exported: at a learning rate held near its peak, the weights of
neighbouring steps scatter about the minimum, and their average codes better than any of them.
Its decay warms up (``ema_decay``), so that a run's average holds only that run's recent weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm
from pytorch_msssim import ms_ssim

from .. import codec
from ..errors import RefcodecError
from ..layers import gain
from ..metrics import MS_SSIM_MIN_SIDE
from ..models import convert, registry, widen
from ..models.base import ALIGNMENT, CompressionModel
from . import checkpoint, distributed
from .checkpoint import logged_time
from .data import ImageFolder, batches
from .log import RunLog

PHASES = 16  # MS-SSIM's coarsest pooling block (2^4): the loss window is shifted by up to this much
MS_SSIM_MIN_CROP = MS_SSIM_MIN_SIDE + PHASES  # MS-SSIM's five scales, in a window up to PHASES px smaller
VAL_PHASES = [(0, 0), (0, 1), (1, 0), (1, 1)]  # validation's MS-SSIM: the mean over the pyramid's 2x2 phases
VAL_QUALITIES = [1, 4, 7]  # a variable-rate model is validated at these qualities


def stage_weights(stages: int, warm: bool) -> list[float]:
    """Rate weights: the last stage gets 0.4 (warm-up) or 0.8, the others share the rest."""
    if stages == 1:
        return [1.0]
    last = 0.4 if warm else 0.8
    return [(1 - last) / (stages - 1)] * (stages - 1) + [last]


def warmup_steps(given: int | None, steps: int, base: int) -> int:
    """The steps (global, counted from 0) with the warm-up rate weights: ``given``, or by default the first
    fifth of the schedule for a model trained from scratch and none for one that starts from trained
    weights (``base`` > 0 steps), whose stages have had their warm-up."""
    if given is not None:
        return given
    return 0 if base else steps // 5


def training_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch as training takes it: channels-last on a CPU, so that every convolution runs channels-last
    (a variable-rate grm step 1.83 -> 1.35 s on 2 threads, ``benchmarks/train_step.py``)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def growth(args, source, step: int) -> dict | None:
    """The rate-pull ramp of a widened model (``--grow-warmup``): the size it grew from and the ramp's steps;
    with ``--grow-reseed HOLD``, the step of the reseed and the ramp after the HOLD steps that hold the new rows."""
    if not args.grow_warmup and not args.grow_reseed:
        return None
    if args.grown_from:
        n, m = (int(v) for v in args.grown_from.lower().split("x"))
    elif isinstance(source, CompressionModel) and (source.N, source.M) != (registry.PRESETS[args.preset]["N"], registry.PRESETS[args.preset]["M"]):
        n, m = source.N, source.M
    else:
        raise SystemExit("refcodec train: --grow-warmup and --grow-reseed need --init of a narrower model, or --grown-from NxM")
    if not args.grow_reseed:
        return {"N": n, "M": m, "start": step, "steps": args.grow_warmup}
    hold = step + args.grow_reseed
    return {"N": n, "M": m, "start": hold, "steps": max(1, args.grow_warmup), "reseeded": step, "held_until": hold}


def reseed_crops(args) -> torch.Tensor:
    """``widen.RESEED_CROPS`` training crops of ``widen.RESEED_CROP`` pixels, spread over the training images (more
    than one of an image where they are fewer), for ``widen.reseed``: the same every time."""
    data = ImageFolder(args.data, widen.RESEED_CROP, seed=args.seed)
    every = max(1, len(data) // widen.RESEED_CROPS)
    return torch.stack([data[k * every % len(data), k * every // len(data)] for k in range(widen.RESEED_CROPS)])


def ema_decay(decay: float, averaged: int) -> float:
    """The weight average's decay after ``averaged`` updates: ``decay``, warmed up as min(decay, (1 + n) / (10 + n))
    (the num_updates of TensorFlow's ExponentialMovingAverage), so that it spans about the last n / 10 steps early on.
    With a fixed 0.999 the average of a run's first 500 steps still held 60% of its initial weights: after a
    ``--grow-reseed`` the new channels' entropy parameters, half learned and half not, cost 5.30 bpp at quality 7
    on 8 photos/val crops where the weights themselves cost 0.58 (``benchmarks/grown_channels.py``)."""
    return min(decay, (1 + averaged) / (10 + averaged))


def hold_new_rows(model, grow: dict, step: int) -> None:
    """Zero the gradient of g_a's rows of the grown latent channels before ``grow["held_until"]`` (``--grow-reseed``):
    their reseeded values stay while g_s and the entropy model learn to read them (``widen.reseed``)."""
    if step < grow.get("held_until", step):
        for p in (model.g_a[-1].weight, model.g_a[-1].bias):
            if p.grad is not None:
                p.grad[grow["M"]:] = 0


def rate_distortion(out: dict, x: torch.Tensor, lmbda: float | torch.Tensor, warm: bool, metric: str = "mse",
                    balance: torch.Tensor | None = None, phases: list[tuple[int, int]] | None = None) -> dict:  # fmt: skip
    """bpp (weighted over stages, plus z), the coding-stage bpp, MSE, PSNR, MS-SSIM (if the metric) and the loss,
    as means over the images; ``lmbda`` is one value or one per image (a variable-rate model's batch),
    ``balance`` a factor per image that the loss of each image is multiplied by (``balance_weights``), and
    ``phases`` those of MS-SSIM's pyramid to average (default: one drawn at random, ``phase_shifted_ms_ssim``)."""
    pixels = x.shape[2] * x.shape[3]
    lik = out["likelihoods"]

    def bits(p: torch.Tensor) -> torch.Tensor:  # per image
        return -torch.log2(p).flatten(1).sum(1)

    stage_bits = [bits(p) for p in lik["y"]]
    z_bits = bits(lik["z"]) if "z" in lik else x.new_zeros(len(x))
    weights = stage_weights(len(stage_bits), warm)
    bpp = (sum(w * b for w, b in zip(weights, stage_bits)) + z_bits) / pixels
    mse = torch.mean((out["x_hat"] - x) ** 2, dim=(1, 2, 3))
    psnr = -10 * torch.log10(mse.mean().clamp_min(1e-10))
    metrics = {"bpp": bpp.mean(), "coding_bpp": ((stage_bits[-1] + z_bits) / pixels).mean(), "mse": mse.mean(), "psnr": psnr}
    if metric == "ms-ssim":
        score = phase_shifted_ms_ssim(out["x_hat"], x, phases)
        metrics["ms_ssim"] = score.mean()
        loss = bpp + lmbda * (1 - score)
    else:
        loss = bpp + lmbda * 255**2 * mse
    metrics["loss"] = torch.mean(loss if balance is None else loss * balance)
    return metrics


def phase_shifted_ms_ssim(x_hat: torch.Tensor, x: torch.Tensor, phases: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """MS-SSIM per image over a window shifted by a random (dy, dx) in [0, PHASES), PHASES pixels smaller,
    or its mean over the given ``phases`` (validation: no random draw, so that a resumed run draws alike).

    MS-SSIM's pyramid pools 2x2 blocks aligned with the crop's corner, and so are the model's strided
    transforms. At a fixed phase a model learns to hide error in patterns that the aligned pooling cancels:
    an MS-SSIM fine-tune trained so scored 19.29 dB on bsds500/val at quality 8 with the pyramid aligned and
    16.03 dB one pixel off it, where the MSE model scores 18.49-18.53 dB at every phase
    (``benchmarks/ms_ssim_phase.py``). A random phase per step makes the loss an unbiased estimate of
    MS-SSIM averaged over every alignment of the pyramid.
    The draw uses torch's generator, which checkpoints restore, so a resumed run draws the same phases."""
    size = (x.shape[2] - PHASES, x.shape[3] - PHASES)
    drawn = [tuple(int(v) for v in torch.randint(PHASES, (2,)))] if phases is None else phases
    return torch.stack([windowed_ms_ssim(x_hat, x, phase, size) for phase in drawn]).mean(0)


def windowed_ms_ssim(x_hat: torch.Tensor, x: torch.Tensor, phase: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """MS-SSIM per image of the ``size`` (h, w) windows of ``x_hat`` and ``x`` whose corner is at ``phase`` (dy, dx):
    the pyramid's 2x2 pooling then starts ``phase`` pixels off the image's grid."""
    (dy, dx), (h, w) = phase, size
    window = (slice(None), slice(None), slice(dy, dy + h), slice(dx, dx + w))
    return ms_ssim(x_hat[window], x[window], data_range=1.0, size_average=False)


def lr_factor(run_step: int, step: int, args: argparse.Namespace) -> float:
    """The learning rate's factor (of ``--lr``) at global ``step``, the ``run_step``-th of this run: a linear warm-up
    over the run's first ``--lr-warmup`` steps, a cosine decay to 10% over ``--steps``, and with ``--cooldown N`` a
    linear decay to 0 over the N steps before ``--stop-at``: the decay phase of a warmup-stable-decay schedule, which
    branches off a run held at its peak rate (Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations", section 3)."""
    warm = min(1.0, (run_step + 1) / args.lr_warmup)
    cosine = 0.55 + 0.45 * math.cos(math.pi * min(1.0, step / args.steps))
    cool = min(1.0, (args.stop_at - step) / args.cooldown) if args.cooldown else 1.0
    return warm * cosine * cool


def balance_weights(lmbda: torch.Tensor, reference: float) -> torch.Tensor:
    """Per-image loss factors ``reference / lambda`` of a variable-rate batch. The gradient that an image's
    R + lambda D sends to the shared weights grows in proportion to lambda (quality 8's is about 100 times
    quality 1's, ``benchmarks/vr_gradients.py``), so a plain mean lets the highest qualities steer every step.
    Dividing by lambda leaves each quality's optimum (R / lambda + D has the same minimizer as R + lambda D)
    and gives every quality an equal pull, as BD-rate, an average of relative rate differences, weighs them."""
    return reference / lmbda


@torch.no_grad()
def validate(model, images: ImageFolder, lmbda: float, metric: str, device: torch.device, model_id: str,
             quality: float | None = None) -> dict:  # fmt: skip
    """Means over the validation crops: the model's estimate (coding-stage bpp, PSNR, MS-SSIM if the metric,
    loss on rounded latents) and real bitstreams (file bpp and PSNR of the decoded 8-bit image); a
    variable-rate model at ``quality``."""
    model.eval()
    coder = copy.deepcopy(model).cpu()
    coder.update()
    coder.id = model_id
    coder.use_quality(quality)
    extra = () if quality is None else (torch.tensor([float(quality)], device=device),)
    rows = []
    for i in range(len(images)):
        x = images[i].unsqueeze(0)
        row = rate_distortion(model(x.to(device), *extra), x.to(device), lmbda, warm=False, metric=metric, phases=VAL_PHASES)
        image = codec.tensor_to_image(x)
        try:
            data = codec.compress(image, coder)
            row["file_bpp"] = torch.tensor(8 * len(data) / (image.width * image.height))
            row["file_psnr"] = torch.tensor(codec.psnr(image, codec.decompress(data, coder)))
        except (RefcodecError, ValueError) as e:  # e.g. weights beyond the exact fixed-point range
            tqdm.write(f"validation image {i}: coding failed ({e})")
            row["file_bpp"] = row["file_psnr"] = torch.tensor(math.nan)
        rows.append(row)
    model.train()
    names = {"val_bpp": "coding_bpp", "val_psnr": "psnr", "val_loss": "loss", "val_file_bpp": "file_bpp",
             "val_file_psnr": "file_psnr"}  # fmt: skip
    if metric == "ms-ssim":
        names["val_ms_ssim"] = "ms_ssim"
    return {name: float(torch.stack([r[k].float() for r in rows]).mean()) for name, k in names.items()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refcodec train", description="Train a registry model on a folder of images.")
    p.add_argument("--data", required=True, nargs="+", help="folders of training images (searched recursively)")
    p.add_argument("--val", help="folder of validation images (center crops)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, weights")
    p.add_argument("--model", default="grm", choices=sorted(registry.MODELS), help="architecture (default grm)")
    p.add_argument("--preset", default="small", choices=sorted(registry.PRESETS), help="model size (default small: N=64, M=96)")
    p.add_argument("--quality", type=int, default=registry.DEFAULT_QUALITY, choices=sorted(registry.LAMBDAS),
                   help="sets lambda (CompressAI's values for qualities 1-8, and 0 at half of quality 1's)")  # fmt: skip
    p.add_argument("--variable-rate", action="store_true",
                   help="one model for every quality 0-8 (gain units): each image of a batch draws a quality uniformly, "
                   "with lambda interpolated between the levels' lambdas (log-linear)")  # fmt: skip
    p.add_argument("--balance", default="lambda", choices=["lambda", "none"],
                   help="variable-rate: lambda divides each image's loss by its lambda (in units of the middle level's), so that "
                   "every quality pulls the shared weights equally; none: the plain mean of R + lambda D")  # fmt: skip
    p.add_argument("--objective", "--metric", dest="metric", default="mse", choices=["mse", "ms-ssim"],
                   help="the distortion trained for: lambda*255^2*MSE or lambda*(1 - MS-SSIM)")  # fmt: skip
    p.add_argument("--lmbda", type=float, help="override the quality's lambda")
    p.add_argument("--flags", default="{}", help='model flags as JSON, e.g. \'{"reference": false}\'')
    p.add_argument("--steps", type=int, default=100_000, help="length of the schedule (learning rate, rate weights)")
    p.add_argument("--stop-at", type=int, help="stop after this step, leaving the schedule as if --steps were run")
    p.add_argument("--time-limit", type=float, help="stop (saving a checkpoint) after this many seconds of training in this process")
    p.add_argument("--warmup-steps", type=int, help="steps with the 0.3:0.3:0.4 rate weights (default: steps / 5 from scratch, "
                   "0 from trained weights)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="images per batch and process (global batch: batch x processes)")
    p.add_argument("--crop", type=int, default=256, help="patch side, a multiple of 64, above 176 for ms-ssim (paper: 512)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of Adam (cosine decay to 10%%)")
    p.add_argument("--lr-warmup", type=int, default=100, help="steps of linear learning-rate warm-up")
    p.add_argument("--cooldown", type=int, default=0, help="decay the learning rate linearly to 0 over the last N steps before "
                   "--stop-at (a cooled-down branch of a run held at its peak rate, e.g. a release candidate)")  # fmt: skip
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--ema", type=float, default=0.0, help="validate and export an exponential moving average of the weights "
                   "with this decay per step (e.g. 0.999: about the last 1,000 steps; warmed up, ema_decay; 0: the weights themselves)")  # fmt: skip
    p.add_argument("--val-every", type=int, default=500, help="steps between validations (estimate and real bitstreams)")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--val-images", type=int, default=8, help="validation images (center crops) used")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the noise")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if available (process k: cuda:k)")
    p.add_argument("--nproc", type=int, default=1, help="train on this many local processes (data-parallel)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: library default, or cores / local processes)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward (CPU, 2 threads: 0.82 instead of 1.03 s per step, after ~90 s of compiling)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    p.add_argument("--grow-warmup", type=int, default=0, metavar="STEPS",
                   help="after widening (--init of a narrower model, or --grown-from): ramp the rate's pull on the new latent "
                   "channels from 0 to 1 over STEPS steps, so that they leave 0 (GRM.pull_new_channels); kept in the weights' config")  # fmt: skip
    p.add_argument("--grow-reseed", type=int, default=0, metavar="HOLD",
                   help="after widening: re-initialize the grown latent channels (g_a's rows: residual principal components; "
                   "zero reads: models.widen.reseed), hold those rows for HOLD steps while the decoder and entropy model learn them, "
                   "then ramp the rate's pull over --grow-warmup steps; kept in the weights' config")  # fmt: skip
    p.add_argument("--grown-from", metavar="NxM", help="with --grow-warmup or --grow-reseed, where --init is already wide: the size it was widened from")
    p.add_argument("--init", help="start from weights: a model id or .safetensors of this architecture or of its GDN "
                   "version (two-stage init, section 5.3), or a CompressAI mbt2018 checkpoint")
    args = p.parse_args(argv)
    if args.crop % ALIGNMENT:
        p.error(f"--crop must be a multiple of {ALIGNMENT} (the model's total downsampling), got {args.crop}")
    if args.metric == "ms-ssim" and args.crop <= MS_SSIM_MIN_CROP:
        p.error(f"--metric ms-ssim needs --crop above {MS_SSIM_MIN_CROP} (5 scales of 11-px windows, shifted by up to {PHASES} px), got {args.crop}")
    if args.cooldown and (args.cooldown < 0 or args.stop_at is None):
        p.error("--cooldown N needs --stop-at (the step where the learning rate reaches 0) and N > 0")
    if not 0 <= args.ema < 1:
        p.error(f"--ema must lie in [0, 1), got {args.ema}")
    if args.nproc > 1 and "WORLD_SIZE" in os.environ:
        p.error("--nproc starts its own processes; do not combine it with torchrun")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.nproc > 1:
        distributed.launch(args.nproc, train, args)
    else:
        train(args)


def train(args: argparse.Namespace) -> torch.nn.Module:
    """Train in this process (one of a group under torchrun or --nproc); returns the model."""
    ctx = distributed.setup(args.device, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lambdas = registry.LAMBDAS if args.metric == "mse" else registry.LAMBDAS_MS_SSIM
    flags = json.loads(args.flags)
    if args.variable_rate:
        flags["levels"] = len(lambdas)
        level_lambdas = [lambdas[q] for q in sorted(lambdas)]
        quality, lmbda = None, level_lambdas
        reference = level_lambdas[len(level_lambdas) // 2] if args.balance == "lambda" else None
    else:
        quality, lmbda = args.quality, args.lmbda or lambdas[args.quality]
    config = {"name": args.model, "preset": args.preset, **registry.PRESETS[args.preset], "flags": flags, "quality": quality,
              "metric": args.metric, "lambda": lmbda, "id": registry.model_id(args.model, args.preset, quality, args.metric),
              "data": [str(d) for d in args.data], "hardware": ctx.hardware}  # fmt: skip
    if args.variable_rate:
        config["balance"] = args.balance

    torch.manual_seed(args.seed)  # the same initial model in every process
    model = registry.build(args.model, args.preset, **flags)
    step, drawn, elapsed, base = 0, 0, 0.0, 0  # optimizer steps, batches drawn, wall seconds, step of --init
    state = checkpoint.load(out, quiet=not ctx.main) if args.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        base, step = state.get("base_step", 0), state["step"]
        drawn = state.get("batches", step - base)
        elapsed = state.get("elapsed", logged_time(out / "log.csv"))
        if "init" in state.get("config", {}):  # where the run started, whatever this command line says
            config["init"] = state["config"]["init"]
        if "grow" in state.get("config", {}):
            config["grow"] = state["config"]["grow"]
    elif args.init:  # weights only, fresh optimizer; the step count continues from refcodec weights
        foreign = Path(args.init).is_file() and Path(args.init).suffix != ".safetensors"  # a CompressAI checkpoint
        source = args.init if foreign else registry.load_model(args.init)
        how = convert.initialize(model, source)
        prior = {} if foreign else source.config
        step = base = prior.get("steps", 0)
        elapsed = prior.get("wall_seconds", 0.0)
        config["init"] = {"source": args.init, "id": prior.get("id"), "steps": base, "how": how,
                          "hardware": prior.get("hardware"), "wall_seconds": prior.get("wall_seconds")}  # fmt: skip
        grow = growth(args, source, base) or prior.get("grow")  # a ramp started by an earlier run goes on
        if grow:
            config["grow"] = grow
        if args.grow_reseed:
            widen.reseed(model, grow["M"], reseed_crops(args))
        if ctx.main:
            print(how)
    warmup = config["warmup_steps"] = warmup_steps(args.warmup_steps, args.steps, base)
    model.to(ctx.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, base + s, args))  # s: steps of this run
    # the average starts from the weights after the first step (n_averaged = 0: a copy); its buffers are the model's
    def average(averaged: list, current: list, n: torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1 - ema_decay(args.ema, int(n)))

    ema = AveragedModel(model, multi_avg_fn=average) if args.ema else None
    candidate = model if ema is None else ema.module  # what is validated and exported
    checkpoint.seed(args.seed + ctx.rank)  # each process draws its own quantization noise
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        checkpoint.set_rng_state(state["rng"], ctx.rank, ctx.device)
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        elif ema is not None and ctx.main:
            print(f"refcodec train: the checkpoint holds no weight average; averaging starts at step {step}")
    if ema is not None:
        config["ema"] = args.ema
    if args.cooldown:
        config["cooldown"] = {"steps": args.cooldown, "until": args.stop_at}

    data = ImageFolder(args.data, args.crop, seed=args.seed)
    if data.upscaled and ctx.main:
        print(f"refcodec train: {data.upscaled} of {len(data)} training images are smaller than the {args.crop}-px crop "
              "and are upscaled (bicubic) to hold it")  # fmt: skip
    val = ImageFolder(args.val, args.crop, limit=args.val_images) if args.val and ctx.main else None
    stream = batches(data, args.batch, ctx.rank, ctx.world, start=drawn, workers=args.workers, pin_memory=ctx.device.type == "cuda")
    forward = ctx.wrap(model)
    forward = torch.compile(forward) if args.compile else forward
    ms_ssim_columns = ["ms_ssim"] if args.metric == "ms-ssim" else []
    logged = ["loss", "bpp", "psnr", *ms_ssim_columns]
    val_names = ["val_bpp", "val_psnr", "val_file_bpp", "val_file_psnr"] + [f"val_{k}" for k in ms_ssim_columns]
    val_at = VAL_QUALITIES if args.variable_rate else [None]
    columns = logged + ([f"{name}_q{q}" for q in val_at for name in val_names] if args.variable_rate else val_names)
    log = RunLog(out, columns, args.steps, step, resumed=state is not None, tensorboard=args.tensorboard, enabled=ctx.main)
    start = time.time() - elapsed  # wall time accumulates across resumes
    last = min(args.steps, args.stop_at or args.steps)
    deadline = math.inf if args.time_limit is None else time.time() + args.time_limit
    while step < last:
        if "grow" in config:
            g = config["grow"]
            model.pull_new_channels(g["N"], g["M"], min(1.0, max(0.0, (step - g["start"]) / g["steps"])))
        x = training_layout(next(stream).to(ctx.device, non_blocking=True))
        drawn += 1
        if args.variable_rate:  # drawn on the CPU generator, which the checkpoint restores
            q = torch.rand(len(x)) * (len(lambdas) - 1)
            prediction = forward(x, q.to(ctx.device))
            step_lambda = gain.interpolate_log(level_lambdas, q).to(ctx.device)
            balance = None if reference is None else balance_weights(step_lambda, reference)
        else:
            prediction, step_lambda, balance = forward(x), lmbda, None
        metrics = rate_distortion(prediction, x, step_lambda, warm=step < warmup, metric=args.metric, balance=balance)
        optimizer.zero_grad(set_to_none=True)
        metrics["loss"].backward()  # with several processes, this averages the gradients
        if "grow" in config:
            hold_new_rows(model, config["grow"], step)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        scalars = ctx.mean({**{k: metrics[k] for k in logged}, "grad_norm": grad_norm})
        if not all(map(math.isfinite, scalars.values())):  # non-finite in any process: all processes skip
            log.say(f"step {step}: non-finite loss or gradient, step skipped")
            continue
        scalars["lr"] = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        if args.time_limit is not None and ctx.agree(time.time() >= deadline):  # every process stops at the same step
            last = step
        if val is not None and (step % args.val_every == 0 or step == last):
            for q in val_at:
                at = validate(candidate, val, lmbda if q is None else level_lambdas[q], args.metric, ctx.device, config["id"], q)
                named = at if q is None else {f"{k}_q{q}": v for k, v in at.items()}
                scalars |= named | (at if q == val_at[len(val_at) // 2] else {})  # the progress line: the middle one
        log.step(step, time.time() - start, scalars)
        if step % args.save_every == 0 or step == last:
            rngs = ctx.gather(checkpoint.rng_state(ctx.device))
            if ctx.main:
                log.flush()
                checkpoint.save(out, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "schedule": schedule.state_dict(), "step": step, "batches": drawn, "rng": rngs,
                                      "config": config, "elapsed": time.time() - start, "base_step": base,
                                      **({} if ema is None else {"ema": ema.state_dict()})})  # fmt: skip
                seconds = round(time.time() - start)
                checkpoint.export(candidate, out / "weights.safetensors", {**config, "steps": step, "wall_seconds": seconds})
    log.close()
    del forward  # DDP's reducer must not outlive the process group (Context.close)
    ctx.close()
    return model
