"""Logging of the node's services: text or JSON lines, and quiet third-party loggers.

The node's own messages name studies and SRs by digests of their UIDs only (see
:mod:`dicom_node._privacy`) and never patient names or IDs. pynetdicom logs full
identifiers (C-FIND identifiers hold patient names) at INFO and DEBUG, so its loggers stay
at WARNING whatever the node's level; Celery's task-received lines show task arguments
(row ids only) and are kept. When a peer the node calls (a PACS, the RIS) cannot be
reached, the node logs one WARNING that names it and says what happens next; pynetdicom's
two ERROR lines about the same refused connection are dropped
(:class:`ConnectionFailureFilter`).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import pythonjsonlogger.json

from dicom_node._privacy import describe_exception, scrub_text

#: Log line format of the text logs.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers that may print identifiers at INFO/DEBUG; kept at WARNING.
QUIET_LOGGERS = ("pynetdicom",)
#: Fields of each JSON line, renamed from the LogRecord attributes they come from.
JSON_FIELDS = {"levelname": "level", "name": "logger", "threadName": "thread",
               "exc_info": "exception"}


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per record (python-json-logger): ``time`` (UTC, ISO 8601, ms),
    ``level``, ``logger``, ``message``, ``thread``, ``extra`` fields and ``exception``."""

    def __init__(self) -> None:
        super().__init__(
            "{message}{levelname}{name}{threadName}",
            style="{",
            rename_fields=JSON_FIELDS,
            json_ensure_ascii=False,
            json_default=str,
        )

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        """Add the fields, and the record's time in UTC with milliseconds first."""
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted.

    A plain StreamHandler keeps the stream it was created with; when that stream is
    replaced and closed (a test runner capturing output, a daemon redirecting it), every
    later record fails with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the handler always writes to the current ``sys.stderr``."""


#: Loggers of the node's own packages: their messages name no patient by construction.
OWN_LOGGERS = ("dicom_node", "inference", "training", "sr_templates")


class ScrubFilter(logging.Filter):
    """Takes patient data out of log records before they are written.

    The node's own messages name no patient, but a library that meets a malformed value (a
    birth date pydicom cannot parse) quotes it, in its own log messages, in its warnings and
    in its exception texts. Records of other loggers (Python warnings included, see
    :func:`configure_logging`) are scrubbed whole (:func:`~dicom_node._privacy.scrub_text`);
    in the node's own records an exception passed as an argument is replaced by its
    scrubbed description (:func:`~dicom_node._privacy.describe_exception`). An attached
    traceback is formatted once and scrubbed (line numbers kept).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place; always keep it."""
        if not record.name.startswith(OWN_LOGGERS):
            # A library's message may quote the value it choked on (pydicom: "Invalid value
            # for VR DA: '05.03.1940'"), and Python warnings reach the log the same way.
            record.msg = scrub_text(record.getMessage())
            record.args = None
        elif isinstance(record.args, tuple) and any(
            isinstance(arg, BaseException) for arg in record.args
        ):
            record.args = tuple(
                describe_exception(arg) if isinstance(arg, BaseException) else arg
                for arg in record.args
            )
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub_text(text, digits=False)
            record.exc_info = None
        return True


#: pynetdicom's ERROR lines, by logger, for an association the node requested that could
#: not be set up: the peer refused the connection (``AssociationSocket.connect``) or never
#: answered the A-ASSOCIATE-RQ.
CONNECTION_FAILURE_LINES: dict[str, tuple[str, ...]] = {
    "pynetdicom.transport": (
        "Association request failed: unable to connect to remote",
        "TCP Initialisation Error:",
    ),
    "pynetdicom.acse": (
        "ACSE timeout reached while waiting for response to association request",
    ),
}


class ConnectionFailureFilter(logging.Filter):
    """Drops pynetdicom's ERROR lines about an association request whose peer is away.

    Only the node requests associations (SR delivery, worklist queries), and each of its
    callers logs the failure itself, once, naming the peer and the retry (``SR ... not
    delivered to pacs (attempt 3): PACS pacs (...) cannot be reached ...; next attempt in
    20 s``). pynetdicom's lines for the same event ("Association request failed: unable to
    connect to remote", "TCP Initialisation Error: [Errno 111] Connection refused", "ACSE
    timeout reached ...") would double every retry at ERROR level. Lines that tell more than
    the node's own (a rejection's reason, a TLS traceback) are kept.

    Parameters
    ----------
    prefixes
        Beginnings of the messages to drop.
    """

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep the record."""
        return not (
            record.levelno == logging.ERROR and str(record.msg).startswith(self.prefixes)
        )


_installed: logging.Handler | None = None


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Set up the root logger of a node process.

    Installs one :class:`StderrHandler` (replacing the one an earlier call installed; other
    handlers, such as a test runner's, are left alone) and sets the level.
    """
    global _installed
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    _installed = handler
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings go through the scrubbing handler
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, prefixes in CONNECTION_FAILURE_LINES.items():
        library = logging.getLogger(name)
        if not any(isinstance(f, ConnectionFailureFilter) for f in library.filters):
            library.addFilter(ConnectionFailureFilter(prefixes))


__all__ = [
    "CONNECTION_FAILURE_LINES",
    "QUIET_LOGGERS",
    "TEXT_FORMAT",
    "OWN_LOGGERS",
    "ConnectionFailureFilter",
    "JsonFormatter",
    "ScrubFilter",
    "StderrHandler",
    "configure_logging",
]
