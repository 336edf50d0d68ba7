"""What the tasks of a worker process share: settings, the database engine, the model.

Created lazily in the process that runs the tasks (after a prefork pool's fork, never
before), once per process.

The model is the registry's active version (:mod:`dicom_node.models.registry`): which version is
active is read from the database at most every ``retrain.active_check_s`` seconds, so a
promotion reaches every worker without a restart. A job keeps the model object it started
with; once a new version is in use, the cache drops the others (a running job's model stays
alive until that job ends).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import describe_exception
from dicom_node.errors import ServiceError, TransientJobError
from dicom_node.models.model_cache import forget_models, get_model
from dicom_node.settings import Settings
from dicom_node.store import Database

if TYPE_CHECKING:
    from inference import ChestXrayVLM

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_settings: Settings | None = None
_database: Database | None = None
# The registry answer: (monotonic time it was read, version name, bundle folder).
_active_lock = threading.Lock()
_active: tuple[float, str, Path] | None = None
# The bundle of the model last handed out (a change drops the other cached models).
_in_use: Path | None = None


def set_settings(settings: Settings, database: Database | None = None) -> None:
    """Use these settings (and optionally this open database) for the tasks of the process."""
    global _settings, _database, _active, _in_use
    with _lock:
        _settings = settings
        _database = database
    with _active_lock:
        _active = None
        _in_use = None


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


def active_version() -> tuple[str, Path]:
    """Name and bundle folder of the active model version (read at most every
    ``retrain.active_check_s`` seconds).

    The first time, the configured ``inference.bundle`` is registered as the active version.
    When the database cannot be read, the last answer is kept.

    Raises
    ------
    inference.BundleError
        When the registry is empty and the configured bundle is missing or damaged.
    dicom_node.models.registry.RegistryError
        When the active version's bundle is not on this host.
    TransientJobError
        When the database cannot be read and there is no earlier answer.
    """
    from dicom_node.models.registry import active_bundle

    global _active
    config = settings()
    with _active_lock:
        now = time.monotonic()
        if _active is not None and now - _active[0] < config.retrain.active_check_s:
            return _active[1], _active[2]
        try:
            info = active_bundle(database(), config)
        except SQLAlchemyError as exc:
            if _active is None:
                raise TransientJobError(
                    f"cannot read the active model version: {type(exc).__name__}"
                ) from exc
            logger.warning(
                "cannot read the active model version (%s); keeping %s",
                type(exc).__name__, _active[1],
            )
            _active = (now, _active[1], _active[2])
            return _active[1], _active[2]
        if _active is not None and _active[1] != info.version:
            logger.info("active model version is now %s (was %s)", info.version, _active[1])
        _active = (now, info.version, info.bundle)
        return info.version, info.bundle


def load_model() -> ChestXrayVLM:
    """The registry's active version, loaded and self-tested once per version.

    Used by :func:`model` and by ``serve``'s warm-up, which makes the model ready.

    Raises
    ------
    inference.InferenceError
        When the bundle cannot be loaded (:class:`~inference.BundleError`) or the model
        fails its self-test (:class:`~inference.selftest.SelfTestError`).
    TransientJobError
        When the database cannot be read (see :func:`active_version`).
    """
    global _in_use
    _, bundle = active_version()
    loaded = get_model(settings().inference, bundle=bundle)
    with _active_lock:
        if _in_use is not None and _in_use != bundle:
            dropped = forget_models(keep=bundle)
            logger.info("switched to model %s %s; %d older model(s) released",
                        loaded.name, loaded.version, dropped)
        _in_use = bundle
    return loaded


def model() -> ChestXrayVLM:
    """The process's model for a job: :func:`load_model`, once the model may draft.

    Raises
    ------
    dicom_node.models.readiness.ModelNotReadyError
        While this process's warm-up is still building or loading the model, or when the
        model cannot be loaded or fails its self-test: the job waits (it is a transient
        error) instead of failing.
    TransientJobError
        When the database cannot be read (see :func:`active_version`).
    """
    from dicom_node.models.readiness import ModelNotReadyError, require_ready
    from inference import InferenceError

    require_ready()
    try:
        return load_model()
    except InferenceError as exc:
        raise ModelNotReadyError(f"the model is not usable: {describe_exception(exc)}") from exc


__all__ = ["active_version", "database", "load_model", "model", "set_settings", "settings"]
