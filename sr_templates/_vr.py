"""Checks of short string values against their DICOM value representation (PS3.5 6.2).

Values are checked where they enter the package (dataclass constructors), so that a bad value
is reported with the name of the field rather than as an encoding error deep inside pydicom.
All checks raise :class:`ValueError`: these values come from configuration or from the
calling code, not from the model.
"""

from __future__ import annotations

import unicodedata

#: Control characters a text value (LT, ST, UT) may hold besides graphic characters. PS3.5 6.2
#: also allows ESC, but only for ISO 2022 code extensions, which UTF-8 (ISO_IR 192) does not use.
TEXT_CONTROLS = frozenset("\r\n\f")


def disallowed_character(value: str, allowed_controls: frozenset[str]) -> int | None:
    """Return the index of the first character a DICOM string value may not hold, if any.

    Control characters (Unicode category Cc) other than `allowed_controls` are disallowed, as
    are lone surrogates, which cannot be encoded in UTF-8.
    """
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in allowed_controls) or category == "Cs":
            return index
    return None


def check_string(field: str, value: str, *, vr: str, max_chars: int) -> None:
    """Check a single-valued LO, SH or LT-like string.

    Parameters
    ----------
    field
        Name of the field, used in the error message.
    value
        The value to check.
    vr
        Value representation, used in the error message.
    max_chars
        Largest allowed number of characters.

    Raises
    ------
    TypeError
        If `value` is not a string.
    ValueError
        If it is too long, contains a backslash (the DICOM value delimiter) or a control
        character.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{field} has {len(value)} characters; {vr} allows at most {max_chars}")
    if "\\" in value:
        raise ValueError(f"{field} must not contain a backslash (the DICOM value delimiter)")
    index = disallowed_character(value, frozenset())
    if index is not None:
        raise ValueError(
            f"{field} contains the control character U+{ord(value[index]):04X} at index {index}"
        )


def check_lo(field: str, value: str) -> None:
    """Check a Long String (LO) value: at most 64 characters."""
    check_string(field, value, vr="LO", max_chars=64)


def check_sh(field: str, value: str) -> None:
    """Check a Short String (SH) value: at most 16 characters."""
    check_string(field, value, vr="SH", max_chars=16)


def check_person_name(field: str, value: str) -> None:
    """Check a Person Name (PN) value given in DICOM format, e.g. ``"Doe^Jane"``.

    Each component group (alphabetic, ideographic, phonetic; separated by ``=``) may hold at
    most 64 characters and five components separated by ``^``. A name without any ``^`` is
    rejected because it is almost always a name written in natural order by mistake; write
    ``"Bono^"`` for a name that really has a single component.

    Raises
    ------
    TypeError
        If `value` is not a string.
    ValueError
        If the value is empty or malformed.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not value.strip("^= "):
        raise ValueError(f"{field} must not be empty")
    if "^" not in value:
        raise ValueError(
            f"{field} must be in DICOM person name format 'Family^Given' "
            "(write 'Name^' for a single-component name)"
        )
    groups = value.split("=")
    if len(groups) > 3:
        raise ValueError(f"{field} has more than three component groups")
    for group in groups:
        if len(group) > 64:
            raise ValueError(f"{field} has a component group longer than 64 characters")
        if group.count("^") > 4:
            raise ValueError(f"{field} has more than five components in a component group")
    if "\\" in value:
        raise ValueError(f"{field} must not contain a backslash (the DICOM value delimiter)")
    index = disallowed_character(value, frozenset())
    if index is not None:
        raise ValueError(
            f"{field} contains the control character U+{ord(value[index]):04X} at index {index}"
        )
