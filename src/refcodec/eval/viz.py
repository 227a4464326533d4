"""Figures of what the entropy model does on one image: ``refcodec viz``.

    refcodec viz bits photo.rfc -o bits.png     # bits per latent position over the decoded image

The bit map is the information content -log2 p(y_hat) of every latent under the final stage's
Gaussian, summed over channels: the probabilities the range coder used (floored, as the coder
floors them, at 2^-24), so the map adds up to the size of the latent stream, up to the coder's
rounding of the probabilities and its few bytes of overhead. Models with a context
model (``grm``, ``joint``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import codec
from ..bitstream import unpack
from ..entropy.gaussian import exact_likelihood
from ..errors import RefcodecError
from ..models.base import STRIDE, decode_factorized
from ..models.registry import load_model


CODER_RESOLUTION = 2.0**-24  # the range coder gives every symbol at least this probability


@torch.no_grad()
def bit_map(data: bytes, model=None) -> tuple[np.ndarray, np.ndarray]:
    """(decoded image as an array, bits of each latent position (H/16, W/16)) of a refcodec file."""
    header, streams = unpack(data)
    model = model or load_model(header.model)
    if not hasattr(model, "exact_predict"):
        raise RefcodecError(f"a bit map needs a model with a context model (grm, joint), not {header.model!r}")
    image = codec.decompress(data, model)  # checks the file and the weights first
    height, width = header.height + header.pad_bottom, header.width + header.pad_right
    h, w = height // STRIDE, width // STRIDE
    own = model.schedule.name
    model.use_schedule(header.schedule)
    try:
        y_hat = model.decode(streams, height, width)
        hyper = model._hyper_rows(decode_factorized(model.density, streams[0], h // 4, w // 4)) if model.hyperprior else None
        mean, log_scale = model.exact_predict(y_hat, hyper)[-1]
    finally:
        model.use_schedule(own)
    rows = y_hat.double()[0].permute(1, 2, 0).reshape(-1, model.M)
    p = exact_likelihood(rows, mean, log_scale).clamp_min(CODER_RESOLUTION)  # the coder's floor
    bits = -torch.log2(p).sum(1).view(h, w)
    return np.asarray(image.convert("RGB")), bits.numpy()


def draw_bits(image: np.ndarray, bits: np.ndarray, path: Path, title: str) -> None:
    """The image, and the bits per pixel of each latent position laid over it."""
    height, width = image.shape[:2]
    per_pixel = np.kron(bits / STRIDE**2, np.ones((STRIDE, STRIDE)))[:height, :width]
    fig = Figure(figsize=(12, 4.4 * height / width + 0.8))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.imshow(image)
    right.imshow(image)
    heat = right.imshow(per_pixel, cmap="inferno", alpha=0.75)
    fig.colorbar(heat, ax=right, label="bits per pixel", fraction=0.035)
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refcodec viz", description="Figures of what the entropy model does on one image.")
    sub = p.add_subparsers(dest="figure", required=True)
    b = sub.add_parser("bits", help="bits per latent position of a compressed file, over the decoded image")
    b.add_argument("file", type=Path)
    b.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    b.add_argument("--model", help="weights to decode with (default: the shipped model named in the file)")
    args = p.parse_args(argv)
    if not args.file.is_file():
        raise RefcodecError(f"{args.file}: no such file")
    data = args.file.read_bytes()
    image, bits = bit_map(data, load_model(args.model) if args.model else None)
    header, streams = unpack(data)
    title = (f"{args.file.name}: {header.model}, {8 * len(data) / (header.width * header.height):.3f} bpp; "
             f"latents {bits.sum() / 8:.0f} bytes by the model, {len(streams[-1])} bytes in the file")  # fmt: skip
    draw_bits(image, bits, args.output, title)
    print(f"{args.file} -> {args.output}: {bits.sum():.0f} bits over {bits.size} latent positions")
    return 0
