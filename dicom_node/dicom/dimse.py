"""DIMSE status codes the node answers with and reads (PS3.4 Annex B, C, K; PS3.7 Annex C).

Handlers return these named constants, never raw numbers. The ``0xC2xx`` values are
implementation-specific codes of the C-STORE "Error: Cannot understand" range ``Cxxx``;
pynetdicom itself uses ``0xC211`` for an exception in a handler, which the node never lets
happen.

As a service user (SR delivery, worklist queries) the node sorts the statuses a peer answers
with into :class:`StatusCategory` values with :func:`classify_store_status`: a send that
failed for lack of resources is tried again later, one the peer cannot accept is not.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class StoreStatus(IntEnum):
    """Statuses of the node's C-STORE SCP."""

    #: The instance is stored and recorded (or was already, or is one of our own SRs).
    SUCCESS = 0x0000
    #: An internal failure: the spool or the database could not be written.
    PROCESSING_FAILURE = 0x0110
    #: The SOP class is not one the node stores.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Refused: out of resources; the disk is (nearly) full.
    OUT_OF_RESOURCES = 0xA700
    #: The data set's SOP Class UID differs from the request's Affected SOP Class UID.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Cannot understand: the data set cannot be decoded.
    CANNOT_DECODE = 0xC210
    #: Cannot understand: an identifying UID is missing, invalid or contradicts the request.
    INVALID_IDENTIFIER = 0xC220
    #: Cannot understand: the instance, or its decoded pixel data, exceeds the node's limits.
    TOO_LARGE = 0xC230
    #: Cannot understand: the image lacks what the node needs from it (the reason says what).
    UNUSABLE_IMAGE = 0xC240


class FindStatus(IntEnum):
    """Statuses of a C-FIND service (Modality Worklist, PS3.4 K.4.1.1.4)."""

    #: Matching is complete; no further identifiers follow.
    SUCCESS = 0x0000
    #: An identifier (one match) follows; more may come.
    PENDING = 0xFF00
    #: An identifier follows, but the SCP did not support every optional key.
    PENDING_WARNING = 0xFF01
    #: Matching was cancelled (C-CANCEL).
    CANCEL = 0xFE00
    #: Refused: out of resources (wlmscpfs answers this when its lockfile is missing).
    OUT_OF_RESOURCES = 0xA700
    #: The identifier does not match the SOP class.
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Unable to process: first code of the ``Cxxx`` range.
    UNABLE_TO_PROCESS = 0xC000


#: C-FIND statuses that carry a match.
FIND_PENDING_STATUSES = frozenset({FindStatus.PENDING, FindStatus.PENDING_WARNING})


class StoreResponseStatus(IntEnum):
    """Statuses a storage SCP (the PACS) may answer a C-STORE with (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    #: Warning: requested optional attributes are not supported (PS3.7 C.4.1).
    WARNING_OPTIONAL_ATTRIBUTES = 0x0001
    #: Warning: the SCP coerced some element values (the instance is stored).
    WARNING_COERCION = 0xB000
    #: Warning: the SCP discarded some elements (the instance is stored).
    WARNING_ELEMENTS_DISCARDED = 0xB006
    #: Warning: the data set does not match the SOP class (the instance is stored).
    WARNING_DATASET_DOES_NOT_MATCH = 0xB007
    #: Failure: the SCP could not process the request (a general, often passing failure).
    PROCESSING_FAILURE = 0x0110
    #: Refused: the SCP does not store this SOP class.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Refused: the calling AE may not store.
    NOT_AUTHORIZED = 0x0124
    #: Refused: out of resources (first code of the ``A7xx`` range).
    OUT_OF_RESOURCES = 0xA700
    #: Error: the data set does not match the SOP class (first code of the ``A9xx`` range).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: cannot understand (first code of the ``Cxxx`` range).
    CANNOT_UNDERSTAND = 0xC000


class StatusCategory(StrEnum):
    """What a C-STORE response status means for the sender."""

    #: Stored (possibly with a warning): done.
    SUCCESS = "success"
    #: Not stored for a reason that may pass (resources, processing): send again later.
    TRANSIENT = "transient"
    #: Not stored and never will be as sent (data or SOP class refused): do not retry.
    PERMANENT = "permanent"


#: Status ranges (first, last) of "Refused: out of resources" answers: ``A7xx`` for C-STORE;
#: ``A8xx`` is not assigned by C-STORE, but some PACS answer it when short of resources.
OUT_OF_RESOURCES_RANGES: tuple[tuple[int, int], ...] = ((0xA700, 0xA7FF), (0xA800, 0xA8FF))
#: Status range of "Error: data set does not match SOP class".
DATASET_MISMATCH_RANGE: tuple[int, int] = (0xA900, 0xA9FF)
#: Status range of "Error: cannot understand".
CANNOT_UNDERSTAND_RANGE: tuple[int, int] = (0xC000, 0xCFFF)
#: Status range of C-STORE warnings (the instance is stored).
WARNING_RANGE: tuple[int, int] = (0xB000, 0xBFFF)
#: Failure statuses outside the ranges above that are worth another try.
TRANSIENT_STORE_STATUSES = frozenset({StoreResponseStatus.PROCESSING_FAILURE})


def _within(status: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= status <= bounds[1]


def classify_store_status(status: int) -> StatusCategory:
    """Sort a C-STORE response status into success, transient or permanent failure.

    Parameters
    ----------
    status
        The Status (0000,0900) of the C-STORE response.

    Returns
    -------
    StatusCategory
        ``SUCCESS`` for success and warnings (``0000``, ``0001``, ``Bxxx``); ``TRANSIENT``
        for out of resources (``A7xx``, ``A8xx``) and processing failure (``0110``);
        ``PERMANENT`` for every other failure, notably ``A9xx`` and ``Cxxx`` (the data set
        is refused) and ``0122`` (SOP class not supported).
    """
    if status in (
        StoreResponseStatus.SUCCESS,
        StoreResponseStatus.WARNING_OPTIONAL_ATTRIBUTES,
    ) or _within(status, WARNING_RANGE):
        return StatusCategory.SUCCESS
    if status in TRANSIENT_STORE_STATUSES or any(
        _within(status, bounds) for bounds in OUT_OF_RESOURCES_RANGES
    ):
        return StatusCategory.TRANSIENT
    return StatusCategory.PERMANENT


#: Longest Error Comment (0000,0902), an LO value.
ERROR_COMMENT_MAX_CHARS = 64

__all__ = [
    "CANNOT_UNDERSTAND_RANGE",
    "DATASET_MISMATCH_RANGE",
    "ERROR_COMMENT_MAX_CHARS",
    "FIND_PENDING_STATUSES",
    "OUT_OF_RESOURCES_RANGES",
    "TRANSIENT_STORE_STATUSES",
    "WARNING_RANGE",
    "FindStatus",
    "StatusCategory",
    "StoreResponseStatus",
    "StoreStatus",
    "classify_store_status",
]
