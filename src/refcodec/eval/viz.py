"""Figures of what the entropy model does on one image: ``refcodec viz``.

    refcodec viz bits photo.rfc -o bits.png        # bits per latent position over the decoded image
    refcodec viz reference photo.rfc -o ref.png    # relevance pairs (Figure 8), S and U maps (Figure 10)

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
from matplotlib.patches import Rectangle

from .. import codec
from ..bitstream import unpack
from ..entropy.gaussian import exact_likelihood
from ..errors import RefcodecError
from ..models.base import STRIDE, decode_factorized
from ..models.registry import load_model


CODER_RESOLUTION = 2.0**-24  # the range coder gives every symbol at least this probability


@torch.no_grad()
def analyse(data: bytes, model=None) -> dict:
    """Decode a refcodec file and rerun its entropy model: the decoded image (array), the bits of
    each latent position (H/16, W/16) and, for ``grm``, the reference of each position
    (``index`` in raster order, similarity ``S``, confidence ``U``; each (H/16, W/16))."""
    with codec.opened(data, model) as (header, streams, model):
        if not hasattr(model, "exact_predict"):
            raise RefcodecError(f"these figures need a model with a context model (grm, joint), not {header.model!r}")
        height, width = header.padded_size
        h, w, trace = height // STRIDE, width // STRIDE, {}
        y_hat = model.decode(streams, height, width)
        hyper = model._hyper_rows(decode_factorized(model.density, streams[0], h // 4, w // 4)) if model.hyperprior else None
        mean, log_scale = model.exact_predict(y_hat, hyper, trace)[-1]
        image = codec.to_image(header, model.synthesize(y_hat))
    rows = y_hat.double()[0].permute(1, 2, 0).reshape(-1, model.M)
    p = exact_likelihood(rows, mean, log_scale).clamp_min(CODER_RESOLUTION)  # the coder's floor
    out = {"image": np.asarray(image.convert("RGB")), "bits": -torch.log2(p).sum(1).view(h, w).numpy()}
    out.update({k: v.view(h, w).numpy() for k, v in trace.items()})
    return out


def relevance_pairs(index: np.ndarray, S: np.ndarray, U: np.ndarray, count: int = 8, min_distance: int = 3) -> list:
    """The ``count`` (target, reference) latent positions with the largest S x U, the reference at
    least ``min_distance`` latents away and every target apart from the others (Figure 8)."""
    h, w = S.shape
    score = (S * U.flatten()[index]).flatten()
    pairs = []
    for t in np.argsort(-score, kind="stable"):
        target, ref = divmod(int(t), w), divmod(int(index.flatten()[t]), w)
        far = max(abs(target[0] - ref[0]), abs(target[1] - ref[1])) >= min_distance
        apart = all(max(abs(target[0] - a[0]), abs(target[1] - a[1])) >= 3 for a, _ in pairs)
        if far and apart and score[t] > 0:
            pairs.append((target, ref))
        if len(pairs) == count:
            break
    return pairs


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


def draw_reference(found: dict, path: Path, title: str) -> None:
    """Relevance pairs over the image (Figure 8), and the maps of S and U (Figure 10)."""
    image, S, U = found["image"], found["S"], found["U"]
    height, width = image.shape[:2]
    fig = Figure(figsize=(15, 4.4 * height / width + 0.8))
    pairs_ax, s_ax, u_ax = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    pairs_ax.imshow(image)
    for n, (target, ref) in enumerate(relevance_pairs(found["index"], S, U), 1):
        for (r, c), colour in ((target, "yellow"), (ref, "cyan")):  # the 3 x 3 latents the search compares
            box = Rectangle(((c - 1) * STRIDE, (r - 1) * STRIDE), 3 * STRIDE, 3 * STRIDE, fill=False, color=colour, lw=1.5)
            pairs_ax.add_patch(box)
            pairs_ax.text((c - 1) * STRIDE, (r - 1) * STRIDE - 2, str(n), color=colour, fontsize=9, weight="bold")
    pairs_ax.set_title("targets (yellow) and their references (cyan)")
    for ax, values, name in ((s_ax, S, "similarity S"), (u_ax, U, "confidence U")):
        shown = ax.imshow(np.kron(values, np.ones((STRIDE, STRIDE)))[:height, :width], cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(shown, ax=ax, fraction=0.035)
        ax.set_title(name)
    for ax in (pairs_ax, s_ax, u_ax):
        ax.set_axis_off()
    fig.suptitle(title)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refcodec viz", description="Figures of what the entropy model does on one image.")
    sub = p.add_subparsers(dest="figure", required=True)
    b = sub.add_parser("bits", help="bits per latent position of a compressed file, over the decoded image")
    r = sub.add_parser("reference", help="relevance pairs (Figure 8) and the maps of S and U (Figure 10), for grm")
    for parser in (b, r):
        parser.add_argument("file", type=Path)
        parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
        parser.add_argument("--model", help="weights to decode with (default: the shipped model named in the file)")
    args = p.parse_args(argv)
    if not args.file.is_file():
        raise RefcodecError(f"{args.file}: no such file")
    data = args.file.read_bytes()
    found = analyse(data, load_model(args.model) if args.model else None)
    header, streams = unpack(data)
    bits = found["bits"]
    title = f"{args.file.name}: {header.model}, {8 * len(data) / (header.width * header.height):.3f} bpp"
    if args.figure == "bits":
        draw_bits(found["image"], bits, args.output,
                  f"{title}; latents {bits.sum() / 8:.0f} bytes by the model, {len(streams[-1])} bytes in the file")  # fmt: skip
    elif "S" not in found:
        raise RefcodecError(f"model {header.model!r} has no global reference")
    else:
        draw_reference(found, args.output, title)
    print(f"{args.file} -> {args.output}")
    return 0
