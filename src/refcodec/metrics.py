"""MS-SSIM of decoded images (Wang, Simoncelli and Bovik 2003; the paper's second metric, section 5.1),
as pytorch_msssim computes it: RGB in [0, 1], five scales of 11-px Gaussian windows."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim

MS_SSIM_MIN_SIDE = 160  # the coarsest of the five scales (1/16) must be wider than the 11-px window


def ms_ssim(a: Image.Image, b: Image.Image) -> float:
    """MS-SSIM between two 8-bit RGB images of the same size; NaN for an image of at most
    ``MS_SSIM_MIN_SIDE`` pixels on a side, where the five scales do not fit."""
    if min(a.size) <= MS_SSIM_MIN_SIDE:
        return float("nan")
    x, y = (torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] / 255 for im in (a, b))
    return float(_ms_ssim(x, y, data_range=1.0))
