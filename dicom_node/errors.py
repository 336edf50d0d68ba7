"""Exceptions raised by the :mod:`dicom_node` package."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error raised by :mod:`dicom_node`."""


class SettingsError(NodeError):
    """A configuration value is invalid; the message names the key."""


class StudyInputError(NodeError):
    """Files given as one study cannot be used (none readable, several studies, ...)."""


class DatabaseError(NodeError):
    """The node's database cannot be opened, created or written."""


class SpoolError(NodeError):
    """A received instance cannot be written to the spool folder."""


class DiskFullError(SpoolError):
    """Writing would leave less free space than ``storage.min_free_bytes``."""


class ServiceError(NodeError):
    """A network service of the node cannot start (port in use, bad TLS files, ...)."""


class WorklistError(NodeError):
    """The RIS worklist could not be queried; the message names no patient."""


class RisUnavailableError(WorklistError):
    """The RIS cannot be reached: connection refused or timed out, association rejected or
    aborted, or no response in time. Worth trying again later."""


class WorklistQueryError(WorklistError):
    """The RIS answered the C-FIND with a failure status (``status`` holds the code), or does
    not offer the Modality Worklist service (``status`` is ``None``)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class OutboxError(NodeError):
    """An SR cannot be put into the outbox (no such study, file not writable, ...)."""


class ReportStoreError(NodeError):
    """A report version cannot be stored or read (file not writable, missing, ...)."""


class StaleVersionError(ReportStoreError):
    """A new report version was based on a version that is no longer the latest."""

    def __init__(self, message: str, latest: int | None) -> None:
        super().__init__(message)
        self.latest = latest


#: How the reason of a job the content check kept from drafting begins. Such a job is
#: ``failed``, but it is the image's doing, not the node's: ``/healthz`` does not count it.
NOT_DRAFTED_PREFIX = "not drafted: "


class JobError(NodeError):
    """A report job cannot be run (its images are gone, the model refused them, ...)."""


class TransientJobError(JobError):
    """A report job failed for a reason that may pass (database or RIS briefly away)."""
