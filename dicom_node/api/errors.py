"""Errors of the dialog API, each with the HTTP status it is answered with.

Messages name the refused input or the state that refuses it (a version number, a proposal
id), never patient data or report text: they reach the audit log and the client.
"""

from __future__ import annotations

from dicom_node.errors import NodeError


class ApiError(NodeError):
    """Base class of the dialog API's errors; ``status_code`` is the HTTP answer."""

    status_code = 400


class AuthenticationError(ApiError):
    """No bearer token, or one that belongs to no configured user."""

    status_code = 401


class ForbiddenError(ApiError):
    """The user may not do this (e.g. sign off without ``may_sign``)."""

    status_code = 403


class StudyNotFoundError(ApiError):
    """The study is not recorded by the node."""

    status_code = 404


class NotFoundError(ApiError):
    """A proposal, instance or version of the study does not exist."""

    status_code = 404


class ConflictError(ApiError):
    """The request does not fit the study's current state."""

    status_code = 409


class StaleVersionConflict(ConflictError):
    """The request was based on a report version that is no longer the latest."""

    def __init__(self, message: str, latest: int | None) -> None:
        super().__init__(message)
        self.latest = latest


class FindingsDisagreeConflict(ConflictError):
    """Sign-off refused: the text states some findings otherwise than their codes."""

    def __init__(self, message: str, labels: list[str]) -> None:
        super().__init__(message)
        self.labels = labels


class NoReportError(ConflictError):
    """The study has no report version yet (its draft is not written)."""


class InvalidInputError(ApiError):
    """The request is well-formed but its content cannot be used (empty text, ...)."""

    status_code = 422


class PayloadTooLargeError(ApiError):
    """A message or request body exceeds the configured limit."""

    status_code = 413


class TooManyFailuresError(ApiError):
    """The client presented too many invalid tokens lately; ``retry_after`` is in seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelOutputError(ApiError):
    """The model's answer cannot be used as a revision (e.g. an empty section)."""

    status_code = 502


class ModelUnavailableError(ApiError):
    """The model bundle cannot be loaded or the study's images cannot be analysed."""

    status_code = 503


__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConflictError",
    "FindingsDisagreeConflict",
    "ForbiddenError",
    "InvalidInputError",
    "ModelOutputError",
    "ModelUnavailableError",
    "NoReportError",
    "NotFoundError",
    "PayloadTooLargeError",
    "StaleVersionConflict",
    "StudyNotFoundError",
    "TooManyFailuresError",
]
