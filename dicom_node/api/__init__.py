"""The interactive SR-amend loop: dialog API, reader page and their server.

The radiologist refines a study's draft in a dialog: questions are answered by the model,
corrections, rewrites, summaries and plain-language requests come back as proposed
revisions with a diff, and every accepted proposal, direct edit or sign-off becomes a new
SR version that names its predecessor and goes to the PACS. See ``docs/amend_loop.md``.

>>> server = ApiServer(settings, database=node.db)   # doctest: +SKIP
>>> host, port = server.start()                      # doctest: +SKIP
"""

from dicom_node.api._auth import Reader, token_digest
from dicom_node.api._classify import Intent, classify_message
from dicom_node.api.app import create_app
from dicom_node.api.dialog import DialogService, ModelProvider, PreparedTurn
from dicom_node.api.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    ModelOutputError,
    ModelUnavailableError,
    NoReportError,
    NotFoundError,
    PayloadTooLargeError,
    StaleVersionConflict,
    StudyNotFoundError,
    TooManyFailuresError,
)
from dicom_node.api.server import ApiServer

__all__ = [
    "ApiError",
    "ApiServer",
    "AuthenticationError",
    "ConflictError",
    "DialogService",
    "ForbiddenError",
    "Intent",
    "InvalidInputError",
    "ModelOutputError",
    "ModelProvider",
    "ModelUnavailableError",
    "NoReportError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PreparedTurn",
    "Reader",
    "StaleVersionConflict",
    "StudyNotFoundError",
    "TooManyFailuresError",
    "classify_message",
    "create_app",
    "token_digest",
]
