"""Rate-distortion curves and their Bjøntegaard deltas (BD-rate, BD-PSNR).

A curve is read from a results file in CompressAI's layout (``refcodec eval``,
``refcodec compare`` and CompressAI's published files all qualify). Deltas use
the ``bjontegaard`` package with Akima interpolation of log-rate against PSNR,
integrated over the common range only: curves that do not overlap get NaN and the
note "no overlap", never an extrapolated number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import bjontegaard as bd
import numpy as np

from ..errors import RefcodecError

METHOD = "akima"
METRICS = {"psnr": "PSNR-RGB", "ms-ssim": "MS-SSIM-RGB in dB"}  # the quality axes of the deltas (in_metric)


@dataclass
class Curve:
    """Mean rate-distortion points of one codec, sorted by rate."""

    name: str
    bpp: np.ndarray
    psnr: np.ndarray
    msssim: np.ndarray  # NaN where unknown
    description: str = ""

    @property
    def msssim_db(self) -> np.ndarray:
        """MS-SSIM in dB (``msssim_db``)."""
        return msssim_db(self.msssim)


def msssim_db(score):
    """MS-SSIM in dB, -10 log10(1 - MS-SSIM), as CompressAI and the paper's Figure 6 plot it (a float, or an
    array of them; a perfect score is inf)."""
    with np.errstate(divide="ignore"):
        return -10 * np.log10(1 - np.asarray(score, dtype=np.float64))


def in_metric(c: Curve, metric: str) -> Curve:
    """The curve with ``metric``'s quality on the axis that deltas and savings read (``Curve.psnr``): PSNR
    itself, or MS-SSIM in dB, -10 log10(1 - MS-SSIM), as the paper's Figure 6 plots the MS-SSIM models."""
    if metric not in METRICS:
        raise RefcodecError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return dataclasses.replace(c, psnr=c.msssim_db) if metric == "ms-ssim" else c


def key(name: str) -> str:
    """A name reduced to lower-case letters and digits ("JPEG 2000" -> "jpeg2000"), for matching anchors."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def curve(report: dict, source: str = "results") -> Curve:
    """The curve of a CompressAI-layout dict ({"name", "results": {"bpp", "psnr-rgb" (or "psnr"), "ms-ssim-rgb"}})."""
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, dict) or "bpp" not in results or not ({"psnr-rgb", "psnr"} & set(results)):
        raise RefcodecError(f"{source}: not a results file (needs results.bpp and results.psnr-rgb)")
    bpp = np.asarray(results["bpp"], dtype=np.float64)
    psnr = np.asarray(results.get("psnr-rgb", results.get("psnr")), dtype=np.float64)
    msssim = np.asarray(results.get("ms-ssim-rgb", results.get("ms-ssim", [math.nan] * len(bpp))), dtype=np.float64)
    if not len(bpp) == len(psnr) == len(msssim):
        raise RefcodecError(f"{source}: results arrays of different lengths")
    order = np.argsort(bpp)
    name = str(report.get("name", Path(source).stem))
    return Curve(name, bpp[order], psnr[order], msssim[order], str(report.get("description", "")))


def load_curve(path: str | Path) -> Curve:
    """The curve of a CompressAI-layout JSON file; unreadable or foreign files raise RefcodecError."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise RefcodecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RefcodecError(f"{path}: not a JSON results file ({e})") from None
    return curve(report, str(path))


