"""Training data: every image under a folder (recursive), random crops and flips, in a reproducible order.

Nothing here draws from a global random state. Each epoch is a permutation seeded by
(seed, epoch) and split across the processes (``DistributedSampler``); each crop and flip
comes from a generator seeded by (seed, epoch, image). Batch k of a process is therefore a
pure function of (seed, k, rank, number of processes), and a resumed run sees exactly the
batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from ..images import find_images, read_rgb


class ImageFolder(torch.utils.data.Dataset):
    """``crop`` x ``crop`` patches of the images under folders, decoded once and kept in memory.

    ``folder[i]`` is the center crop of image i (validation). ``folder[i, epoch]`` is a random
    crop with random flips, drawn from a generator seeded by (seed, epoch, i), so that it does
    not depend on what was drawn before. Images smaller than the crop are upscaled (bicubic)
    so that their short side fits (``upscaled`` counts them). ``limit`` keeps only the first images.
    """

    def __init__(self, roots: str | Path | list, crop: int, seed: int = 0, limit: int | None = None):
        self.files = find_images(roots)[:limit]
        self.crop = crop
        self.seed = seed
        images = [np.asarray(read_rgb(p, drop_alpha=True)) for p in self.files]
        self.upscaled = sum(min(a.shape[:2]) < crop for a in images)
        self.images = [self._fit(a) for a in images]

    def _fit(self, arr: np.ndarray) -> np.ndarray:
        h, w = arr.shape[:2]
        if min(h, w) >= self.crop:
            return arr
        s = self.crop / min(h, w)
        im = Image.fromarray(arr).resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.BICUBIC)
        return np.asarray(im)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        i, epoch = (key, None) if isinstance(key, int) else key
        arr = self.images[i]
        h, w = arr.shape[:2]
        c = self.crop
        if epoch is None:
            top, left, flips = (h - c) // 2, (w - c) // 2, (False, False)
        else:
            rng = np.random.default_rng((self.seed, epoch, i))
            top, left, flips = rng.integers(h - c + 1), rng.integers(w - c + 1), rng.random(2) < 0.5
        patch = torch.from_numpy(arr[top : top + c, left : left + c].copy()).permute(2, 0, 1).float() / 255.0
        if flips[0]:
            patch = patch.flip(2)
        if flips[1]:
            patch = patch.flip(1)
        return patch


def batches(data: ImageFolder, batch: int, rank: int = 0, world: int = 1, start: int = 0, workers: int = 0,
            pin_memory: bool = False) -> Iterator[torch.Tensor]:  # fmt: skip
    """Endless training batches of process ``rank`` of ``world``, from batch number ``start`` on.

    An epoch gives each process ``len(data) // world // batch`` batches; the images left over
    are not used in that epoch (a different permutation leaves out others in the next).
    """
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=data.seed, drop_last=True)
    per_epoch = len(sampler) // batch
    if per_epoch == 0:
        raise ValueError(f"{len(data)} training images are too few for --batch {batch} on {world} process(es)")
    epoch, skip = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        keys = [(i, epoch) for i in sampler][skip * batch : per_epoch * batch]
        own = torch.Generator()  # the loader draws worker seeds; from the global generator, that would shift the noise
        yield from DataLoader(data, batch_size=batch, sampler=keys, num_workers=workers, pin_memory=pin_memory, generator=own)
        epoch, skip = epoch + 1, 0
