"""Attribute values read straight from their bytes, without pydicom's value conversion.

pydicom validates as it converts and may put an invalid value into a warning; values of the
patient must never reach a log. The SCP, its door checks and the worklist read the few
attributes they need this way and compare or store them as text.
"""

from __future__ import annotations

from pydicom.dataset import Dataset


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


__all__ = ["raw_text"]