def rd_points(c: Curve) -> tuple[np.ndarray, np.ndarray]:
    """The points used for deltas: finite, positive rate, and PSNR rising with rate (dominated points dropped)."""
    rates, psnrs = [], []
    for r, p in zip(c.bpp, c.psnr):
        if r > 0 and math.isfinite(r) and math.isfinite(p) and (not rates or (r > rates[-1] and p > psnrs[-1])):
            rates.append(r)
            psnrs.append(p)
    return np.array(rates), np.array(psnrs)


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Common interval of two samples and its length as a fraction of their union."""
    lo, hi = float(max(a.min(), b.min())), float(min(a.max(), b.max()))
    union = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return lo, hi, max(hi - lo, 0.0) / union if union > 0 else 0.0


def delta(anchor: Curve, test: Curve) -> dict:
    """BD-rate (%, negative: fewer bits than the anchor) and BD-PSNR (dB) of ``test`` against ``anchor``.

    ``psnr_overlap`` and ``rate_overlap`` give the common range as a fraction of the
    union of both curves' ranges (PSNR for BD-rate, log-rate for BD-PSNR).
    """
    ra, pa = rd_points(anchor)
    rt, pt = rd_points(test)
    nan = {"bd_rate": math.nan, "bd_psnr": math.nan, "psnr_range": None, "psnr_overlap": 0.0, "rate_overlap": 0.0}
    if len(ra) < 2 or len(rt) < 2:
        return nan | {"note": "too few points"}
    lo, hi, psnr_overlap = _overlap(pa, pt)
    rate_overlap = _overlap(np.log10(ra), np.log10(rt))[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the overlap is reported instead
        rate = bd.bd_rate(ra, pa, rt, pt, method=METHOD, require_matching_points=False, min_overlap=0)
        psnr = bd.bd_psnr(ra, pa, rt, pt, method=METHOD, require_matching_points=False, min_overlap=0)
    return {
        "bd_rate": float(rate) if psnr_overlap > 0 else math.nan,
        "bd_psnr": float(psnr) if rate_overlap > 0 else math.nan,
        "psnr_range": [float(lo), float(hi)] if psnr_overlap > 0 else None,
        "psnr_overlap": psnr_overlap,
        "rate_overlap": rate_overlap,
        "note": "" if psnr_overlap > 0 and rate_overlap > 0 else "no overlap",
    }


def bd_rate_below(anchor: Curve, test: Curve, top: float, points: int = 100) -> float:
    """BD-rate (%) of ``test`` against ``anchor`` over their common PSNR range cut at ``top``: the mean of the
    log-rate difference there, as BD-rate is over the whole common range (NaN where nothing is left)."""
    psnr, savings = rate_savings(anchor, test, points)
    below = psnr <= top
    if below.sum() < 2:
        return math.nan
    log_ratio = np.log10(1 - savings[below] / 100)  # per PSNR: log10(test rate / anchor rate)
    return float(100 * (10 ** log_ratio.mean() - 1))


def rate_savings(anchor: Curve, test: Curve, points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Rate saving in % (positive: fewer bits) against PSNR, over the common PSNR range (empty if none)."""
    ra, pa = rd_points(anchor)
    rt, pt = rd_points(test)
    if len(ra) < 2 or len(rt) < 2 or _overlap(pa, pt)[2] == 0:
        return np.array([]), np.array([])
    lo, hi, _ = _overlap(pa, pt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, f_anchor, f_test = bd.bd_rate(ra, pa, rt, pt, method=METHOD, require_matching_points=False,
                                         interpolators=True, min_overlap=0)  # fmt: skip
    psnr = np.linspace(lo, hi, points)
    return psnr, 100 * (1 - 10 ** (f_test(psnr) - f_anchor(psnr)))


def table(curves: list[Curve], anchors: list[Curve]) -> dict:
    """{anchor name: {curve name: delta}} for every curve other than the anchor."""
    return {a.name: {c.name: delta(a, c) for c in curves if c is not a} for a in anchors}


def cells(d: dict) -> list[str]:
    """BD-rate, BD-PSNR (or BD-MS-SSIM), common range and note of one curve's deltas, as printed."""
    rate = "n/a" if math.isnan(d["bd_rate"]) else f"{d['bd_rate']:+.1f}%"
    psnr = "n/a" if math.isnan(d["bd_psnr"]) else f"{d['bd_psnr']:+.2f} dB"
    span = "-" if d["psnr_range"] is None else f"{d['psnr_range'][0]:.2f}-{d['psnr_range'][1]:.2f} dB ({d['psnr_overlap']:.0%})"
    return [rate, psnr, span, d["note"]]


def markdown(deltas: dict, curves: list[Curve] = (), metric: str = "psnr") -> str:
    """One Markdown table per anchor (deltas in ``metric``, ``in_metric``), then the curves' descriptions."""
    parts, axis = [], "PSNR" if metric == "psnr" else "MS-SSIM"
    for anchor, rows in deltas.items():
        lines = [
            f"### BD against {anchor} ({METRICS[metric]}, {METHOD} interpolation)",
            "",
            f"| curve | BD-rate | BD-{axis} | common {axis} range | note |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {name} | {' | '.join(cells(d))} |" for name, d in rows.items()]
        parts.append("\n".join(lines))
    if curves:
        parts.append("\n".join(["### Curves", ""] + [f"- **{c.name}**: {c.description or '(no description)'}" for c in curves]))
    return "\n\n".join(parts) + "\n"
