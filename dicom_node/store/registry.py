"""ORM models of the model registry and of retrain runs.

* ``model_versions``: every model bundle the site has registered (the configured one, retrain
  candidates, imported bundles), with its metrics and where its copy lives; exactly one row
  is active (a partial unique index enforces it on SQLite and PostgreSQL alike).
* ``retrain_runs``: admin retrain jobs: requested stages and date filter, state, progress, the
  tail of the run's log and the candidate version it registered.

Both tables name no patient: retrain logs carry study digests only.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.store._types import UTCDateTime
from dicom_node.store.models import Base, _state_column

#: Longest model version name (``report_versions.model_version`` holds the same names).
VERSION_NAME_LENGTH = 64


class ModelSource(enum.StrEnum):
    """Where a registered model version came from."""

    #: The demo model built by ``dicom_node model build-demo`` / the first ``serve``.
    DEMO = "demo"
    #: A candidate trained by ``dicom_node retrain``.
    RETRAIN = "retrain"
    #: A bundle registered by an administrator (``dicom_node model register``, or the
    #: site's configured ``inference.bundle`` when it is not the demo model).
    IMPORTED = "imported"


class RetrainState(enum.StrEnum):
    """Life cycle of a retrain run."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ModelVersion(Base):
    """One registered model bundle."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Unique name; the bundle's manifest carries it as its version, so report versions
    #: drafted with it record it as ``model_version``.
    version: Mapped[str] = mapped_column(String(VERSION_NAME_LENGTH), unique=True)
    #: Bundle folder relative to the registry folder (``retrain.registry_dir``), so every
    #: worker host resolves it against its own copy of the registry.
    bundle_path: Mapped[str] = mapped_column(String(400))
    #: The bundle's model name (manifest ``name``).
    model_name: Mapped[str] = mapped_column(String(64))
    #: The manifest version the bundle had before it was registered.
    original_version: Mapped[str | None] = mapped_column(String(64))
    #: JSON object of headline metrics (``ce_f1_macro``, ...; see
    #: :mod:`dicom_node.models.registry`).
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    source: Mapped[ModelSource] = mapped_column(_state_column(ModelSource))
    #: The version a retrain candidate was trained from.
    parent_version: Mapped[str | None] = mapped_column(String(VERSION_NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    promoted_by: Mapped[str | None] = mapped_column(String(64))
    #: The version that was active when this one was last promoted (what rollback restores).
    previous_version: Mapped[str | None] = mapped_column(String(VERSION_NAME_LENGTH))
    #: How the last promotion went (forced past the CE F1 gate, rollback, ...).
    promotion_note: Mapped[str | None] = mapped_column(String(400))

    __table_args__ = (
        # Exactly one active version: at most one row with active true (the registry
        # functions keep at least one).
        Index(
            "uq_model_versions_one_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )


class RetrainRun(Base):
    """One retrain job: requested by an admin, run by a ``training`` queue worker."""

    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Comma-separated training stages (``report,instruct``).
    stages: Mapped[str] = mapped_column(String(64))
    #: Only studies signed off at or after this time (None = all).
    since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    state: Mapped[RetrainState] = mapped_column(
        _state_column(RetrainState), default=RetrainState.QUEUED, index=True
    )
    #: 0.0 to 1.0.
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    #: What the run is doing now ("training report", "evaluating", ...).
    phase: Mapped[str] = mapped_column(String(64), default="queued")
    #: The last ``retrain.log_tail_chars`` characters of the run's log.
    log_tail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    #: The model version the run registered.
    candidate_version: Mapped[str | None] = mapped_column(String(VERSION_NAME_LENGTH))
    #: Who asked for it (OS user of the command line).
    requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Last progress or log update (a running run not updated for long lost its worker).
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


__all__ = [
    "VERSION_NAME_LENGTH",
    "ModelSource",
    "ModelVersion",
    "RetrainRun",
    "RetrainState",
]
