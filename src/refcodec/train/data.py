"""Training data: every image under a folder (recursive), random crops and flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


def find_images(roots: str | Path | list) -> list[Path]:
    """Image files under one or more folders, sorted (a fixed order keeps runs reproducible)."""
    files = []
    for root in [roots] if isinstance(roots, (str, Path)) else roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not found:
            raise FileNotFoundError(f"{root}: no images ({', '.join(sorted(EXTENSIONS))})")
        files += found
    return files


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class ImageFolder(torch.utils.data.Dataset):
    """Random ``crop`` x ``crop`` patches with random flips; images are decoded once and kept in memory.

    Images smaller than the crop are upscaled (bicubic) so that their short side fits.
    """

    def __init__(self, roots: str | Path | list, crop: int, train: bool = True):
        self.files = find_images(roots)
        self.crop = crop
        self.train = train
        self.images = [self._fit(_load_rgb(p)) for p in self.files]

    def _fit(self, arr: np.ndarray) -> np.ndarray:
        h, w = arr.shape[:2]
        if min(h, w) >= self.crop:
            return arr
        s = self.crop / min(h, w)
        im = Image.fromarray(arr).resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.BICUBIC)
        return np.asarray(im)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = self.images[i]
        h, w = arr.shape[:2]
        c = self.crop
        if self.train:
            top, left = np.random.randint(0, h - c + 1), np.random.randint(0, w - c + 1)
        else:
            top, left = (h - c) // 2, (w - c) // 2
        patch = torch.from_numpy(arr[top : top + c, left : left + c].copy()).permute(2, 0, 1).float() / 255.0
        if self.train and np.random.rand() < 0.5:
            patch = patch.flip(2)
        if self.train and np.random.rand() < 0.5:
            patch = patch.flip(1)
        return patch
