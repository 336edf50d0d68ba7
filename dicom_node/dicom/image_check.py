"""What the node needs from a received image, checked before it answers the C-STORE.

Reasons are short: they travel back in the C-STORE response's Error Comment (LO, 64
characters), where the sender's log shows them.

A data set that parses can still be unusable: a header value that does not parse
(NumberOfFrames "abc", RescaleSlope "abc", WindowCenter "x1y2"), pixel data shorter than its
Rows x Columns x BitsAllocated claim, a JPEG 2000 of 8.6 KB that claims 65535 x 65535 pixels,
or a patient attribute the SR must copy that is not valid DICOM (a birth date "1940-03-05").
Stored with a success status, such an instance used to fail later, in the worker, where
nobody at the modality sees it. :func:`check_image` finds these problems on receipt, from the
raw bytes of the few attributes involved (no pixel decoding, no pydicom value conversion:
conversion warnings quote the values), so the SCP can refuse with a status and a reason the
sender's log shows.

Checks, for every image:

* the decoded pixel data (Rows x Columns x frames x samples x bytes) stays within
  ``node.max_pixel_bytes``;
* native (uncompressed) pixel data is at least that long; encapsulated pixel data holds a
  fragment.

and, for an image the model will read (CR/DX storage, see :func:`is_model_image`):

* Rows, Columns, BitsAllocated, BitsStored, SamplesPerPixel 1, PhotometricInterpretation
  MONOCHROME1/2, NumberOfFrames an integer, Rescale Slope/Intercept and Window
  Center/Width numbers;
* the patient and study attributes an SR copies are valid: dates (DA), times (TM), sex (CS).
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from dicom_node.dicom.files import raw_text

#: Storage SOP classes whose images go to the model (a Secondary Capture never does, even
#: labelled CR: it is a screenshot, not a radiograph).
MODEL_IMAGE_CLASSES = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    }
)
#: Photometric interpretations of a chest radiograph.
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})

_IS = re.compile(r"^[+-]?\d{1,12}$")
_DS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_SEX = frozenset({"M", "F", "O"})
#: (keyword, kind) of the patient/study attributes the SR copies from its first source.
_COPIED = (
    ("PatientBirthDate", "DA"),
    ("StudyDate", "DA"),
    ("StudyTime", "TM"),
    ("PatientSex", "SEX"),
)


@dataclass(frozen=True)
class ImageProblem:
    """Why an image is refused: ``kind`` is ``"too large"`` or ``"unusable"``."""

    kind: str
    reason: str


def is_model_image(sop_class_uid: str) -> bool:
    """Whether images of this storage SOP class may go to the model (CR and DX)."""
    return sop_class_uid in MODEL_IMAGE_CLASSES


def _us(ds: Dataset, keyword: str) -> int | None:
    """An unsigned short (US) from its two raw little endian bytes."""
    item = ds.get_item(keyword)
    if item is None or item.value is None:
        return None
    value = item.value
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and len(value) == 2:
        return int(struct.unpack("<H", value)[0])
    raise ValueError(f"{keyword} cannot be read")


def _numbers(text: str, pattern: re.Pattern[str]) -> list[float]:
    values = [part.strip() for part in text.split("\\")]
    if not values or not all(pattern.match(v) for v in values):
        raise ValueError(text)
    numbers = [float(v) for v in values]
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError(text)
    return numbers


def _valid_date(text: str) -> bool:
    if not _DA.match(text):
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _check_copied(ds: Dataset) -> ImageProblem | None:
    for keyword, kind in _COPIED:
        text = raw_text(ds, keyword)
        if text is None:
            continue
        if kind == "DA":
            ok = _valid_date(text)
            what = "a DICOM date (DA, YYYYMMDD)"
        elif kind == "TM":
            ok = bool(_TM.match(text))
            what = "a DICOM time (TM, HHMMSS.FFFFFF)"
        else:
            ok = text.upper() in _SEX
            what = "M, F or O"
        if not ok:
            # The value itself is never quoted: it may identify the patient.
            return ImageProblem("unusable", f"{keyword} is not {what}")
    return None


def _pixel_geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(rows, columns, frames, samples, bits allocated); raises ValueError naming the key."""
    rows, columns = _us(ds, "Rows"), _us(ds, "Columns")
    bits = _us(ds, "BitsAllocated")
    samples = _us(ds, "SamplesPerPixel")
    if not rows or not columns:
        raise ValueError("Rows or Columns missing or 0")
    if bits not in (1, 8, 16, 32, 64):
        raise ValueError("BitsAllocated is not 1, 8, 16, 32 or 64")
    frames_text = raw_text(ds, "NumberOfFrames")
    frames = 1
    if frames_text is not None:
        if not _IS.match(frames_text) or int(frames_text) < 1:
            raise ValueError("NumberOfFrames is not a positive integer")
        frames = int(frames_text)
    return rows, columns, frames, samples or 1, bits


