"""Rendering a spooled DICOM image as a PNG for the reader page, with window and level.

The pixels go through the Modality LUT (rescale slope/intercept), then the linear VOI window
of PS3.3 C.11.2.1.2 (``center``/``width`` from the request, else the file's first window,
else the 0.5th to 99.5th percentile), MONOCHROME1 is inverted so that air is dark, and the
image is scaled down to at most ``size`` pixels on its long side. Decoded pixels of the last
few images are kept in memory, so moving the window sliders does not decode the file again.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from .errors import InvalidInputError, NotFoundError

#: Longest side of the decoded pixels kept in memory.
CACHED_MAX_SIDE = 2048
#: Largest and default long side of a rendered PNG.
MAX_RENDER_SIDE = 2048
DEFAULT_RENDER_SIDE = 1024
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DecodedImage:
    """Pixels after the Modality LUT, and the defaults the page's sliders start from."""

    pixels: np.ndarray
    photometric: str
    default_center: float
    default_width: float
    minimum: float
    maximum: float
    rows: int
    columns: int


def _first(value: object) -> float | None:
    """The first value of a (possibly multi-valued) DS attribute, or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def decode(path: Path) -> DecodedImage:
    """Read and decode one image file.

    Raises
    ------
    NotFoundError
        When the file is gone from the spool.
    InvalidInputError
        When it is not a greyscale image pydicom can decode.
    """
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise NotFoundError("the image file is no longer in the spool") from exc
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InvalidInputError(f"the image cannot be read ({type(exc).__name__})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if "PixelData" not in ds or photometric not in _MONOCHROME:
        raise InvalidInputError("the instance is not a greyscale (MONOCHROME1/2) image")
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise InvalidInputError(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    if pixels.ndim == 3:
        pixels = pixels[0]
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    step = max(1, -(-max(values.shape) // CACHED_MAX_SIDE))
    values = np.ascontiguousarray(values[::step, ::step])
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if center is None or width is None or width < 1:
        center, width = (low + high) / 2, max(high - low, 1.0)
    return DecodedImage(
        pixels=values,
        photometric=photometric,
        default_center=float(center),
        default_width=float(width),
        minimum=float(values.min()),
        maximum=float(values.max()),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
    )


def window(image: DecodedImage, center: float, width: float) -> np.ndarray:
    """8-bit display values: the linear VOI function, MONOCHROME1 inverted."""
    if not width >= 1:
        raise InvalidInputError("the window width must be at least 1")
    scaled = (image.pixels - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5
    display = np.clip(scaled, 0.0, 1.0)
    if image.photometric == "MONOCHROME1":
        display = 1.0 - display
    return np.asarray(np.round(display * 255), dtype=np.uint8)


class ImageRenderer:
    """Renders spooled images as PNG, keeping the last few decoded images.

    Parameters
    ----------
    cache_size
        Decoded images kept in memory.
    """

    def __init__(self, cache_size: int = 4) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self._cache: OrderedDict[tuple[str, int], DecodedImage] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def decoded(self, path: Path) -> DecodedImage:
        """The decoded image of `path` (from the cache when it has not changed)."""
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError as exc:
            raise NotFoundError("the image file is no longer in the spool") from exc
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        image = decode(path)
        with self._lock:
            self._cache[key] = image
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return image

    def render_png(
        self,
        path: Path,
        center: float | None = None,
        width: float | None = None,
        size: int = DEFAULT_RENDER_SIDE,
    ) -> bytes:
        """PNG of the image with the given window (the file's default when not given).

        Raises
        ------
        InvalidInputError
            For a window width below 1 or a size out of range, or an image that cannot be
            decoded.
        NotFoundError
            When the file is gone.
        """
        if not 16 <= size <= MAX_RENDER_SIDE:
            raise InvalidInputError(f"size must lie between 16 and {MAX_RENDER_SIDE}")
        image = self.decoded(path)
        display = window(
            image,
            image.default_center if center is None else center,
            image.default_width if width is None else width,
        )
        picture = Image.fromarray(display, mode="L")
        picture.thumbnail((size, size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


__all__ = ["DecodedImage", "ImageRenderer", "decode", "window"]
