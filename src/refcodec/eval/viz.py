"""Figures of what the entropy model does: ``refcodec viz``.

    refcodec viz bits photo.rfc -o bits.png          # bits per latent position over the decoded image
    refcodec viz reference photo.rfc -o ref.png      # relevance pairs (Figure 8), S and U maps (Figure 10)
    refcodec viz progressive photo.rfc -o prog.png   # mu and bits of every stage, one channel (Figure 9)
    refcodec viz histograms IMAGES -o hist.png       # latents of a GDN and a GSDN model (Figure 11)

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
from ..images import find_images, read_rgb
from ..models.base import STRIDE
from ..models.registry import load_model


CODER_RESOLUTION = 2.0**-24  # the range coder gives every symbol at least this probability


@torch.no_grad()
def analyse(data: bytes, model=None) -> dict:
    """Decode a refcodec file and rerun its entropy model: the decoded image (array), the bits of
    each latent position (H/16, W/16), the latent ``y`` (M, H/16, W/16), the information content
    ``stage_bits`` (stages, M, H/16, W/16) and means ``stage_mu`` (same shape) of every stage
    (section 3.1: each stage refines the last) and, for ``grm``, the reference of each position
    (``index`` in raster order, similarity ``S``, confidence ``U``; each (H/16, W/16))."""
    with codec.opened(data, model) as (header, streams, model):
        if not hasattr(model, "exact_predict"):
            raise RefcodecError(f"these figures need a model with a context model (grm, joint), not {header.model!r}")
        height, width = header.padded_size
        h, w, trace = height // STRIDE, width // STRIDE, {}
        hyper = model.decode_hyper(streams, height, width)
        y_hat = model.decode_latents(streams, hyper, height, width)
        stages = model.exact_predict(y_hat, hyper, trace)
        image = codec.to_image(header, model.synthesize(y_hat, header.exact_synthesis))
    rows = y_hat.double()[0].permute(1, 2, 0).reshape(-1, model.M)
    p = torch.stack([exact_likelihood(rows, mean, log_scale) for mean, log_scale in stages])
    p = p.clamp_min(CODER_RESOLUTION)  # the coder's floor

    def maps(t: torch.Tensor) -> np.ndarray:  # (stages, H*W, M) rows -> (stages, M, H, W)
        return t.view(len(stages), h, w, model.M).permute(0, 3, 1, 2).numpy()

    out = {"image": np.asarray(image.convert("RGB")), "bits": -torch.log2(p[-1]).sum(1).view(h, w).numpy(),
           "y": y_hat[0].numpy(), "stage_bits": maps(-torch.log2(p)), "stage_mu": maps(torch.stack([m for m, _ in stages]))}  # fmt: skip
    out.update({k: v.view(h, w).numpy() for k, v in trace.items()})
    return out


@torch.no_grad()
def latent_histograms(model, images: list[Path], channels: int = 4) -> dict:
    """The latents y = g_a(x) (unrounded) of a model over a set of images: ``values`` of the
    ``channels`` channels of highest entropy (of the rounded latents' histogram), {channel: values},
    and ``off_centre``, the mean over all channels of |channel mean| (GSDN's aim: section 4)."""
    values = []
    for path in images:
        x = codec.image_to_tensor(read_rgb(path))
        values.append(model.g_a(x)[0].flatten(1))
    y = torch.cat(values, 1)
    entropy = []
    for row in torch.round(y):
        p = torch.unique(row, return_counts=True)[1].double() / len(row)
        entropy.append(float(-(p * torch.log2(p)).sum()))
    top = np.argsort(entropy)[::-1][:channels]
    return {"values": {int(c): y[c].numpy() for c in top}, "off_centre": float(y.mean(1).abs().mean())}


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


def draw_progressive(found: dict, path: Path, title: str) -> None:
    """Figure 9: for the channel with the most bits, the latent, the mean of every stage, the bits
    under every stage and how many bits each stage saves on the one before (blue: fewer bits)."""
    y, mu, bits = found["y"], found["stage_mu"], found["stage_bits"]
    channel = int(bits[-1].sum((1, 2)).argmax())
    stages = len(mu)
    names = ["context", "+ reference", "+ hyperprior"][:stages] if stages == 3 else [f"stage {i + 1}" for i in range(stages)]
    fig = Figure(figsize=(3.2 * (stages + 1), 3 * 3 * y.shape[1] / y.shape[2] + 1.2))
    grid = fig.add_gridspec(3, stages + 1)
    lim = float(np.abs(y[channel]).max()) or 1.0

    def show(row, col, values, name, cmap, vmin, vmax):
        ax = fig.add_subplot(grid[row, col])
        shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
        fig.colorbar(shown, ax=ax, fraction=0.035)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()

    show(0, 0, y[channel], f"latent y, channel {channel}", "coolwarm", -lim, lim)
    top = float(bits[:, channel].max())
    for i in range(stages):
        show(0, i + 1, mu[i, channel], f"mu{i + 1} ({names[i]})", "coolwarm", -lim, lim)
        show(1, i + 1, bits[i, channel], f"bits, stage {i + 1}: {bits[i, channel].sum():.0f}", "inferno", 0, top)
        if i:
            saved = bits[i, channel] - bits[i - 1, channel]
            span = float(np.abs(saved).max()) or 1.0
            show(2, i + 1, saved, f"bits stage {i + 1} - stage {i}: {saved.sum():+.0f}", "RdBu_r", -span, span)
    image_ax = fig.add_subplot(grid[1:, 0])
    image_ax.imshow(found["image"])
    image_ax.set_axis_off()
    fig.suptitle(title)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_histograms(found: dict[str, dict], path: Path, title: str) -> None:
    """Figure 11: per model (rows), histograms of its highest-entropy channels, with each mean."""
    columns = max(len(h["values"]) for h in found.values())
    fig = Figure(figsize=(3.2 * columns, 2.6 * len(found) + 0.6))
    for r, (name, hist) in enumerate(found.items()):
        for c, (channel, values) in enumerate(hist["values"].items()):
            ax = fig.add_subplot(len(found), columns, r * columns + c + 1)
            if c == 0:
                ax.set_ylabel(f"all channels:\nmean |mean| {hist['off_centre']:.2f}", fontsize=9)
            ax.hist(values, bins=np.arange(np.floor(values.min()) - 0.5, np.ceil(values.max()) + 1, 0.25), color=f"C{r}")
            ax.axvline(values.mean(), color="k", lw=1)
            ax.set_title(f"{name}, ch {channel}: mean {values.mean():+.2f}", fontsize=9)
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refcodec viz", description="Figures of what the entropy model does (the paper's Figures 8-11).")
    sub = p.add_subparsers(dest="figure", required=True)
    b = sub.add_parser("bits", help="bits per latent position of a compressed file, over the decoded image")
    r = sub.add_parser("reference", help="relevance pairs (Figure 8) and the maps of S and U (Figure 10), for grm")
    g = sub.add_parser("progressive", help="mean and bits of every entropy-model stage for the costliest channel (Figure 9)")
    for parser in (b, r, g):
        parser.add_argument("file", type=Path, help="a .rfc file written by refcodec compress")
        parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
        parser.add_argument("--model", help="weights to decode with (default: the shipped model named in the file)")
    h = sub.add_parser("histograms", help="latent histograms of a GDN and a GSDN model over a folder of images (Figure 11)")
    h.add_argument("images", type=Path, help="folder of images (e.g. Kodak)")
    h.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    h.add_argument("--models", nargs="+", default=["grm/small/vr"],
                   help="models to compare (default: the shipped grm/small/vr, which uses GSDN; add the weights of a joint "
                   "model, trained with refcodec train --model joint, for GDN)")
    h.add_argument("--channels", type=int, default=4, help="channels of highest entropy to show per model")
    args = p.parse_args(argv)
    if args.figure == "histograms":
        return _histograms(args)
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
    elif args.figure == "progressive":
        draw_progressive(found, args.output, title)
    elif "S" not in found:
        raise RefcodecError(f"model {header.model!r} has no global reference")
    else:
        draw_reference(found, args.output, title)
    print(f"{args.file} -> {args.output}")
    return 0


def _histograms(args) -> int:
    images = find_images(args.images)  # a missing or empty folder: FileNotFoundError, one line from the CLI
    found = {}
    for ref in args.models:
        model = load_model(ref)
        kind = "GSDN" if model.g_a[1].subtractive else "GDN"
        found[f"{model.id} ({kind})"] = latent_histograms(model, images, args.channels)
    draw_histograms(found, args.output, f"latents y over {len(images)} images of {args.images.name}, highest-entropy channels")
    print(f"{args.images} -> {args.output}")
    return 0
