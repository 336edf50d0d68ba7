"""Retrain runs: their rows, and what the ``dicom_node.retrain(run_id)`` task does with one.

The Celery task itself is :mod:`dicom_node.jobqueue.training_tasks` (queue ``training``).

``dicom_node retrain --stages report,instruct [--since DATE]`` records a ``retrain_runs``
row (:func:`create_run`) and sends its id to the ``training`` queue
(:func:`dicom_node.jobqueue.dispatch.send_retrain`);
without a broker the command runs the task in the foreground. The task
(:func:`run_retrain`):

1. claims the row (``queued`` -> ``running``; a redelivered message finds nothing to do);
2. exports every study signed off since the date as a learning set with provenance
   (:mod:`dicom_node.retrain.learning`) in ``<retrain.work_dir>/run-<id>/``;
3. fine-tunes the active model version's adapters on it plus the base dataset
   (``retrain.base_data``), and evaluates candidate and active model on the same held-out
   studies (:func:`training.recipes.retrain.retrain`);
4. registers the candidate as a new, inactive model version with its metrics
   (:func:`dicom_node.models.registry.register_bundle`); an admin promotes it.

Progress, the current phase and the tail of the run's log are written to the row as the run
goes, so ``dicom_node retrain status`` shows them from any host. The message is acknowledged
when the worker takes it: a retrain lasts longer than any broker redelivery timeout, and a
worker that dies leaves its run ``running`` without progress (the status says so) rather
than starting it again elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.errors import NodeError
from dicom_node.settings import Settings
from dicom_node.store import Database, ModelSource, RetrainRun, RetrainState

logger = logging.getLogger(__name__)

#: Name of the retrain task.
#: Stages a retrain may run, in order (the LoRA adapters).
RETRAIN_STAGES = ("report", "instruct")
#: Seconds between two writes of a run's log tail while it runs.
LOG_FLUSH_S = 2.0
#: A running run not updated for this long has probably lost its worker.
STALE_AFTER_S = 1800.0
#: Seconds between two heartbeats of a running run (its row's updated_at), even when the
#: training logs nothing for a while.
HEARTBEAT_S = 60.0
#: Loggers whose INFO lines go into a run's log (others: warnings and errors only).
RUN_LOGGERS = (
    "training.recipes.retrain",
    "dicom_node.retrain.learning",
    "dicom_node.models.registry",
    __name__,
)


class RetrainError(NodeError):
    """A retrain run cannot be requested or run (the message says why)."""


@dataclass(frozen=True)
class RetrainRunInfo:
    """A ``retrain_runs`` row, as ``retrain status`` shows it."""

    id: int
    stages: tuple[str, ...]
    since: datetime | None
    state: RetrainState
    progress: float
    phase: str
    log_tail: str
    error: str | None
    candidate_version: str | None
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    def stale(self, now: datetime | None = None) -> bool:
        """Whether the run is ``running`` but has not been updated for a long time."""
        now = now or datetime.now(UTC)
        return (
            self.state is RetrainState.RUNNING
            and (now - self.updated_at).total_seconds() > STALE_AFTER_S
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``retrain status --json``)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value is not None else None

        return {
            "id": self.id,
            "stages": list(self.stages),
            "since": iso(self.since),
            "state": self.state.value,
            "progress": round(self.progress, 4),
            "phase": self.phase,
            "error": self.error,
            "candidate_version": self.candidate_version,
            "requested_by": self.requested_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "updated_at": iso(self.updated_at),
            "finished_at": iso(self.finished_at),
            "stale": self.stale(),
            "log_tail": self.log_tail,
        }


def _info(row: RetrainRun) -> RetrainRunInfo:
    return RetrainRunInfo(
        id=row.id,
        stages=tuple(s for s in row.stages.split(",") if s),
        since=row.since,
        state=row.state,
        progress=float(row.progress or 0.0),
        phase=row.phase,
        log_tail=row.log_tail or "",
        error=row.error,
        candidate_version=row.candidate_version,
        requested_by=row.requested_by,
        created_at=row.created_at,
        started_at=row.started_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


# --------------------------------------------------------------------------- requests
def parse_stages(text: str | Sequence[str]) -> tuple[str, ...]:
    """Stages from ``report,instruct`` (or a list), checked and in training order.

    Raises
    ------
    RetrainError
        For an empty list or a stage other than ``report`` and ``instruct``.
    """
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    names = [s for s in names if s]
    unknown = sorted(set(names) - set(RETRAIN_STAGES))
    if unknown or not names:
        raise RetrainError(
            f"--stages must name one or more of {', '.join(RETRAIN_STAGES)} "
            f"(got {', '.join(unknown or names) or 'none'}); the vision stages are not "
            "retrained on site data"
        )
    return tuple(s for s in RETRAIN_STAGES if s in names)


def work_dir(settings: Settings) -> Path:
    """Folder of retrain runs: ``retrain.work_dir`` or ``<storage.folder>/retrain``."""
    return settings.retrain.work_dir or settings.storage.folder / "retrain"


def create_run(
    db: Database,
    stages: Sequence[str],
    since: datetime | None,
    *,
    requested_by: str | None = None,
    now: datetime | None = None,
) -> RetrainRunInfo:
    """Record a queued retrain run and return it."""
    from dicom_node.models.registry import ensure_registry_tables

    now = now or datetime.now(UTC)
    ensure_registry_tables(db)
    with db.session() as session:
        row = RetrainRun(
            stages=",".join(parse_stages(list(stages))),
            since=since,
            state=RetrainState.QUEUED,
            progress=0.0,
            phase="queued",
            log_tail="",
            requested_by=requested_by[:64] if requested_by else None,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return _info(row)


def get_run(db: Database, run_id: int | None = None) -> RetrainRunInfo:
    """One run, or the newest when `run_id` is None.

    Raises
    ------
    RetrainError
        When there is no such run (or none at all).
    """
    from dicom_node.models.registry import ensure_registry_tables

    ensure_registry_tables(db)
    with db.session() as session:
        if run_id is None:
            row = session.scalar(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(1))
            if row is None:
                raise RetrainError("no retrain run has been requested yet")
        else:
            row = session.get(RetrainRun, run_id)
            if row is None:
                raise RetrainError(f"there is no retrain run {run_id}")
        return _info(row)


def list_runs(db: Database, limit: int = 10) -> list[RetrainRunInfo]:
    """The newest runs, newest first."""
    from dicom_node.models.registry import ensure_registry_tables

    ensure_registry_tables(db)
    with db.session() as session:
        rows = session.scalars(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(limit))
        return [_info(row) for row in rows]


def fail_run(db: Database, run_id: int, reason: str) -> None:
    """Mark a run that never started ``failed`` (e.g. its message could not be sent)."""
    now = datetime.now(UTC)
    with db.session() as session:
        session.execute(
            update(RetrainRun)
            .where(RetrainRun.id == run_id, RetrainRun.state == RetrainState.QUEUED)
            .values(state=RetrainState.FAILED, error=reason[:2000], updated_at=now,
                    finished_at=now, phase="not started")
        )


# --------------------------------------------------------------------------- the run
class _RunLog(logging.Handler):
    """Collects the log lines of one run's thread and writes their tail to its row."""

    def __init__(self, db: Database, run_id: int, max_chars: int) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.db = db
        self.run_id = run_id
        self.max_chars = max_chars
        self.thread = threading.get_ident()
        self.tail = ""
        self._written = 0.0
        self._writing = False
        self._db_lock = threading.Lock()
        self.progress: float | None = None
        self.phase: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread or self._writing:
            return
        if record.levelno < logging.WARNING and not record.name.startswith(RUN_LOGGERS):
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must not end the run
            return
        self.tail = (self.tail + line + "\n")[-self.max_chars :]
        if time.monotonic() - self._written >= LOG_FLUSH_S:
            self.flush_to_db()

    def flush_to_db(self) -> None:
        """Write the tail, progress and phase to the run's row (errors are logged)."""
        values: dict[str, object] = {"log_tail": self.tail, "updated_at": datetime.now(UTC)}
        if self.progress is not None:
            values["progress"] = self.progress
        if self.phase is not None:
            values["phase"] = self.phase[:64]
        with self._db_lock:
            self._writing = True
            try:
                with self.db.session() as session:
                    session.execute(
                        update(RetrainRun).where(RetrainRun.id == self.run_id).values(**values)
                    )
            except SQLAlchemyError as exc:
                logger.warning("cannot record the progress of retrain run %d: %s", self.run_id,
                               type(exc).__name__)
            finally:
                self._writing = False
                self._written = time.monotonic()

    def set_phase(self, phase: str, progress: float) -> None:
        """Record a new phase (written at once)."""
        self.phase, self.progress = phase, max(0.0, min(1.0, progress))
        logger.info("retrain run %d: %s (%.0f %%)", self.run_id, phase, 100 * self.progress)
        self.flush_to_db()


