"""What rank 0 reports: log.csv, the progress bar, and TensorBoard scalars (``--tensorboard``)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """Reports of a run; with ``enabled=False`` (processes other than rank 0) it does nothing.

    log.csv has a row per step: the training metrics (averaged over the processes) and, on
    the steps that validated, the validation metrics. A resumed run first drops the rows
    past its checkpoint (written before the previous process stopped), so that every step
    appears once. TensorBoard events go to ``run/tensorboard``.
    """

    def __init__(self, run: Path, columns: list[str], steps: int, step: int, resumed: bool, tensorboard: bool,
                 enabled: bool = True):  # fmt: skip
        self.enabled = enabled
        if not enabled:
            return
        self.board = _summary_writer(run / "tensorboard", purge_step=step + 1 if resumed else None) if tensorboard else None
        path = run / "log.csv"
        fields = ["step", "time", *columns]
        if resumed and path.exists():
            _continue(path, step, fields)
        self.file = open(path, "a", newline="")
        self.csv = csv.DictWriter(self.file, fields, extrasaction="ignore")
        if self.file.tell() == 0:
            self.csv.writeheader()
        self.bar = tqdm(total=steps, initial=step, desc="train", dynamic_ncols=True)

    def step(self, step: int, seconds: float, scalars: dict[str, float]) -> None:
        """One optimizer step: training scalars, and ``val_*`` ones if it validated."""
        if not self.enabled:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", bpp=f"{scalars['bpp']:.3f}", psnr=f"{scalars['psnr']:.2f}")
        self.csv.writerow({"step": step, "time": round(seconds, 1), **scalars})
        if "val_bpp" in scalars:
            ms_ssim = f" ms-ssim {scalars['val_ms_ssim']:.4f}" if "val_ms_ssim" in scalars else ""
            self.say(f"step {step}: val bpp {scalars['val_bpp']:.4f} psnr {scalars['val_psnr']:.2f}{ms_ssim}; "
                     f"files {scalars['val_file_bpp']:.4f} bpp, {scalars['val_file_psnr']:.2f} dB")
        if self.board is not None:
            for name, value in scalars.items():
                self.board.add_scalar("val/" + name[4:] if name.startswith("val_") else "train/" + name, value, step)

    def say(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def flush(self) -> None:
        if self.enabled:
            self.file.flush()
            if self.board is not None:
                self.board.flush()

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()
            if self.board is not None:
                self.board.close()


def _summary_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SystemExit("refcodec train: --tensorboard needs the tensorboard package (pip install 'refcodec[train]')") from None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _continue(path: Path, step: int, fields: list[str]) -> None:
    """Keep the complete rows up to ``step``, under the columns of this version (new ones empty)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [dict(zip(header, r)) for r in reader if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