def decoded_pixel_bytes(ds: Dataset) -> int:
    """Memory the decoded pixel data of ``ds`` takes (its header's claim), the one rule of the
    SCP, the worker's door and the API's image routes.

    Rows x Columns x frames x samples x bytes per sample, BitsAllocated rounded up to whole
    bytes as decoders return them (1-bit data decodes to a byte per pixel). Nothing is
    decoded: a compressed stream of a few KB may claim gigabytes.

    Raises
    ------
    ValueError
        When a geometry attribute is missing or malformed; the message names it.
    """
    rows, columns, frames, samples, bits = _pixel_geometry(ds)
    return rows * columns * frames * samples * -(-bits // 8)


def _native_pixel_bytes(ds: Dataset) -> int:
    """Length native (uncompressed) Pixel Data must have: bits packed, rounded up once."""
    rows, columns, frames, samples, bits = _pixel_geometry(ds)
    return math.ceil(rows * columns * frames * samples * bits / 8)


def check_image(
    ds: Dataset,
    transfer_syntax: str,
    *,
    for_model: bool,
    max_pixel_bytes: int,
) -> ImageProblem | None:
    """The first problem of a received image data set, or None (see the module docstring).

    Parameters
    ----------
    ds
        The data set as parsed on receipt (values still raw).
    transfer_syntax
        Its transfer syntax UID.
    for_model
        Whether the model will read it (:func:`is_model_image`): then every attribute the
        preprocessing and the SR need is checked too.
    max_pixel_bytes
        Largest decoded pixel data accepted.
    """
    if ds.get_item("PixelData") is None:
        return ImageProblem("unusable", "the image has no Pixel Data") if for_model else None
    try:
        decoded = decoded_pixel_bytes(ds)
        needed = _native_pixel_bytes(ds)
    except ValueError as exc:
        return ImageProblem("unusable", str(exc))
    if decoded > max_pixel_bytes:
        return ImageProblem(
            "too large", f"pixel data {decoded} bytes > limit {max_pixel_bytes}"
        )
    item = ds.get_item("PixelData")
    raw = item.value if item is not None else None
    length = len(raw) if isinstance(raw, bytes) else 0
    encapsulated = bool(getattr(item, "length", 0) == 0xFFFFFFFF) or (
        isinstance(raw, bytes) and raw[:4] == b"\xfe\xff\x00\xe0"
    )
    if not encapsulated and length < needed:
        return ImageProblem("unusable", f"Pixel Data {length} bytes, header needs {needed}")
    if encapsulated and length < 16:
        return ImageProblem("unusable", "encapsulated Pixel Data holds no fragment")
    if not for_model:
        return None
    samples = _us(ds, "SamplesPerPixel") or 1
    photometric = (raw_text(ds, "PhotometricInterpretation") or "").upper()
    if samples != 1 or photometric not in MONOCHROME:
        return ImageProblem("unusable", "not grayscale: need MONOCHROME1/2, 1 sample")
    try:
        bits_stored = _us(ds, "BitsStored")
    except ValueError:
        bits_stored = None
    if not bits_stored or bits_stored > (_us(ds, "BitsAllocated") or 0):
        return ImageProblem("unusable", "BitsStored missing or over BitsAllocated")
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        text = raw_text(ds, keyword)
        if text is None:
            continue
        try:
            _numbers(text, _DS)
        except ValueError:
            return ImageProblem("unusable", f"{keyword} is not a decimal number (DS)")
    return _check_copied(ds)


def inflated_size_within(body: bytes, limit: int) -> bool:
    """Whether a deflated data set inflates to at most ``limit`` bytes (checked in chunks,
    without holding more than one chunk: a small deflated instance may claim gigabytes)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    data = body
    chunk = 1 << 20
    try:
        while data:
            out = inflater.decompress(data, chunk)
            total += len(out)
            if total > limit:
                return False
            data = inflater.unconsumed_tail
        total += len(inflater.flush())
    except zlib.error:
        return True  # not deflate data: parsing it fails and says so
    return total <= limit


def is_deflated(transfer_syntax: str) -> bool:
    """Whether the transfer syntax is Deflated Explicit VR Little Endian."""
    return transfer_syntax == DeflatedExplicitVRLittleEndian


__all__ = [
    "MODEL_IMAGE_CLASSES",
    "ImageProblem",
    "check_image",
    "decoded_pixel_bytes",
    "inflated_size_within",
    "is_deflated",
    "is_model_image",
]
