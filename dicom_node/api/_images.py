"""Rendering a spooled DICOM image as a PNG for the reader page, with window and level.

The pixels go through the Modality LUT (rescale slope/intercept), then the linear VOI window
of PS3.3 C.11.2.1.2 (``center``/``width`` from the request, else the file's first window,
else the 0.5th to 99.5th percentile), MONOCHROME1 is inverted so that air is dark, and the
image is scaled down to at most ``size`` pixels on its long side. Decoded pixels of the last
few images are kept in memory, so asking for another window does not decode the file again.

The reader page's viewer (Cornerstone3D, ``frontend/``) does not use the PNG: it takes the
full-resolution pixels after the Modality LUT from :meth:`ImageRenderer.frame` (the
``.../images/{id}/pixels`` route), as 8- or 16-bit integers when the values allow it, else
32-bit floats, and windows them itself.

A file is untrusted input: its header is checked before anything is decoded
(:func:`check_decoded_size`, on the SCP's rule
:func:`dicom_node.dicom.image_check.decoded_pixel_bytes`), so a JPEG 2000 of a few KB that
claims 65535 x 65535 pixels is refused instead of allocating gigabytes, and whatever a
malformed header or pixel stream makes pydicom raise becomes an
:class:`~dicom_node.api.errors.InvalidInputError` (422) that names the problem.
"""

from __future__ import annotations

import io
import math
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, pixel_array

from dicom_node.api.errors import InvalidInputError, NotFoundError
from dicom_node.dicom.image_check import decoded_pixel_bytes

#: Longest side of the decoded pixels kept in memory.
CACHED_MAX_SIDE = 2048
#: Largest and default long side of a rendered PNG.
MAX_RENDER_SIDE = 2048
DEFAULT_RENDER_SIDE = 1024
#: Default largest decoded pixel data of an image the API renders (``api.max_image_bytes``).
MAX_IMAGE_BYTES = 128 * 2**20
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: What pydicom raises for a header value or pixel stream it cannot convert or decode.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RuntimeError,
    NotImplementedError,
    struct.error,
    BytesLengthException,
)
#: Pixel formats of :class:`PixelFrame`, as numpy little-endian dtypes, smallest first.
FRAME_FORMATS: dict[str, str] = {"uint8": "<u1", "uint16": "<u2", "int16": "<i2",
                                 "float32": "<f4"}
#: What reading a file may raise besides a missing file.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, InvalidDicomError, *_DECODE_ERRORS)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels after the Modality LUT (at most ``CACHED_MAX_SIDE`` on a side unless asked for
    in full), and their default window and value range."""

    pixels: np.ndarray
    photometric: str
    default_center: float
    default_width: float
    minimum: float
    maximum: float
    rows: int
    columns: int


@dataclass(frozen=True)
class PixelFrame:
    """Full-resolution pixels after the Modality LUT, as the viewer's image loader takes them.

    Attributes
    ----------
    data
        ``rows * columns`` values, row by row, little-endian, in `pixel_format`.
    pixel_format
        One of :data:`FRAME_FORMATS`: the smallest that holds every value exactly.
    """

    data: bytes
    pixel_format: str
    rows: int
    columns: int
    photometric: str
    default_center: float
    default_width: float


def _first(value: object) -> float | None:
    """The first value of a (possibly multi-valued) DS attribute, or None (also when it is
    not a finite number)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _attribute(ds: Dataset, keyword: str) -> object:
    """The value of `keyword`, or None; ValueError naming it when it cannot be read."""
    try:
        return ds.get(keyword)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{keyword} cannot be read ({type(exc).__name__})") from exc


def _integer(ds: Dataset, keyword: str, low: int, high: int, default: int | None = None) -> int:
    value = _attribute(ds, keyword)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{keyword} is missing")
        return default
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{keyword} is not an integer") from exc
    if not low <= number <= high:
        raise ValueError(f"{keyword} is {number}, not between {low} and {high}")
    return number


def check_decoded_size(ds: Dataset, max_bytes: int) -> int:
    """Refuse an image whose decoded pixel data would exceed `max_bytes`.

    Parameters
    ----------
    ds
        The data set, before its pixel data are decoded.
    max_bytes
        The limit (``api.max_image_bytes``).

    Returns
    -------
    int
        The decoded size (:func:`dicom_node.dicom.image_check.decoded_pixel_bytes`, the rule
        the SCP applies too).

    Raises
    ------
    InvalidInputError
        When the size attributes are missing or not valid, or the size exceeds the limit
        (422, with the reason).
    """
    try:
        size = decoded_pixel_bytes(ds)
    except ValueError as exc:
        raise InvalidInputError(f"the image header is not valid: {exc}") from exc
    if size > max_bytes:
        raise InvalidInputError(
            f"the decoded image would take {size} bytes (Rows x Columns x frames x "
            f"samples x bytes per sample), more than the limit of {max_bytes} "
            "(api.max_image_bytes)"
        )
    return size


