"""Keeping protected health information out of log messages and file names.

Log messages of the node never contain patient names, patient IDs or accession numbers. UIDs
are logged only as a short digest, enough to follow one study through the logs without
disclosing the UID itself.
"""

from __future__ import annotations

import hashlib

#: Hex digits of a UID digest in log messages.
LOG_DIGEST_CHARS = 12


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
