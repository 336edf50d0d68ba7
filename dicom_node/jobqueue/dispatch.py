"""Handing database rows to the queue: the node's transactional outbox for tasks.

The database is the source of truth: assembly writes job rows, the draft job writes outbox
rows, and both are committed before any message exists. :class:`Dispatcher` (run by
``dicom_node serve``) then sends

* each ``queued`` job that was never sent, or was sent more than
  ``worker.redispatch_after_s`` ago and is still queued (its message was lost with a broker
  restart, or the embedded queue's file was removed), as ``draft_report(job_id)``; and each
  ``running`` job whose worker was lost (started more than ``worker.stale_job_s`` ago),
  until it has used ``worker.max_retries`` + 1 attempts, after which it is ``failed``;
* the outbox rows whose next attempt is due (after a failed delivery, a restart, or a
  draft whose own delivery message was lost) as ``deliver(ids)``, at most once per
  ``delivery.retry_base_s`` per row.

Sending twice is harmless: a job or outbox row is claimed by one conditional UPDATE before
it is worked on, so a duplicate message finds nothing to do. A broker that is down is
logged and tried again on the next pass; no row is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..settings import Settings
from ..store import Database, Job, JobState, OutboxItem, OutboxState
from .app import APP_NAME, DELIVERY_QUEUE, GPU_QUEUE

logger = logging.getLogger(__name__)

#: How long sending one message may block on an unreachable broker (seconds).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5}
#: Most jobs / outbox rows sent in one pass.
DISPATCH_BATCH = 100


@dataclass(frozen=True)
class DispatchResult:
    """What one :meth:`Dispatcher.dispatch_once` pass sent."""

    jobs: int
    deliveries: int


class Dispatcher:
    """Sends queued job rows and due outbox rows to the Celery queues.

    Parameters
    ----------
    settings
        The node's settings.
    db
        The node's database.
    app
        The configured Celery app (:func:`~dicom_node.jobqueue.app.configure_app`).
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
            )
        except (KombuOperationalError, OSError) as exc:
            logger.warning("cannot reach the broker (%s); will try again", type(exc).__name__)
            return False
        return True

    def _give_up_on_lost_jobs(self, stale_before: datetime, now: datetime) -> None:
        """Fail stale running jobs that used up their attempts (their worker keeps dying)."""
        limit = self.settings.worker.max_retries + 1
        with self.db.session() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.state == JobState.RUNNING,
                    Job.started_at < stale_before,
                    Job.attempts >= limit,
                )
                .values(
                    state=JobState.FAILED,
                    error=f"the worker was lost {limit} times (time limit or crash)",
                    finished_at=now,
                    updated_at=now,
                )
            )
        failed = result.rowcount  # type: ignore[attr-defined]
        if failed:
            logger.error("%d job(s) failed: their worker was lost %d times", failed, limit)

    def dispatch_jobs(self, now: datetime) -> int:
        """Send the jobs that need a message; returns how many were sent.

        Those are queued jobs never sent or sent ``worker.redispatch_after_s`` ago, and
        running jobs whose worker was lost (started ``worker.stale_job_s`` ago; killed at
        the hard time limit, or its host died), until they used up their attempts.
        """
        if self.jobs_allowed is not None and not self.jobs_allowed():
            return 0
        worker = self.settings.worker
        resend_before = now - timedelta(seconds=worker.redispatch_after_s)
        stale_before = now - timedelta(seconds=worker.stale_job_s)
        self._give_up_on_lost_jobs(stale_before, now)
        with self.db.session() as session:
            ids = list(
                session.scalars(
                    select(Job.id)
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
                                Job.started_at < stale_before,
                                or_(
                                    Job.dispatched_at.is_(None),
                                    Job.dispatched_at < stale_before,
                                ),
                            ),
                        )
                    )
                    .order_by(Job.id)
                    .limit(DISPATCH_BATCH)
                )
            )
        sent = 0
        for job_id in ids:
            if not self._send("draft_report", (job_id,), GPU_QUEUE):
                break
            with self.db.session() as session:
                session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=now))
            sent += 1
        if sent:
            logger.info("%d job(s) sent to the %s queue", sent, GPU_QUEUE)
        return sent

    def dispatch_deliveries(self, now: datetime) -> int:
        """Send the due outbox rows not sent recently; returns how many rows were sent."""
        quiet = timedelta(seconds=self.settings.delivery.retry_base_s)
        with self.db.session() as session:
            ids = list(
                session.scalars(
                    select(OutboxItem.id)
                    .where(
                        OutboxItem.state == OutboxState.PENDING,
                        OutboxItem.next_attempt_at <= now,
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

    def run(
        self,
        stop: threading.Event,
        interval_s: float,
        before_pass: Callable[[], object] | None = None,
    ) -> None:
        """Dispatch every `interval_s` seconds until `stop` is set.

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
        while True:
            try:
                if before_pass is not None:
                    before_pass()
                self.dispatch_once()
            except SQLAlchemyError as exc:
                # Transient (database restarting, locked): the next pass tries again.
                logger.warning("dispatch pass failed: %s", type(exc).__name__)
            if stop.wait(interval_s):
                return


__all__ = ["DISPATCH_BATCH", "DispatchResult", "Dispatcher"]
