"""Logging of the node's services: text or JSON lines, and quiet third-party loggers.

The node's own messages name studies and SRs by digests of their UIDs only (see
:mod:`dicom_node._privacy`) and never patient names or IDs. pynetdicom logs full
identifiers (C-FIND identifiers hold patient names) at INFO and DEBUG, so its loggers stay
at WARNING whatever the node's level; Celery's task-received lines show task arguments
(row ids only) and are kept.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

#: Log line format of the text logs.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers that may print identifiers at INFO/DEBUG; kept at WARNING.
QUIET_LOGGERS = ("pynetdicom",)
#: Record attributes that are not user-supplied ``extra`` fields.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, thread, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Set up the root logger of a node process (replacing earlier handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


__all__ = ["QUIET_LOGGERS", "TEXT_FORMAT", "JsonFormatter", "configure_logging"]
