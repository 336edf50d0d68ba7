"""Exceptions raised by the :mod:`sr_templates` package.

Every domain failure derives from :class:`SRError`, so the DICOM node can catch one type and
report the message. Messages name the offending attribute, field or label; they never contain
patient names, patient IDs or other attribute *values* taken from the images, because they end
up in logs. Programming errors (wrong types, a probability outside [0, 1], an unknown label)
raise :class:`TypeError` or :class:`ValueError` instead.
"""

from __future__ import annotations

__all__ = [
    "EmptyReportError",
    "InconsistentFindingsError",
    "InconsistentSourcesError",
    "InvalidTextError",
    "MissingSourceAttributeError",
    "NotSignedError",
    "SRError",
    "TextTooLongError",
    "UnsupportedDocumentError",
    "UnsupportedSourceError",
    "WorklistMismatchError",
]


class SRError(Exception):
    """Base class of every domain error raised by :mod:`sr_templates`."""


class MissingSourceAttributeError(SRError):
    """A source image (or the previous SR) lacks an attribute the new SR must copy.

    Parameters
    ----------
    keyword
        DICOM keyword of the missing attribute, e.g. ``"PatientID"``.
    source
        Human-readable description of the dataset, e.g. ``"source image #1"``.
    reason
        Why the attribute is needed.
    """

    def __init__(self, keyword: str, source: str, reason: str) -> None:
        self.keyword = keyword
        self.source = source
        super().__init__(f"{source} lacks {keyword}, {reason}")


class InconsistentSourcesError(SRError):
    """The source images do not belong to one patient and one study, or repeat an instance."""


class UnsupportedSourceError(SRError):
    """A source dataset is not an image the SR can reference with an IMAGE content item."""


class WorklistMismatchError(SRError):
    """The worklist entry names a different study or accession number than the images."""


class EmptyReportError(SRError):
    """A required report text (findings or impression) is empty or only white space."""


class InvalidTextError(SRError):
    """A report text contains characters that a DICOM UT value may not hold."""


class TextTooLongError(SRError):
    """A report text is longer than a TEXT content item (UT value) can hold.

    Parameters
    ----------
    field
        Name of the report field, e.g. ``"findings_text"``.
    size
        Size of the text in bytes, as encoded (UTF-8, padded to even length).
    limit
        Largest allowed size in bytes.
    """

    def __init__(self, field: str, size: int, limit: int) -> None:
        self.field = field
        self.size = size
        self.limit = limit
        super().__init__(
            f"{field} is {size} bytes when encoded in UTF-8, more than the {limit} bytes a "
            "TEXT content item may hold here; shorten the text (it is not split or truncated)"
        )


class InconsistentFindingsError(SRError):
    """The coded findings are incomplete, repeated or contradict each other."""


class UnsupportedDocumentError(SRError):
    """A dataset is not an SR document this package can read or amend."""


class NotSignedError(SRError):
    """An addendum was requested for an SR that is not signed off (Verification Flag VERIFIED).

    An unsigned report is amended (:func:`sr_templates.build_amended_sr`), not added to.
    """
