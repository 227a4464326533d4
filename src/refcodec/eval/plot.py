"""Rate-distortion plots (PSNR and MS-SSIM in dB against bpp) and rate savings against an anchor.

Figures are drawn with matplotlib's object API on the Agg canvas: no display and no
global pyplot state are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bdrate import Curve, rate_savings


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _style(c: Curve, anchor: Curve | None) -> dict:
    return {"color": "black", "linewidth": 2.2} if c is anchor else {"linewidth": 1.4}


def rd_plot(curves: list[Curve], path: Path, metric: str = "psnr", anchor: Curve | None = None, title: str = "") -> None:
    """PSNR-RGB (``metric="psnr"``) or MS-SSIM in dB (``metric="msssim"``) against bpp, one line per curve."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for c in curves:
        y = c.psnr if metric == "psnr" else c.msssim_db
        keep = np.isfinite(y) & np.isfinite(c.bpp)
        if keep.any():
            ax.plot(c.bpp[keep], y[keep], marker="o", markersize=3.5, label=c.name, **_style(c, anchor))
    if not ax.lines:
        ax.text(0.5, 0.5, "no data (MS-SSIM needs images of at least 161 px)", ha="center", transform=ax.transAxes)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR-RGB (dB)" if metric == "psnr" else "MS-SSIM (dB), -10 log10(1 - MS-SSIM)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    _save(fig, path)


def savings_plot(curves: list[Curve], anchor: Curve, path: Path, title: str = "", metric: str = "psnr") -> None:
    """Rate saving in % at equal quality relative to ``anchor`` (positive: fewer bits), as in the paper's Figure 7;
    the quality is the curves' ``psnr`` axis, which ``bdrate.in_metric`` sets to ``metric``'s."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    ax.axhline(0, label=anchor.name, **_style(anchor, anchor))
    for c in curves:
        if c is not anchor:
            psnr, saving = rate_savings(anchor, c)
            if len(psnr):
                ax.plot(psnr, saving, label=c.name, **_style(c, anchor))
    ax.set_xlabel("PSNR-RGB (dB)" if metric == "psnr" else "MS-SSIM-RGB (dB)")
    ax.set_ylabel(f"rate saving over {anchor.name} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def time_plot(runs: list[dict], path: Path, title: str = "") -> None:
    """Encode and decode seconds against megapixels (log-log), one line per (direction, schedule)."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for schedule in dict.fromkeys(r["schedule"] for r in runs):
        rows = sorted((r for r in runs if r["schedule"] == schedule), key=lambda r: r["pixels"])
        mp = [r["pixels"] / 1e6 for r in rows]
        for step, marker in (("compress", "o"), ("decompress", "s")):
            ax.plot(mp, [r[step]["total_seconds"] for r in rows], marker=marker, label=f"{step} ({schedule})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)