@contextmanager
def _capturing(log: _RunLog) -> Iterator[None]:
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in RUN_LOGGERS}
    for name in RUN_LOGGERS:
        logger_ = logging.getLogger(name)
        if not logger_.isEnabledFor(logging.INFO):
            logger_.setLevel(logging.INFO)
    root.addHandler(log)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            log.flush_to_db()

    beat = threading.Thread(target=heartbeat, name=f"retrain-{log.run_id}-heartbeat",
                            daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        root.removeHandler(log)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _claim(db: Database, run_id: int, now: datetime) -> bool:
    with db.session() as session:
        result = session.execute(
            update(RetrainRun)
            .where(RetrainRun.id == run_id, RetrainRun.state == RetrainState.QUEUED)
            .values(state=RetrainState.RUNNING, started_at=now, updated_at=now,
                    phase="starting", progress=0.0)
        )
        return bool(getattr(result, "rowcount", 0))


def _finish(db: Database, log: _RunLog, state: RetrainState, **values: object) -> None:
    now = datetime.now(UTC)
    with db.session() as session:
        session.execute(
            update(RetrainRun)
            .where(RetrainRun.id == log.run_id)
            .values(state=state, log_tail=log.tail, updated_at=now, finished_at=now, **values)
        )


def _candidate_name(db: Database, settings: Settings, run_id: int) -> str:
    from dicom_node.models.registry import VersionNotFoundError, get_version, registry_dir

    name = f"retrain-{run_id}"
    try:
        get_version(db, settings, name)
    except VersionNotFoundError:
        if not (registry_dir(settings) / name).exists():
            return name
    # A registry that outlived its database (restored from an older backup).
    return f"{name}-{datetime.now(UTC):%Y%m%d%H%M%S}"


def _period(since: datetime | None) -> str:
    return f" signed off since {since.date().isoformat()}" if since is not None else " signed off"


def run_retrain(settings: Settings, db: Database, run_id: int) -> RetrainRunInfo:
    """Run one retrain run (see the module docstring); returns its final state.

    A run that fails is recorded ``failed`` with the reason; failures of the data, the
    training or the registry are not raised (the row says what went wrong), unexpected ones
    are raised after being recorded.
    """
    from inference import InferenceError
    from training import TrainingError

    if not _claim(db, run_id, datetime.now(UTC)):
        logger.info("retrain run %d is not queued; skipped", run_id)
        return get_run(db, run_id)
    log = _RunLog(db, run_id, settings.retrain.log_tail_chars)
    with _capturing(log):
        try:
            candidate = _run(settings, db, get_run(db, run_id), log)
        except (NodeError, TrainingError, InferenceError, SoftTimeLimitExceeded, OSError,
                SQLAlchemyError) as exc:
            if isinstance(exc, SoftTimeLimitExceeded):
                reason = "time limit exceeded"
            elif isinstance(exc, SQLAlchemyError):
                reason = f"database error: {type(exc).__name__}: {exc}"
            else:
                reason = str(exc)
            logger.error("retrain run %d failed: %s", run_id, reason)
            _finish(db, log, RetrainState.FAILED, error=reason[:2000])
            return get_run(db, run_id)
        except Exception as exc:
            logger.exception("retrain run %d failed unexpectedly", run_id)
            _finish(db, log, RetrainState.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        _finish(db, log, RetrainState.DONE, progress=1.0, phase="done",
                candidate_version=candidate)
    return get_run(db, run_id)


def _run(settings: Settings, db: Database, run: RetrainRunInfo, log: _RunLog) -> str:
    from dicom_node.models.registry import active_bundle, register_bundle
    from dicom_node.retrain.learning import collect_signed_off, export_learning_set
    from training.recipes.retrain import RetrainPlan, retrain

    config = settings.retrain
    base_data = config.base_data if config.max_base_studies > 0 else None
    if base_data is not None and not base_data.exists():
        raise RetrainError(
            f"the base dataset {base_data} (retrain.base_data) does not exist; build the demo "
            "model (its phantoms are the default base), point retrain.base_data at a dataset, "
            "or set retrain.max_base_studies = 0 to train on signed-off studies only"
        )
    log.set_phase("collecting sign-offs", 0.01)
    active = active_bundle(db, settings)
    studies, skipped = collect_signed_off(db, settings.storage.spool_dir, since=run.since)
    if len(studies) < config.min_signed_off:
        raise RetrainError(
            f"{len(studies)} studies{_period(run.since)} with their images in the spool; "
            f"a retrain needs at least {config.min_signed_off} (retrain.min_signed_off)"
        )
    run_dir = work_dir(settings) / f"run-{run.id}"
    log.set_phase("exporting the learning set", 0.03)
    learning = export_learning_set(
        studies, run_dir / "signed_off", since=run.since, skipped=skipped
    )
    name = _candidate_name(db, settings, run.id)
    logger.info(
        "retrain run %d: %d studies (%d images, %d correction pairs); starting from model "
        "version %s; candidate %s", run.id, learning.n_studies, learning.n_images,
        learning.n_corrections, active.version, name,
    )
    plan = RetrainPlan(
        base_bundle=active.bundle,
        base_version=active.version,
        site_dicom=learning.dicom_dir,
        site_reports=learning.reports_csv,
        corrections=learning.corrections,
        stages=run.stages,  # type: ignore[arg-type]  # checked by parse_stages
        output_dir=run_dir / "training",
        candidate_dir=run_dir / "candidate",
        candidate_version=name,
        base_data=base_data,
        base_kind=config.base_data_kind,
        base_reports=config.base_reports,
        max_base_studies=config.max_base_studies,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        device=config.device,
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        eval_limit=config.eval_limit,
        eval_corrections=config.eval_corrections,
        runtime=settings.inference.runtime_options(),
    )
    result = retrain(plan, lambda phase, done: log.set_phase(phase, 0.05 + 0.9 * done))
    log.set_phase("registering the candidate", 0.96)
    metrics: dict[str, Any] = {
        **result.candidate,
        "baseline": {"version": active.version, **result.baseline},
        "held_out": {"site": result.held_out_site, "base": result.held_out_base},
        "site_studies": result.site_studies,
        "base_studies": result.base_studies,
        "site_corrections": result.site_corrections,
        "retrain_run": run.id,
        "stages": list(run.stages),
        "evaluated_on": "retrain held-out studies",
    }
    registered = register_bundle(
        db, settings, result.bundle, version=name, source=ModelSource.RETRAIN,
        parent=active.version, metrics=metrics, move=True,
    )
    logger.info(
        "retrain run %d: candidate %s registered (CE F1 macro %.3f; active %s %.3f on the same "
        "%d held-out studies); promote it with 'dicom_node model promote %s'",
        run.id, registered.version, result.candidate["ce_f1_macro"], active.version,
        result.baseline["ce_f1_macro"], int(result.candidate["n_studies"]), registered.version,
    )
    return registered.version


__all__ = [
    "RETRAIN_STAGES",
    "RetrainError",
    "RetrainRunInfo",
    "create_run",
    "fail_run",
    "get_run",
    "list_runs",
    "parse_stages",
    "run_retrain",
    "work_dir",
]
