"""DIMSE status codes the node answers with (PS3.4 Annex B, PS3.7 Annex C).

Handlers return these named constants, never raw numbers. The ``0xC2xx`` values are
implementation-specific codes of the C-STORE "Error: Cannot understand" range ``Cxxx``;
pynetdicom itself uses ``0xC211`` for an exception in a handler, which the node never lets
happen.
"""

from __future__ import annotations

from enum import IntEnum


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


#: Longest Error Comment (0000,0902), an LO value.
ERROR_COMMENT_MAX_CHARS = 64

__all__ = ["ERROR_COMMENT_MAX_CHARS", "StoreStatus"]
