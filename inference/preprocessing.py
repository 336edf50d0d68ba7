"""DICOM pixels to encoder input.

The pipeline follows the DICOM grayscale display chain (PS3.3 C.11): Modality LUT or
rescale, then the VOI LUT or window stored in the file (a percentile window when there is
none), then MONOCHROME1 inversion, so that after preprocessing air and lungs are dark and
bone is bright whatever the photometric interpretation. The image is then resized with its
aspect ratio kept (pad or centre crop) to the encoder's square input and normalised.

Compressed transfer syntaxes (JPEG 2000, JPEG, RLE) are decoded by pydicom's pixel data
handlers; the pylibjpeg plugins installed with this package provide the decoders.
"""

from __future__ import annotations

import logging
from os import PathLike
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from inference.anyres import Resolution, tile_image
from inference.config import PreprocessConfig
from inference.errors import PreprocessingError

logger = logging.getLogger(__name__)

#: Photometric interpretations a chest radiograph may have.
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Largest decoded pixel data preprocessing decodes (Rows x Columns x samples x bytes, read
#: from the header before decoding): a JPEG 2000 of a few KB may claim 65535 x 65535 pixels.
MAX_DECODED_PIXEL_BYTES = 256 * 2**20


def read_dicom(path: str | PathLike[str]) -> Dataset:
    """Read a DICOM file, raising :class:`PreprocessingError` if it is not one.

    Parameters
    ----------
    path
        File to read.

    Returns
    -------
    pydicom.dataset.Dataset
        The parsed dataset (pixel data is decoded lazily).
    """
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise PreprocessingError(f"{path}: not a readable DICOM file ({exc})") from exc


def dataset_to_display(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    """Apply the grayscale display chain and return an image in [0, 1], bone bright.

    Parameters
    ----------
    ds
        A single-frame grayscale image dataset.
    config
        Windowing options (``voi``, ``percentile_low``, ``percentile_high``).

    Returns
    -------
    numpy.ndarray
        2-D float32 array with values in [0, 1]; 0 is black (air), 1 white (bone, metal).

    Raises
    ------
    PreprocessingError
        When the dataset holds no image, an empty or undecodable pixel data element, more
        than one frame, or a photometric interpretation other than MONOCHROME1/2.
    """
    try:
        return _dataset_to_display(ds, config)
    except PreprocessingError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed header value of any kind
        # pydicom raises ValueError, TypeError, KeyError, ... for values it cannot convert;
        # the message names the attribute, never its value (it may be a patient's).
        raise PreprocessingError(
            f"image attributes cannot be used ({type(exc).__name__} while applying the "
            "display chain)"
        ) from exc


def _dataset_to_display(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    sop = ds.get("SOPClassUID", "unknown SOP class")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise PreprocessingError(f"dataset has no pixel data, so it is not an image ({sop})")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PreprocessingError(
            f"unsupported photometric interpretation {photometric or '(missing)'!r}: "
            f"chest radiographs must be one of {', '.join(SUPPORTED_PHOTOMETRIC)}"
        )
    frames = _header_int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise PreprocessingError(f"multi-frame image ({frames} frames) is not a radiograph")
    decoded = (
        _header_int(ds, "Rows", 0) * _header_int(ds, "Columns", 0)
        * _header_int(ds, "SamplesPerPixel", 1) * max(1, _header_int(ds, "BitsAllocated", 16))
        // 8
    )
    if decoded > MAX_DECODED_PIXEL_BYTES:
        raise PreprocessingError(
            f"decoded pixel data would take {decoded} bytes, more than "
            f"{MAX_DECODED_PIXEL_BYTES} (an image of that size is not a radiograph)"
        )
    pixel_bytes = ds.get("PixelData")
    if "PixelData" in ds and not pixel_bytes:
        raise PreprocessingError("pixel data element is empty")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt or missing codecs
        raise PreprocessingError(f"pixel data cannot be decoded: {exc}") from exc
    if stored.ndim != 2 or stored.size == 0:
        raise PreprocessingError(f"expected a 2-D grayscale frame, got shape {stored.shape}")

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if config.voi == "dicom" and has_voi:
        low, high = _voi_output_range(ds)
        try:
            values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
        except ValueError as exc:
            raise PreprocessingError(f"invalid VOI LUT or window: {exc}") from exc
    elif config.voi == "minmax":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (
            float(v) for v in np.percentile(values, [config.percentile_low, config.percentile_high])
        )
    if high <= low:
        raise PreprocessingError("image has no contrast (constant pixel values)")
    image = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def _header_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent; PreprocessingError naming it when
    its value is not an integer."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise PreprocessingError(f"{keyword} is not an integer") from exc


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the VOI transform pydicom applies (PS3.3 C.11.2.1)."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits_stored = int(ds.BitsStored)
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits_stored - 1)
    else:
        y_min, y_max = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = (
            y_min * float(slope) + float(intercept),
            y_max * float(slope) + float(intercept),
        )
    return y_min, y_max


def stretched(display: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """A display image rescaled to its own minimum and maximum when
    ``preprocess.stretch_display`` asks for it (MAIRA-2's processor does this to every
    image), else the image itself."""
    if not config.stretch_display:
        return display
    low, high = float(display.min()), float(display.max())
    if high <= low:
        raise PreprocessingError("image has no contrast (constant pixel values)")
    return ((display - low) / (high - low)).astype(np.float32)


def resize_square(image: np.ndarray, size: int, mode: str, fill: float = 0.0) -> np.ndarray:
    """Resize a 2-D image to ``size`` x ``size`` keeping its aspect ratio.

    Parameters
    ----------
    image
        2-D float array.
    size
        Output side length.
    mode
        ``"pad"`` fits the long side and pads the short one with ``fill`` (0: black, like
        air);
        ``"crop"`` fits the short side and crops the centre; ``"stretch"`` resizes each side
        to ``size`` (the aspect ratio is not kept).
    fill
        The padding's value in [0, 1].

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32 array.
    """
    if mode not in ("pad", "crop", "stretch"):
        raise ValueError(f"mode must be 'pad', 'crop' or 'stretch', got {mode!r}")
    h, w = image.shape
    scale = size / max(h, w) if mode == "pad" else size / min(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "stretch":
        new_h = new_w = size
    resized = torch.from_numpy(resize_to(image, (new_h, new_w)))
    if mode == "pad":
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out = torch.full((size, size), float(fill), dtype=torch.float32)
        out[top : top + new_h, left : left + new_w] = resized
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out = resized[top : top + size, left : left + size]
    return out.clamp(0.0, 1.0).numpy()


def encoder_square(display: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """A display image resized to the encoder's square as ``config`` says (padding with the
    normalisation mean for ``pad_fill`` 'mean', which normalises to 0)."""
    fill = config.mean[0] if config.pad_fill == "mean" else 0.0
    return resize_square(display, config.image_size, config.resize_mode, fill)


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D image to ``size`` = ``(height, width)`` (bilinear, antialiased), float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(
        tensor, size=size, mode="bilinear", align_corners=False, antialias=True
    )[0, 0].numpy()


def tile_display(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """A display image as LLaVA-NeXT tiles (:mod:`inference.anyres`), normalised:
    ``(N, C, S, S)``."""
    tiles = tile_image(image, config.grid_pinpoints, config.image_size, resize_to)
    return np.stack([normalise(np.clip(t, 0.0, 1.0), config) for t in tiles])


def normalise(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Replicate a [0, 1] square image to the encoder's channels and normalise it.

    Returns
    -------
    numpy.ndarray
        ``(channels, size, size)`` float32 array.
    """
    stacked = np.repeat(image[None].astype(np.float32), config.channels, axis=0)
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    return ((stacked - mean) / std).astype(np.float32)


def preprocess_dataset(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    """Turn a DICOM radiograph into one encoder input of shape ``(C, S, S)``.

    Parameters
    ----------
    ds
        The image dataset (any transfer syntax pydicom can decode).
    config
        Preprocessing options stored in the model bundle.

    Returns
    -------
    numpy.ndarray
        float32 array ready for the vision encoder.

    Raises
    ------
    PreprocessingError
        See :func:`dataset_to_display`.
    """
    display = stretched(dataset_to_display(ds, config), config)
    return normalise(encoder_square(display, config), config)


def preprocess_display_image(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Preprocess an image already in display orientation (PNG/JPEG, bone bright).

    Integer arrays are scaled by their dtype's maximum; float arrays must lie in [0, 1].
    Used by training loaders for MIMIC-CXR-JPG style images.
    """
    scaled = stretched(_display_array(image), config)
    return normalise(encoder_square(scaled, config), config)


def _display_array(image: np.ndarray) -> np.ndarray:
    """A display image (PNG/JPEG pixels, bone bright) as a 2-D float array in [0, 1]."""
    array = np.asarray(image)
    if array.ndim == 3:  # RGB(A) export of a grayscale image: take the luminance channel
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise PreprocessingError(f"expected a 2-D grayscale image, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    scaled = array.astype(np.float32)
    if scaled.min() < 0.0 or scaled.max() > 1.0:
        raise PreprocessingError("float images must have values in [0, 1]")
    return scaled


def load_images(sources: list[Any], config: PreprocessConfig) -> np.ndarray:
    """Preprocess a study's images given as datasets, DICOM paths or display arrays.

    Returns
    -------
    numpy.ndarray
        ``(N, C, S, S)`` float32 batch in the order given.
    """
    if not sources:
        raise PreprocessingError("no images given")
    batch = []
    for source in sources:
        if isinstance(source, Dataset):
            batch.append(preprocess_dataset(source, config))
        elif isinstance(source, np.ndarray):
            if (
                source.ndim == 3
                and source.shape[0] == config.channels
                and source.shape[1] == source.shape[2] == config.image_size
            ):
                batch.append(source.astype(np.float32))  # already preprocessed
            else:
                batch.append(preprocess_display_image(source, config))
        else:
            batch.append(preprocess_dataset(read_dicom(source), config))
    return np.stack(batch)


def load_tiled_images(
    sources: list[Any], config: PreprocessConfig
) -> tuple[np.ndarray, list[int], list[Resolution]]:
    """:func:`load_images` for a model that sees each image as LLaVA-NeXT tiles
    (``preprocess.grid_pinpoints``).

    Returns
    -------
    tuple
        The tiles of all images ``(sum N_i, C, S, S)`` in order, the tile count ``N_i`` of
        each image, and each image's ``(height, width)`` before tiling.
    """
    if not sources:
        raise PreprocessingError("no images given")
    tiles, counts, sizes = [], [], []
    for source in sources:
        if isinstance(source, Dataset):
            display = dataset_to_display(source, config)
        elif isinstance(source, np.ndarray):
            display = _display_array(source)
        else:
            display = dataset_to_display(read_dicom(source), config)
        image_tiles = tile_display(stretched(display, config), config)
        tiles.append(image_tiles)
        counts.append(len(image_tiles))
        sizes.append((int(display.shape[0]), int(display.shape[1])))
    return np.concatenate(tiles), counts, sizes


__all__ = [
    "SUPPORTED_PHOTOMETRIC",
    "dataset_to_display",
    "encoder_square",
    "load_images",
    "load_tiled_images",
    "normalise",
    "preprocess_dataset",
    "preprocess_display_image",
    "read_dicom",
    "resize_square",
    "resize_to",
    "stretched",
    "tile_display",
]
