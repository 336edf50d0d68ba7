"""Handing database rows to the queue: the node's transactional outbox for tasks.

The database is the source of truth: assembly writes job rows, the draft job writes outbox
rows, and both are committed before any message exists. :class:`Dispatcher` (run by
``dicom_node serve``) then sends

* each ``queued`` job that was never sent, or was sent more than
  ``worker.redispatch_after_s`` ago and is still queued (its message was lost with a broker
  restart, or the embedded queue's file was removed), as ``draft_report(job_id)``; and each
  ``running`` job whose worker was lost (no heartbeat for ``worker.stale_job_s``: killed,
  its host gone; see :mod:`dicom_node.pipeline.heartbeat`), logged as a WARNING naming the job,
  until it has used ``worker.max_retries`` + 1 attempts, after which it is ``failed``;
* the outbox rows whose next attempt is due (after a failed delivery, a restart, or a
  draft whose own delivery message was lost), and ``sending`` rows whose sender's
  heartbeat stopped (``delivery.claim_timeout_s``), as ``deliver(ids)``, at most once per
  ``delivery.retry_base_s`` per row.

Sending twice is harmless: a job or outbox row is claimed by one conditional UPDATE before
it is worked on, so a duplicate message finds nothing to do. Messages carry no result
subscription: the outcome is in the database, and a subscription to a Redis result store
would fail for good after an outage longer than its reconnect window. A broker that is down
is logged and tried again on the next pass; no row is lost. :meth:`Dispatcher.run` outlives
any failure of a pass, waiting longer after each failure in a row (up to
:data:`DISPATCH_BACKOFF_MAX_S`).

With the embedded worker (no broker configured) ``serve``'s own process is the only worker,
so at start :meth:`Dispatcher.requeue_abandoned` puts every job it left ``running`` back to
``queued`` and every outbox row it left ``sending`` back to ``pending``, without waiting
for the heartbeat timeouts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import describe_exception
from dicom_node.jobqueue.app import (
    APP_NAME,
    DELIVERY_QUEUE,
    GPU_QUEUE,
    RETRAIN_TASK,
    TRAINING_QUEUE,
    app,
)
from dicom_node.pipeline.delivery import release_claims
from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState, OutboxItem, OutboxState

logger = logging.getLogger(__name__)

#: How long sending one message may block on an unreachable broker (seconds).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5}
#: Most jobs / outbox rows sent in one pass.
DISPATCH_BATCH = 100
#: Longest wait between two passes after failed passes (seconds).
DISPATCH_BACKOFF_MAX_S = 15.0


@dataclass(frozen=True)
class DispatchResult:
    """What one :meth:`Dispatcher.dispatch_once` pass sent."""

    jobs: int
    deliveries: int


@dataclass(frozen=True)
class Requeued:
    """What :meth:`Dispatcher.requeue_abandoned` found left behind by a stopped node."""

    #: Jobs put back to ``queued``.
    jobs: tuple[int, ...]
    #: Jobs ``failed``: their worker was lost once more than their attempts allow.
    failed: tuple[int, ...]
    #: Outbox rows put back to ``pending`` (their SR may reach the PACS twice).
    deliveries: tuple[int, ...]


def _fail_lost_jobs(session: Any, limit: int, now: datetime, *conditions: Any) -> list[int]:
    """Fail the running jobs (matching ``conditions``) that used up their ``limit`` attempts;
    returns their ids."""
    return list(
        session.scalars(
            update(Job)
            .where(Job.state == JobState.RUNNING, Job.attempts >= limit, *conditions)
            .values(
                state=JobState.FAILED,
                error=f"the worker was lost {limit} times (time limit or crash)",
                finished_at=now,
                updated_at=now,
            )
            .returning(Job.id)
        )
    )


class Dispatcher:
    """Sends queued job rows and due outbox rows to the Celery queues.

    Parameters
    ----------
    settings
        The node's settings.
    db
        The node's database.
    app
        The configured Celery app (:func:`~dicom_node.jobqueue.configure.configure_app`).
    jobs_allowed
        Whether draft jobs may be sent now (``serve``'s embedded worker: once its model is
        ready); until then they stay ``queued``. ``None``: always.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        app: Celery,
        jobs_allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.app = app
        self.jobs_allowed = jobs_allowed
        self._delivery_sent: dict[int, datetime] = {}

    def _send(self, task: str, args: tuple[object, ...], queue: str) -> bool:
        try:
            self.app.send_task(
                f"{APP_NAME}.{task}",
                args=args,
                queue=queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                # No subscription to the task's result: nothing reads it, and the
                # subscription ties this thread to the result store.
                ignore_result=True,
            )
        except (KombuOperationalError, OSError) as exc:
            logger.warning("cannot reach the broker (%s); will try again", type(exc).__name__)
            return False
        return True

    def _give_up_on_lost_jobs(self, stale_before: datetime, now: datetime) -> None:
        """Fail lost running jobs that used up their attempts (their worker keeps dying)."""
        limit = self.settings.worker.max_retries + 1
        with self.db.session() as session:
            failed = _fail_lost_jobs(session, limit, now, Job.updated_at < stale_before)
        for job_id in sorted(failed):
            logger.error("job %d failed: its worker was lost %d times", job_id, limit)

    def dispatch_jobs(self, now: datetime) -> int:
        """Send the jobs that need a message; returns how many were sent.

        Those are queued jobs never sent or sent ``worker.redispatch_after_s`` ago, and
        running jobs whose worker was lost (no heartbeat for ``worker.stale_job_s``:
        killed at the hard time limit, crashed, or its host died), until they used up
        their attempts. Each lost job sent again is logged as a WARNING naming it.
        """
        if self.jobs_allowed is not None and not self.jobs_allowed():
            return 0
        worker = self.settings.worker
        resend_before = now - timedelta(seconds=worker.redispatch_after_s)
        stale_before = now - timedelta(seconds=worker.stale_job_s)
        self._give_up_on_lost_jobs(stale_before, now)
        with self.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.state, Job.updated_at, Job.attempts)
                .where(
                    or_(
                        and_(
                            Job.state == JobState.QUEUED,
                            or_(
                                Job.dispatched_at.is_(None),
                                Job.dispatched_at < resend_before,
                            ),
                        ),
                        and_(
                            Job.state == JobState.RUNNING,
                            Job.updated_at < stale_before,
                            or_(
                                Job.dispatched_at.is_(None),
                                Job.dispatched_at < stale_before,
                            ),
                        ),
                    )
                )
                .order_by(Job.id)
                .limit(DISPATCH_BATCH)
            ).all()
        sent = 0
        for job_id, state, updated_at, attempts in rows:
            if not self._send("draft_report", (job_id,), GPU_QUEUE):
                break
            with self.db.session() as session:
                session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=now))
            sent += 1
            if state is JobState.RUNNING:
                logger.warning(
                    "job %d was abandoned by its worker (no heartbeat for %.0f s); sent "
                    "again (attempt %d of %d)",
                    job_id,
                    (now - updated_at).total_seconds(),
                    attempts + 1,
                    worker.max_retries + 1,
                )
        if sent:
            logger.info("%d job(s) sent to the %s queue", sent, GPU_QUEUE)
        return sent

    def dispatch_deliveries(self, now: datetime) -> int:
        """Send the due outbox rows not sent recently; returns how many rows were sent.

        Due rows are ``pending`` ones whose next attempt has come, and ``sending`` ones
        whose sender's heartbeat stopped ``delivery.claim_timeout_s`` ago (the delivery
        task releases and sends them).
        """
        delivery = self.settings.delivery
        quiet = timedelta(seconds=delivery.retry_base_s)
        claim_stale_before = now - timedelta(seconds=delivery.claim_timeout_s)
        with self.db.session() as session:
            ids = list(
                session.scalars(
                    select(OutboxItem.id)
                    .where(
                        or_(
                            and_(
                                OutboxItem.state == OutboxState.PENDING,
                                OutboxItem.next_attempt_at <= now,
                            ),
                            and_(
                                OutboxItem.state == OutboxState.SENDING,
                                OutboxItem.updated_at < claim_stale_before,
                            ),
                        )
                    )
                    .order_by(OutboxItem.next_attempt_at)
                    .limit(DISPATCH_BATCH)
                )
            )
        self._delivery_sent = {
            row: at for row, at in self._delivery_sent.items() if row in ids and now - at < quiet
        }
        due = [row for row in ids if row not in self._delivery_sent]
        if not due or not self._send("deliver", (due,), DELIVERY_QUEUE):
            return 0
        for row in due:
            self._delivery_sent[row] = now
        return len(due)

    def dispatch_once(self, now: datetime | None = None) -> DispatchResult:
        """One pass: send jobs, then due deliveries."""
        now = now or datetime.now(UTC)
        return DispatchResult(self.dispatch_jobs(now), self.dispatch_deliveries(now))

    def requeue_abandoned(self, now: datetime | None = None) -> Requeued:
        """Take back the work a stopped node left half done (its worker was the only one).

        Every ``running`` job goes back to ``queued`` (sent at the next pass), or to
        ``failed`` when it has used ``worker.max_retries`` + 1 attempts (a job that keeps
        killing its worker); every ``sending`` outbox row goes back to ``pending``, due
        now. Each is logged as a WARNING (an ERROR for a failed job) naming its id.

        Call it only where no other worker can hold a claim: ``serve`` with its embedded
        worker, before that worker starts.

        Parameters
        ----------
        now
            The current time (timezone-aware); defaults to now.
        """
        now = now or datetime.now(UTC)
        limit = self.settings.worker.max_retries + 1
        with self.db.session() as session:
            failed = _fail_lost_jobs(session, limit, now)
            requeued = session.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING)
                .values(
                    state=JobState.QUEUED,
                    dispatched_at=None,
                    updated_at=now,
                    error="the node stopped while the job ran; queued again",
                )
                .returning(Job.id, Job.attempts)
            ).all()
        for job_id in sorted(failed):
            logger.error("job %d failed: its worker was lost %d times", job_id, limit)
        for job_id, attempts in sorted(requeued):
            logger.warning(
                "job %d was left running when the node stopped; queued again "
                "(attempt %d of %d)",
                job_id,
                attempts + 1,
                limit,
            )
        deliveries = release_claims(self.db, now)
        return Requeued(
            tuple(sorted(job_id for job_id, _ in requeued)),
            tuple(sorted(failed)),
            tuple(deliveries),
        )

    def run(
        self,
        stop: threading.Event,
        interval_s: float,
        before_pass: Callable[[], object] | None = None,
    ) -> None:
        """Dispatch every `interval_s` seconds until `stop` is set.

        No failure of a pass ends the loop: the database or the broker away, a bug, a
        library error. After a failed pass the wait doubles, up to
        :data:`DISPATCH_BACKOFF_MAX_S` (or `interval_s` when longer), and is back to
        `interval_s` after the next pass that succeeds.

        Parameters
        ----------
        stop
            Set it to end the loop.
        interval_s
            Seconds between passes (``node.assembly_interval_s``).
        before_pass
            Called at the start of each pass (``serve`` assembles studies there, so a new
            job is sent in the same pass that created it).
        """
        failures = 0
        while True:
            wait = interval_s
            try:
                if before_pass is not None:
                    before_pass()
                self.dispatch_once()
            except Exception as exc:  # noqa: BLE001 - the scheduler must outlive any failure
                failures += 1
                wait = max(
                    interval_s,
                    min(DISPATCH_BACKOFF_MAX_S, interval_s * 2.0 ** min(failures, 30)),
                )
                _log_failed_pass(exc, failures, wait)
            else:
                if failures:
                    logger.warning("dispatch passes succeed again after %d failure(s)", failures)
                failures = 0
            if stop.wait(wait):
                return


