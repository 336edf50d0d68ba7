"""What the tasks of a worker process share: settings, the database engine, the model.

Created lazily in the process that runs the tasks (after a prefork pool's fork, never
before), once per process.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..errors import ServiceError
from ..model_cache import get_model
from ..settings import Settings
from ..store import Database

if TYPE_CHECKING:
    from inference import ChestXrayVLM

_lock = threading.Lock()
_settings: Settings | None = None
_database: Database | None = None


def set_settings(settings: Settings, database: Database | None = None) -> None:
    """Use these settings (and optionally this open database) for the tasks of the process."""
    global _settings, _database
    with _lock:
        _settings = settings
        _database = database


def settings() -> Settings:
    """The settings of the tasks (raises :class:`ServiceError` when not configured)."""
    if _settings is None:
        raise ServiceError("the task queue is not configured (configure_app was not called)")
    return _settings


def database() -> Database:
    """The process's database engine, opened on first use."""
    global _database
    with _lock:
        if _database is None:
            _database = Database(settings().database_url)
        return _database


def model() -> ChestXrayVLM:
    """The process's model (loaded once, see :mod:`dicom_node.model_cache`)."""
    return get_model(settings().inference)


__all__ = ["database", "model", "set_settings", "settings"]
