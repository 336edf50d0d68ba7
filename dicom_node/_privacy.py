"""Keeping protected health information out of log messages and file names.

Log messages of the node never contain patient names, patient IDs or accession numbers. UIDs
are logged only as a short digest, enough to follow one study through the logs without
disclosing the UID itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

#: Hex digits of a UID digest in log messages.
LOG_DIGEST_CHARS = 12

#: What stands in for a value taken out of a message.
REDACTED = "<redacted>"
#: Longest scrubbed exception text kept (a job's error column, a log line).
MAX_REASON_CHARS = 300

# A quoted literal: libraries quote the value they choke on ("Unable to convert
# '1940-03-0X' to 'DA'"), and that value may be a birth date, a name or an ID.
_QUOTED = re.compile(r"""'[^'\n]{1,200}'|"[^"\n]{1,200}"|`[^`\n]{1,200}`""")
# A DICOM person name (Family^Given^Middle).
_PERSON_NAME = re.compile(r"[^\s'\"=,;:()\[\]{}<>]*\^[^\s'\",;:()\[\]{}<>]*")
# Dates in DICOM (19400305) or ISO (1940-03-05) form, and other dates with separators.
_DATE = re.compile(
    r"\b(?:1[89]|20)\d{2}[-./]?(?:0\d|1[0-2])[-./]?[0-3]\d\b"
    r"|\b[0-3]?\d[-./][01]?\d[-./](?:1[89]|20)\d{2}\b"
)
# Any other long run of digits (an ID, an accession number, a UID component).
_DIGITS = re.compile(r"\d{5,}")


def uid_digest(uid: object, length: int = LOG_DIGEST_CHARS) -> str:
    """Return a short SHA-256 digest of a UID for log messages and listings.

    Parameters
    ----------
    uid
        A UID (its ``str`` is hashed); ``None`` gives ``"-"``.
    length
        Hex digits kept.

    Returns
    -------
    str
        The first `length` hex digits of the SHA-256 of the UID.
    """
    if uid is None:
        return "-"
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:length]


def patient_key(patient_id: str | None, issuer: str | None) -> str | None:
    """Return a pseudonymous key of a patient: SHA-256 of issuer and patient ID.

    Studies of one patient share the key, so they can be grouped without storing or
    showing the ID. ``None`` when the dataset has no Patient ID.

    Parameters
    ----------
    patient_id
        Patient ID (0010,0020).
    issuer
        Issuer of Patient ID (0010,0021), if any.
    """
    if not patient_id:
        return None
    text = f"{issuer or ''}\\{patient_id}"
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def scrub_text(text: str, known: Iterable[object] = (), *, digits: bool = True) -> str:
    """Take values that may identify a patient out of a free text (an exception message).

    Removes, in order: the ``known`` values (a dataset's patient name, ID, birth date,
    accession number, ...), quoted literals, DICOM person names, dates and, with
    ``digits``, runs of five or more digits. What remains says what went wrong without
    saying of whom.

    Parameters
    ----------
    text
        The text to scrub.
    known
        Values to remove wherever they appear (their ``str``; empty ones are ignored).
    digits
        Also remove long digit runs (off for tracebacks, whose line numbers are useful).
    """
    for value in sorted({str(v) for v in known if v is not None and str(v).strip()}, key=len,
                        reverse=True):
        text = text.replace(value, REDACTED)
    text = _QUOTED.sub(REDACTED, text)
    text = _PERSON_NAME.sub(REDACTED, text)
    text = _DATE.sub(REDACTED, text)
    if digits:
        text = _DIGITS.sub(REDACTED, text)
    return text


def describe_exception(exc: BaseException, known: Iterable[object] = ()) -> str:
    """``"<type>: <scrubbed message>"``, at most :data:`MAX_REASON_CHARS` characters.

    The form in which an unexpected exception is logged and stored (a job's error, an
    API's 5xx detail): the type says which failure it was, the message is scrubbed with
    :func:`scrub_text`.
    """
    message = scrub_text(str(exc), known).strip()
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
