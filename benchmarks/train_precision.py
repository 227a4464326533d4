"""Would bfloat16 convolutions speed up CPU training without hurting it? Time, loss and gradients of a step.

This CPU (AMD EPYC, avx512_bf16) runs bfloat16 convolutions faster than float32 ones. Here every
convolution of the model takes its input and weights in bfloat16 and gives float32 back, so the
quantization noise, the likelihoods and the loss stay float32. On one batch of 256-px crops it times
a training step both ways (alternating rounds) and compares the bfloat16 step's loss and gradient with
the float32 one's, per module (cosine and norm ratio):

    python benchmarks/train_precision.py ../shared/datasets/photos/train --threads 1 -o results/bench/train-precision.json

``train`` runs ``refcodec train`` with the same bfloat16 convolutions, for an A/B against a float32 run
of the same arguments (the same batches and noise):

    python benchmarks/train_precision.py train --init grm/small/vr --out runs/ab-bf16 ...   # refcodec train's options
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_step import step_fn  # noqa: E402

from refcodec import allocator  # noqa: E402
from refcodec.images import find_images, read_rgb  # noqa: E402
from refcodec.layers import gain  # noqa: E402
from refcodec.models import registry  # noqa: E402
from refcodec.train.trainer import rate_distortion, training_layout  # noqa: E402


@contextlib.contextmanager
def bf16_convolutions():
    """Every F.conv2d and F.conv_transpose2d (nn.Conv2d's too) on bfloat16 input and weights, float32 output."""
    conv2d, transposed = F.conv2d, F.conv_transpose2d

    def wrap(conv):
        def bf16(x, w, b=None, *args, **kwargs):
            return conv(x.bfloat16(), w.bfloat16(), None if b is None else b.bfloat16(), *args, **kwargs).float()

        return bf16

    F.conv2d, F.conv_transpose2d = wrap(conv2d), wrap(transposed)
    try:
        yield
    finally:
        F.conv2d, F.conv_transpose2d = conv2d, transposed


def gradient(model, x: torch.Tensor, qualities: torch.Tensor, precision) -> tuple[dict, dict]:
    """The loss terms and the gradient per top-level module of one step (noise drawn from seed 1)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with precision():
        lmbda = gain.interpolate_log([registry.LAMBDAS[q] for q in range(model.levels)], qualities)
        metrics = rate_distortion(model(x, qualities), x, lmbda, warm=False)
        metrics["loss"].backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            grads.setdefault(".".join(name.split(".")[:2]), []).append(p.grad.flatten())
    return {k: float(v.detach()) for k, v in metrics.items()}, {k: torch.cat(v) for k, v in grads.items()}


def main() -> None:
    if sys.argv[1:2] == ["train"]:
        allocator.reexec()
        from refcodec.train import trainer

        with bf16_convolutions():
            trainer.main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="training images (the first --batch, top-left --crop squares)")
    p.add_argument("--model", default="grm/small/vr", help="a variable-rate model (qualities spread over its range)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=Path("results/bench/train-precision.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = [im for im in map(read_rgb, find_images(args.folder)) if min(im.size) >= args.crop][: args.batch]
    if len(images) < args.batch:
        raise SystemExit(f"train_precision: {args.folder} has fewer than {args.batch} images of {args.crop} px or more")
    crops = [torch.from_numpy(np.asarray(im, dtype=np.float32)[: args.crop, : args.crop] / 255) for im in images]
    x = training_layout(torch.stack(crops).permute(0, 3, 1, 2))
    model = registry.load_model(args.model).train()
    qualities = torch.linspace(0, model.levels - 1, args.batch)
    precisions = {"float32": contextlib.nullcontext, "bfloat16 convolutions": bf16_convolutions}
    (loss32, g32), (loss16, g16) = (gradient(model, x, qualities, precisions[k]) for k in precisions)
    modules = {k: {"norm": float(g32[k].norm()), "cosine": float(F.cosine_similarity(g32[k], g16[k], dim=0)),
                   "norm_ratio": float(g16[k].norm() / g32[k].norm())} for k in g32}  # fmt: skip
    whole32, whole16 = torch.cat(list(g32.values())), torch.cat(list(g16.values()))
    step = step_fn(model, x, model.levels)
    seconds = {k: [] for k in precisions}
    for _ in range(args.rounds):
        for k, precision in precisions.items():
            with precision():
                step()  # untimed: Adam state, oneDNN's kernels for this precision
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
            seconds[k].append((time.perf_counter() - start) / args.steps)
    result = {"model": args.model, "folder": args.folder, "batch": args.batch, "crop": args.crop, "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "seconds_per_step": seconds, "loss": {"float32": loss32, "bfloat16 convolutions": loss16},
              "gradient": {"cosine": float(F.cosine_similarity(whole32, whole16, dim=0)), "norm_ratio": float(whole16.norm() / whole32.norm()),
                           "modules": modules}}  # fmt: skip
    for k in precisions:
        print(f"{k}: {min(seconds[k]):.2f} s/step, loss {result['loss'][k]['loss']:.4f}, bpp {result['loss'][k]['bpp']:.4f}, "
              f"PSNR {result['loss'][k]['psnr']:.2f} dB")  # fmt: skip
    print(f"gradient against float32: cosine {result['gradient']['cosine']:.3f}, norm ratio {result['gradient']['norm_ratio']:.3f}")
    for k, m in modules.items():
        print(f"  {k:24s} |g| {m['norm']:.2e}  cosine {m['cosine']:.3f}  norm ratio {m['norm_ratio']:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
