"""Synthetic images that are not frontal chest radiographs: negatives of the content check.

The node is sent what a PACS forwards, and that is not always a chest film: a skull or hand
radiograph without Body Part Examined, an abdomen, an ultrasound screenshot stored as
Secondary Capture, a scanned form. :func:`negative_images` draws such images (display
convention, values in [0, 1], bone bright) so that the content probe of
:mod:`inference.content_check` learns what a chest radiograph is *not*. They are cartoons,
like the phantoms: shapes and textures, not anatomy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Kinds of negative, each drawn by one function below.
NEGATIVE_KINDS = ("skull", "hand", "abdomen", "ultrasound", "screenshot", "noise", "blank")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return y, x


def _skull(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    ry, rx = rng.uniform(0.35, 0.45), rng.uniform(0.3, 0.4)
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    image = np.where(r < 1.0, 0.45, 0.05) + np.where(np.abs(r - 0.95) < 0.05, 0.45, 0.0)
    jaw = np.abs(np.sqrt(((y - cy - 0.35) / 0.15) ** 2 + ((x - cx) / 0.25) ** 2) - 1) < 0.08
    return image + 0.35 * jaw


def _hand(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    image = np.full((size, size), 0.05, dtype=np.float32)
    palm = ((y - 0.72) / 0.2) ** 2 + ((x - 0.5) / 0.22) ** 2 < 1
    image[palm] = 0.55
    for finger in range(5):
        fx = 0.3 + 0.1 * finger + rng.uniform(-0.02, 0.02)
        top = rng.uniform(0.15, 0.3)
        bone = (np.abs(x - fx) < 0.025) & (y > top) & (y < 0.62)
        image[bone] = 0.85
    return image


def _abdomen(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    image = 0.55 - 0.15 * ((x - 0.5) ** 2 * 4)
    image = image + 0.35 * (np.abs(x - 0.5) < 0.04)  # the spine
    for _ in range(rng.integers(6, 14)):  # bowel gas
        gy, gx, gr = rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8), rng.uniform(0.02, 0.06)
        image = np.where((y - gy) ** 2 + (x - gx) ** 2 < gr**2, 0.1, image)
    return image


def _ultrasound(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    angle = np.arctan2(x - 0.5, y + 0.05)
    radius = np.sqrt((x - 0.5) ** 2 + (y + 0.05) ** 2)
    sector = (np.abs(angle) < 0.6) & (radius > 0.15) & (radius < 0.95)
    speckle = rng.gamma(1.0, 0.25, size=(size, size))
    image = np.where(sector, np.clip(speckle, 0, 1), 0.0)
    for _ in range(rng.integers(3, 8)):  # overlay text
        ty, tx = rng.integers(0, size // 8), rng.integers(0, size - size // 4)
        image[ty : ty + 4, tx : tx + size // 5] = 1.0
    return image


def _screenshot(size: int, rng: np.random.Generator) -> np.ndarray:
    image = np.full((size, size), rng.uniform(0.8, 1.0), dtype=np.float32)
    row = 8
    while row < size - 8:
        length = rng.integers(size // 5, size - 16)
        image[row : row + 3, 8 : 8 + length] = rng.uniform(0.0, 0.3)
        row += int(rng.integers(8, 16))
    return image


def _noise(size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(size, size))


def _blank(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    return np.clip(rng.uniform(0.1, 0.9) + rng.uniform(-0.3, 0.3) * (x - y), 0, 1)


_DRAW: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "skull": _skull,
    "hand": _hand,
    "abdomen": _abdomen,
    "ultrasound": _ultrasound,
    "screenshot": _screenshot,
    "noise": _noise,
    "blank": _blank,
}


def negative_images(n: int, *, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """``n`` negatives, the kinds in turn, as float32 display images in [0, 1].

    Parameters
    ----------
    n
        How many.
    size
        Side length in pixels.
    seed
        Random seed (the same seed gives the same images).
    """
    rng = np.random.default_rng(seed)
    images = []
    for index in range(n):
        kind = NEGATIVE_KINDS[index % len(NEGATIVE_KINDS)]
        image = _DRAW[kind](size, rng)
        image = image + rng.normal(0.0, 0.02, size=image.shape)  # detector noise
        images.append(np.clip(image, 0.0, 1.0).astype(np.float32))
    return images


__all__ = ["NEGATIVE_KINDS", "negative_images"]
