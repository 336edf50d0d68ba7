"""Helpers that keep protected health information out of log messages.

Log messages of this package never contain patient names, patient IDs, accession numbers or
report text. UIDs are logged only as a short digest, which is enough to correlate log lines
with one SR without disclosing the UID itself.
"""

from __future__ import annotations

import hashlib


def uid_digest(uid: object) -> str:
    """Return a 12-character digest of a UID for log messages.

    Parameters
    ----------
    uid
        A UID (any object; its ``str`` is hashed). ``None`` gives ``"-"``.

    Returns
    -------
    str
        The first 12 hex digits of the SHA-256 of the UID.
    """
    if uid is None:
        return "-"
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:12]