def _check_greyscale(ds: Dataset) -> str:
    """The photometric interpretation of a greyscale image with usable pixel attributes."""
    photometric = str(_safe(ds, "PhotometricInterpretation") or "").strip()
    if "PixelData" not in ds or photometric not in _MONOCHROME:
        raise InvalidInputError("the instance is not a greyscale (MONOCHROME1/2) image")
    try:
        if _integer(ds, "SamplesPerPixel", 1, 4, default=1) != 1:
            raise ValueError("SamplesPerPixel is not 1")
        bits = _integer(ds, "BitsAllocated", 1, 64)
        _integer(ds, "BitsStored", 1, bits)
        _integer(ds, "PixelRepresentation", 0, 1)
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            value = _attribute(ds, keyword)
            if value is not None and value != "" and _first(value) is None:
                raise ValueError(f"{keyword} is not a finite number")
    except ValueError as exc:
        raise InvalidInputError(f"the image header is not valid: {exc}") from exc
    return photometric


def decode(
    path: Path, max_bytes: int = MAX_IMAGE_BYTES, max_side: int | None = CACHED_MAX_SIDE
) -> DecodedImage:
    """Read and decode one image file (its first frame).

    Parameters
    ----------
    path
        The spooled file.
    max_bytes
        Largest decoded pixel data accepted (:func:`check_decoded_size`).
    max_side
        Longest side of the returned pixels (every n-th row and column); None keeps the full
        resolution.

    Raises
    ------
    NotFoundError
        When the file is gone from the spool.
    InvalidInputError
        When it is not a greyscale image pydicom can decode, its header is not valid, or it
        would decode to more than `max_bytes`.
    """
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise NotFoundError("the image file is no longer in the spool") from exc
    except _READ_ERRORS as exc:
        raise InvalidInputError(f"the image cannot be read ({type(exc).__name__})") from exc
    photometric = _check_greyscale(ds)
    check_decoded_size(ds, max_bytes)
    try:
        pixels = pixel_array(ds, index=0)
        if pixels.ndim != 2:
            raise ValueError(f"a frame of {pixels.ndim} dimensions")
        step = 1 if max_side is None else max(1, -(-max(pixels.shape) // max_side))
        # Scaled down before the Modality LUT, whose float64 result would otherwise take
        # four times the memory of a 16-bit image.
        values = np.asarray(apply_modality_lut(pixels[::step, ::step], ds), dtype=np.float32)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except _DECODE_ERRORS as exc:
        raise InvalidInputError(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    values = np.ascontiguousarray(values)
    if values.size == 0 or not np.isfinite(values).all():
        raise InvalidInputError("the pixel values are not finite numbers after the Modality LUT")
    center = _first(_safe(ds, "WindowCenter"))
    width = _first(_safe(ds, "WindowWidth"))
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
        rows=rows,
        columns=columns,
    )


def _safe(ds: Dataset, keyword: str) -> object:
    """An optional attribute's value; None when it cannot be read (the default is used)."""
    try:
        return _attribute(ds, keyword)
    except ValueError:
        return None


def compact_frame(image: DecodedImage) -> PixelFrame:
    """The pixels of `image` in the smallest of :data:`FRAME_FORMATS` that holds them exactly.

    Integer values (stored values, or an integral rescale) within 0..255, 0..65535 or
    -32768..32767 travel as uint8, uint16 or int16; anything else as float32.
    """
    values = image.pixels
    pixel_format = "float32"
    if np.array_equal(values, np.round(values)):
        low, high = image.minimum, image.maximum
        if 0 <= low and high <= 255:
            pixel_format = "uint8"
        elif 0 <= low and high <= 65535:
            pixel_format = "uint16"
        elif -32768 <= low and high <= 32767:
            pixel_format = "int16"
    data = np.ascontiguousarray(values.astype(FRAME_FORMATS[pixel_format])).tobytes()
    return PixelFrame(
        data=data,
        pixel_format=pixel_format,
        rows=int(values.shape[0]),
        columns=int(values.shape[1]),
        photometric=image.photometric,
        default_center=image.default_center,
        default_width=image.default_width,
    )


def window(image: DecodedImage, center: float, width: float) -> np.ndarray:
    """8-bit display values: the linear VOI function, MONOCHROME1 inverted."""
    if not (math.isfinite(center) and math.isfinite(width)):
        raise InvalidInputError("the window center and width must be finite numbers")
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
    max_image_bytes
        Largest decoded pixel data of an image (:func:`check_decoded_size`).
    """

    def __init__(self, cache_size: int = 4, max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        if max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be >= 1, got {max_image_bytes}")
        self._cache: OrderedDict[tuple[str, int], DecodedImage] = OrderedDict()
        self._size = cache_size
        self.max_image_bytes = max_image_bytes
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
        image = decode(path, self.max_image_bytes)
        with self._lock:
            self._cache[key] = image
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return image

    def frame(self, path: Path) -> PixelFrame:
        """The full-resolution pixels of `path` after the Modality LUT (not cached).

        Raises
        ------
        InvalidInputError
            For an image that cannot be decoded (422, with the reason).
        NotFoundError
            When the file is gone.
        """
        return compact_frame(decode(path, self.max_image_bytes, max_side=None))

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


__all__ = [
    "FRAME_FORMATS",
    "MAX_IMAGE_BYTES",
    "DecodedImage",
    "ImageRenderer",
    "PixelFrame",
    "check_decoded_size",
    "compact_frame",
    "decode",
    "window",
]
