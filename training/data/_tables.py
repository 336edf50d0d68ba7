"""CSV helpers shared by the loaders: plain or gzip tables, required columns, label values.

Every failure becomes a :class:`~training.errors.DatasetError` that names the file, and the
row and column where one applies, never a bare ``KeyError``.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from report_language.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from training.errors import DatasetError

#: Cell text accepted for each CheXpert value (blank and ``nan`` mean "not mentioned").
_LABEL_TEXT: Final[dict[str, float | None]] = {
    "": None,
    "nan": None,
    "1": POSITIVE,
    "1.0": POSITIVE,
    "0": NEGATIVE,
    "0.0": NEGATIVE,
    "-0.0": NEGATIVE,
    "-1": UNCERTAIN,
    "-1.0": UNCERTAIN,
}

#: Views counted as frontal, in the order they come first in a study's images.
FRONTAL_VIEWS: Final[tuple[str, ...]] = ("PA", "AP")

#: View name used when a file carries none.
UNKNOWN_VIEW: Final[str] = "UNKNOWN"


def find_optional_table(root: Path, stem: str) -> Path | None:
    """Return ``root/stem.csv.gz`` or ``root/stem.csv``, whichever exists, else ``None``."""
    for suffix in (".csv.gz", ".csv"):
        candidate = root / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_table(root: Path, stem: str) -> Path:
    """Return ``root/stem.csv.gz`` or ``root/stem.csv``, whichever exists.

    Raises
    ------
    DatasetError
        When neither exists.
    """
    path = find_optional_table(root, stem)
    if path is None:
        raise DatasetError(f"{root / stem}.csv(.gz) not found")
    return path


def read_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row_number, row)`` for each data row of a CSV file (gzip when ``.gz``).

    Rows are numbered as a spreadsheet shows them: the header is row 1, the first data row
    row 2 (a quoted cell spanning several lines still counts as one row). Cells are stripped;
    a short row reads as blanks.

    Raises
    ------
    DatasetError
        When the file is missing or unreadable, or lacks a required column.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.DictReader(text)
            header = reader.fieldnames
            if header is None:
                raise DatasetError(f"{path}: empty file, expected a header row")
            columns = {name.strip() for name in header}
            missing = [name for name in required if name not in columns]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}")
            for number, row in enumerate(reader, start=2):
                yield number, {
                    (key or "").strip(): (value or "").strip()
                    for key, value in row.items()
                    if isinstance(value, str | None)
                }
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read the table ({error})") from error


def table_columns(path: Path) -> list[str]:
    """Header of a CSV file (gzip when ``.gz``).

    Raises
    ------
    DatasetError
        When the file is missing, unreadable or empty.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            header = next(csv.reader(text), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read the table ({error})") from error
    if header is None:
        raise DatasetError(f"{path}: empty file, expected a header row")
    return [name.strip() for name in header]


def require_value(row: Mapping[str, str], column: str, path: Path, row_number: int) -> str:
    """The non-blank cell ``row[column]``.

    Raises
    ------
    DatasetError
        When the cell is blank.
    """
    value = row.get(column, "")
    if not value:
        raise DatasetError(f"{path}: row {row_number}, column {column!r} is empty")
    return value


def parse_label(value: str, path: Path, row_number: int, column: str) -> float | None:
    """Parse one CheXpert cell: ``1.0``, ``0.0``, ``-1.0`` or blank.

    Raises
    ------
    DatasetError
        For any other text.
    """
    key = value.strip().lower()
    if key not in _LABEL_TEXT:
        raise DatasetError(
            f"{path}: row {row_number}, column {column!r} has {value!r}; expected 1.0, 0.0, -1.0 "
            "or blank"
        )
    return _LABEL_TEXT[key]


def parse_labels(row: Mapping[str, str], path: Path, row_number: int) -> dict[str, float | None]:
    """All 14 CheXpert labels of a row (the columns must exist; see :func:`read_rows`)."""
    return {
        name: parse_label(row.get(name, ""), path, row_number, name) for name in CHEXPERT_LABELS
    }


def view_rank(view: str) -> int:
    """Sort key putting PA first, then AP, then every other view."""
    return FRONTAL_VIEWS.index(view) if view in FRONTAL_VIEWS else len(FRONTAL_VIEWS)


def normalise_view(view: str | None) -> str:
    """Upper-case view position; :data:`UNKNOWN_VIEW` when blank."""
    text = (view or "").strip().upper()
    return text or UNKNOWN_VIEW