def _log_failed_pass(exc: Exception, failures: int, wait: float) -> None:
    """One line per failed pass; the first unexpected failure in a row with its traceback."""
    if isinstance(exc, SQLAlchemyError):
        # Transient (database restarting, locked): the next pass tries again.
        logger.warning(
            "dispatch pass failed: %s; next pass in %.1f s", type(exc).__name__, wait
        )
        return
    logger.error(
        "dispatch pass failed (%d in a row): %s; next pass in %.1f s",
        failures,
        describe_exception(exc),
        wait,
        exc_info=failures == 1,
    )


def send_retrain(settings: Settings, run_id: int) -> None:
    """Send a run to the ``training`` queue (the app must be configured).

    Raises
    ------
    kombu.exceptions.OperationalError
        When the broker cannot be reached (after one quick retry).
    """
    hard = settings.retrain.time_limit_s
    # By name: the task module imports the retrain package, which serve does not need.
    app.send_task(
        RETRAIN_TASK,
        args=(run_id,),
        queue=TRAINING_QUEUE,
        time_limit=hard,
        soft_time_limit=max(hard * 0.95, hard - 300.0),
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


__all__ = [
    "DISPATCH_BACKOFF_MAX_S",
    "DISPATCH_BATCH",
    "DispatchResult",
    "Dispatcher",
    "Requeued",
    "send_retrain",
]
