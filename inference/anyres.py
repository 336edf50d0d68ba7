"""LLaVA-NeXT's "any resolution" images: tiles in, one token sequence out.

An image is seen twice by the vision tower: once whole, stretched to the tower's square input
(the *base* tile), and once at a higher resolution chosen from the model's
``image_grid_pinpoints``: resized into that resolution keeping its aspect ratio, padded with
black around the centre, and cut into square tiles row by row. After the tower each tile is a
``p x p`` grid of tokens. :func:`pack_tiles` puts the grid tiles back together into one
token map, removes the rows or columns that only saw padding, appends the model's learned
newline vector to every row, and puts the base tile's tokens first. The sizes follow
LLaVA-NeXT's published preprocessing and its ``spatial_unpad`` merge, so a checkpoint sees the
token sequence it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

#: A resolution as ``(height, width)``.
Resolution = tuple[int, int]


def best_resolution(size: Resolution, candidates: Sequence[Resolution]) -> Resolution:
    """The candidate that shows the most of an image of ``size`` and, among those, wastes the
    least area (LLaVA-NeXT's rule).

    Parameters
    ----------
    size
        The image's ``(height, width)``.
    candidates
        The model's ``image_grid_pinpoints``, each ``(height, width)``.
    """
    if not candidates:
        raise ValueError("no grid pinpoints to choose from")
    height, width = size
    best: Resolution | None = None
    best_shown, best_wasted = 0, math.inf
    for cand_h, cand_w in candidates:
        scale = min(cand_w / width, cand_h / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_w * cand_h - shown
        if shown > best_shown or (shown == best_shown and wasted < best_wasted):
            best, best_shown, best_wasted = (int(cand_h), int(cand_w)), shown, wasted
    assert best is not None
    return best


def fitted_size(size: Resolution, target: Resolution) -> Resolution:
    """The size of an image of ``size`` resized into ``target`` keeping its aspect ratio (the
    side that limits the scale fills ``target``; the other is rounded up)."""
    height, width = size
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def grid_shape(size: Resolution, candidates: Sequence[Resolution], tile: int) -> Resolution:
    """Rows and columns of grid tiles for an image of ``size``."""
    height, width = best_resolution(size, candidates)
    return height // tile, width // tile


def tile_count(size: Resolution, candidates: Sequence[Resolution], tile: int) -> int:
    """Tiles the tower sees for an image of ``size``: the base tile and the grid tiles."""
    rows, columns = grid_shape(size, candidates, tile)
    return 1 + rows * columns


def unpadded(tokens: torch.Tensor, size: Resolution) -> torch.Tensor:
    """The token map ``(H, rows, columns)`` without the rows or columns that only saw the
    padding of an image of ``size``."""
    height, width = size
    rows, columns = tokens.shape[1:]
    if width / height > columns / rows:
        kept = int(round(height * (columns / width), 7))
        pad = (rows - kept) // 2
        return tokens[:, pad : rows - pad, :]
    kept = int(round(width * (rows / height), 7))
    pad = (columns - kept) // 2
    return tokens[:, :, pad : columns - pad]


def pack_tiles(
    tiles: torch.Tensor,
    size: Resolution,
    candidates: Sequence[Resolution],
    tile: int,
    newline: torch.Tensor,
) -> torch.Tensor:
    """One image's token sequence from its tiles' tokens.

    Parameters
    ----------
    tiles
        ``(1 + rows * columns, p * p, H)``: the base tile first, then the grid row by row.
    size
        The image's ``(height, width)`` before tiling.
    candidates
        The model's grid pinpoints.
    tile
        The tower's input side in pixels.
    newline
        ``(H,)``: the learned vector that ends each row of the grid.

    Returns
    -------
    torch.Tensor
        ``(p * p + rows' * (columns' + 1), H)``: the base tokens, then the unpadded grid
        row by row, each row ending with ``newline``.
    """
    rows, columns = grid_shape(size, candidates, tile)
    if tiles.shape[0] != 1 + rows * columns:
        raise ValueError(
            f"an image of size {size} needs {1 + rows * columns} tiles, got {tiles.shape[0]}"
        )
    side = math.isqrt(tiles.shape[1])
    if side * side != tiles.shape[1]:
        raise ValueError(f"{tiles.shape[1]} tokens per tile are not a square grid")
    base, grid = tiles[0], tiles[1:]
    hidden = grid.shape[-1]
    grid = grid.reshape(rows, columns, side, side, hidden)
    grid = grid.permute(4, 0, 2, 1, 3).reshape(hidden, rows * side, columns * side)
    grid = unpadded(grid, size)
    ends = newline.to(grid)[:, None, None].expand(hidden, grid.shape[1], 1)
    grid = torch.cat([grid, ends], dim=-1).flatten(1, 2).transpose(0, 1)
    return torch.cat([base, grid], dim=0)


def tile_image(
    image: np.ndarray,
    candidates: Sequence[Resolution],
    tile: int,
    resize: Callable[[np.ndarray, Resolution], np.ndarray],
) -> np.ndarray:
    """Cut a 2-D image into the base tile and the grid tiles, ``(N, tile, tile)``.

    Parameters
    ----------
    image
        2-D float image in [0, 1].
    candidates
        The model's grid pinpoints.
    tile
        The tower's input side.
    resize
        ``resize(image, (height, width)) -> image``: the node's resampling.
    """
    size = (int(image.shape[0]), int(image.shape[1]))
    target = best_resolution(size, candidates)
    fit = fitted_size(size, target)
    resized = resize(image, fit)
    canvas = np.zeros(target, dtype=np.float32)
    top, left = (target[0] - fit[0]) // 2, (target[1] - fit[1]) // 2
    canvas[top : top + fit[0], left : left + fit[1]] = resized
    tiles = [resize(image, (tile, tile))]
    for row in range(0, target[0], tile):
        for column in range(0, target[1], tile):
            tiles.append(canvas[row : row + tile, column : column + tile])
    return np.stack(tiles).astype(np.float32)


__all__ = [
    "Resolution",
    "best_resolution",
    "fitted_size",
    "grid_shape",
    "pack_tiles",
    "tile_count",
    "tile_image",
    "unpadded",
]
