"""DICOM files and raw attribute values.

:func:`encode_dicom_file` writes a dataset as a DICOM file (the spool, the outbox and the
report versions keep files this way). :func:`raw_text` reads an attribute's value straight
from its bytes, without pydicom's value conversion: pydicom validates as it converts and may
put an invalid value into a warning, and values of the patient must never reach a log. The
SCP, its door checks and the worklist read the few attributes they need this way.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def raw_text(ds: Dataset, keyword: str) -> str | None:
    """An attribute's text straight from its bytes, stripped of spaces and NULs.

    Returns ``None`` when the attribute is absent or empty. Bytes are decoded as Latin-1 (every
    byte is a character), so no value can fail to decode.
    """
    item = ds.get_item(keyword)
    if item is None or item.value is None:
        return None
    value = item.value
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.strip(" \x00")
    return text or None


def encode_dicom_file(dataset: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta, data set)."""
    meta = FileMetaDataset()
    existing = getattr(dataset, "file_meta", None)
    if existing is not None:
        meta.update(existing)
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = BytesIO()
    original = getattr(dataset, "file_meta", None)
    dataset.file_meta = meta
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    finally:
        if original is None:
            del dataset.file_meta
        else:
            dataset.file_meta = original
    return buffer.getvalue()


__all__ = ["encode_dicom_file", "raw_text"]
