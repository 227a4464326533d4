"""A generated sample image for the demo and the tests (no image files are shipped).

A deterministic 384x256 scene: a sky gradient, hills, a textured field, a few
repeated objects (so the global reference has something to find) and mild noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def sample_image(width: int = 384, height: int = 256, seed: int = 0) -> Image.Image:
    """The generated scene at any size; the same pixels for the same arguments."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    sky = np.stack([90 + 80 * yy / height, 140 + 60 * yy / height, 230 - 30 * yy / height], -1)
    ridge = height * (0.55 + 0.08 * np.sin(xx / width * 7 + 1) + 0.04 * np.sin(xx / width * 23))
    ground = np.stack([60 + 40 * np.sin(xx / 9) * np.sin(yy / 7), 120 + 30 * np.cos(xx / 13), 50 + 20 * np.sin(yy / 5)], -1)
    arr = np.where((yy > ridge)[..., None], ground, sky)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(6):  # a row of similar houses
        x0 = 20 + i * (width - 40) // 6
        y0 = int(height * 0.62)
        draw.rectangle([x0, y0, x0 + 40, y0 + 34], fill=(200, 180 - 8 * i, 150))
        draw.polygon([(x0 - 4, y0), (x0 + 20, y0 - 18), (x0 + 44, y0)], fill=(150, 40, 30))
        draw.rectangle([x0 + 14, y0 + 14, x0 + 26, y0 + 34], fill=(70, 50, 40))
    draw.ellipse([width - 80, 18, width - 36, 62], fill=(250, 230, 120))
    image = image.filter(ImageFilter.GaussianBlur(0.7))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), "RGB")
