"""What bounds a variable-rate model's top qualities: quantization, or the transforms themselves.

For center crops of a folder of images it gives the PSNR of g_s(g_a(x)) without quantization (the
transforms' ceiling; g_s is trained on quantized latents only, so a top quality can pass it by a
little) and, at each quality q, of g_s(round(y g_q) / g_q) with the gains of q (``layers.gain``):
the rounding of the coded latents, without entropy coding. Where the
top qualities come within a fraction of a dB of the ceiling, more rate buys nothing until g_a and g_s
reconstruct better. The ceiling of the crop's luma alone (BT.601, as a gray RGB image) tells what
colour costs the transforms, against detail, which the gray image keeps. Every figure is given in
PSNR and in MS-SSIM (dB, -10 log10(1 - MS-SSIM), as in the paper's Figure 6); the table prints the
metric the model was trained for:

    python benchmarks/vr_ceiling.py training/grm-small-vr.safetensors ../shared/datasets/photos/val \\
        -o results/bench/vr-ceiling.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim

from refcodec.eval.bdrate import msssim_db
from refcodec.images import find_images, read_rgb
from refcodec.models import registry


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(-10 * torch.log10((x_hat.clamp(0, 1) - x).square().mean()))


def scores(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    return {"psnr": psnr(x_hat, x), "ms_ssim_db": float(msssim_db(float(ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0))))}


@torch.no_grad()
def ceiling(model: torch.nn.Module, x: torch.Tensor, qualities: list[float]) -> dict:
    """PSNR and MS-SSIM (dB) of the unquantized round trip (of ``x`` and of its luma), and of the rounded
    latents at each quality, with the largest |latent| there."""
    y = model.g_a(x)
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    ceil, gray_ceil = scores(model.g_s(y), x), scores(model.g_s(model.g_a(gray)), gray)
    row = {"ceiling": ceil["psnr"], "gray_ceiling": gray_ceil["psnr"], "ceiling_ms_ssim_db": ceil["ms_ssim_db"],
           "gray_ceiling_ms_ssim_db": gray_ceil["ms_ssim_db"], "qualities": {}}  # fmt: skip
    for q in qualities:
        gain, inverse = model.y_gain(torch.tensor([float(q)]))
        y_hat = torch.round(y * gain)
        row["qualities"][str(q)] = scores(model.g_s(y_hat * inverse), x) | {"max_latent": float(y_hat.abs().max())}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", help="a variable-rate model (id or .safetensors)")
    p.add_argument("folder", help="images (center crops)")
    p.add_argument("--limit", type=int, default=8, help="first images of the folder")
    p.add_argument("--crop", type=int, default=256, help="center crop side, a multiple of 64, at least 192")
    p.add_argument("--qualities", type=float, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, help="JSON file of the results")
    args = p.parse_args()
    if args.crop % 64 or args.crop < 192:
        p.error("--crop must be a multiple of 64 and at least 192 (MS-SSIM's five scales need a side over 160)")
    torch.set_num_threads(args.threads)
    model = registry.load_model(args.weights).eval()
    if not getattr(model, "levels", 0):
        raise SystemExit(f"vr_ceiling: {args.weights} is not a variable-rate model")
    rows = {}
    for path in find_images(args.folder)[: args.limit]:
        image = read_rgb(path)
        left, top = (image.width - args.crop) // 2, (image.height - args.crop) // 2
        crop = np.asarray(image.crop((left, top, left + args.crop, top + args.crop)), dtype=np.float32) / 255
        rows[Path(path).name] = ceiling(model, torch.from_numpy(crop).permute(2, 0, 1)[None], args.qualities)
    keys = ("ceiling", "gray_ceiling", "ceiling_ms_ssim_db", "gray_ceiling_ms_ssim_db")
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    mean |= {q: float(np.mean([r["qualities"][str(q)]["psnr"] for r in rows.values()])) for q in args.qualities}
    mean |= {f"{q:g}_ms_ssim_db": float(np.mean([r["qualities"][str(q)]["ms_ssim_db"] for r in rows.values()]))
             for q in args.qualities}  # fmt: skip
    by_ms_ssim = model.config.get("metric") == "ms-ssim"
    metric, suffix = ("ms_ssim_db", "_ms_ssim_db") if by_ms_ssim else ("psnr", "")
    print(f"{'MS-SSIM (dB)' if by_ms_ssim else 'PSNR (dB)'} of {args.crop}-px center crops")
    print("image                    ceiling    gray " + " ".join(f"{'q' + format(q, 'g'):>7s}" for q in args.qualities))
    mean_row = {"ceiling" + suffix: mean["ceiling" + suffix], "gray_ceiling" + suffix: mean["gray_ceiling" + suffix],
                "qualities": {str(q): {metric: mean[f"{q:g}_ms_ssim_db" if by_ms_ssim else q]} for q in args.qualities}}  # fmt: skip
    for name, r in [*rows.items(), ("mean", mean_row)]:
        print(f"{name[:24]:24s} {r['ceiling' + suffix]:7.2f} {r['gray_ceiling' + suffix]:7.2f} "
              + " ".join(f"{r['qualities'][str(q)][metric]:7.2f}" for q in args.qualities))  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {"weights": args.weights, "steps": model.config.get("steps"), "folder": args.folder, "crop": args.crop,
                  "mean": {str(k): v for k, v in mean.items()}, "images": rows}  # fmt: skip
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
