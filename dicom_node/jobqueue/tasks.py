"""The node's Celery tasks. Arguments are row ids; everything else is in the database.

``dicom_node.draft_report(job_id)`` (queue ``gpu``)
    Drafts the job with the process's model, together with up to ``worker.batch_size`` - 1
    other queued jobs (:mod:`~dicom_node.jobqueue.batching`; one vision call and one
    batched ``generate`` in :func:`~dicom_node.pipeline.drafting.draft_jobs`), then sends
    each new SR's outbox rows to the ``delivery`` queue. While the batch runs, one heartbeat
    refreshes every row it claimed every ``worker.stale_job_s`` / 4 seconds (for at most
    ``worker.time_limit_s``), so ``serve`` sees within ``worker.stale_job_s`` that a worker
    died and sends the jobs again. Each job keeps its own outcome: transient failures
    (database away) put a job back in ``queued``; the task's own job is then retried with
    exponential backoff up to ``worker.max_retries``, the batch's other jobs are sent again
    with the same backoff. Permanent failures (images unusable) fail that job at once. The jobs
    still running when the batch hits the soft time limit are failed.
``dicom_node.dialog_turn(request, channel)`` (queue ``dialog``, with a Redis broker)
    Answers a reader's dialog turn with the process's model and publishes its text on the
    turn's Redis channel (:mod:`~dicom_node.jobqueue.dialog`).
``dicom_node.deliver(outbox_ids)`` (queue ``delivery``)
    Runs :func:`~dicom_node.pipeline.delivery.deliver_items`. A PACS that is down is not a task
    failure: the rows stay pending with their own backoff, and ``serve`` sends them again
    when due (see :mod:`~dicom_node.jobqueue.dispatch`).

Messages are sent without a result subscription (``ignore_result=True``): outcomes live in
the node's database, and a subscription would tie the sender to the result store (a Redis
outage longer than its reconnect window ends the subscriber for good).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.errors import JobError, TransientJobError
from dicom_node.jobqueue import context
from dicom_node.jobqueue.app import APP_NAME, DELIVERY_QUEUE, app
from dicom_node.jobqueue.batching import collect_batch
from dicom_node.jobqueue.dialog import (
    CHANNEL_PREFIX,
    DIALOG_TASK,
    RecentAnalyses,
    TurnChannel,
    run_on_worker,
)
from dicom_node.latency import INFERENCE_SECONDS, JOB_SECONDS
from dicom_node.pipeline.delivery import DeliveryOutcome, deliver_items
from dicom_node.pipeline.drafting import DraftOutcome, draft_jobs, fail_claimed, touch_jobs
from dicom_node.pipeline.heartbeat import Heartbeat, heartbeat_interval
from dicom_node.store import Job, JobState

logger = logging.getLogger(__name__)

#: Seconds before a job's first retry after a transient error (doubled per attempt).
RETRY_BACKOFF_S = 5


@app.task(  # type: ignore[untyped-decorator]
    name=f"{APP_NAME}.draft_report",
    bind=True,
    acks_late=True,
    autoretry_for=(TransientJobError,),
    retry_backoff=RETRY_BACKOFF_S,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def draft_report(self: Task, job_id: int) -> dict[str, Any]:
    """Draft the report of one job, with the batch it leads, and queue the deliveries (see
    the module docstring)."""
    settings = context.settings()
    db = context.database()
    started = time.perf_counter()
    job_ids = [job_id]
    claimed_at: datetime | None = None
    try:
        model = context.model()  # before the claim: a first load does not age the claim
        job_ids = collect_batch(settings, db, job_id)
        claimed_at = datetime.now(UTC)  # every claim's time, which names this run's heartbeat
        heartbeat = Heartbeat(
            partial(touch_jobs, db, job_ids, claimed_at),
            heartbeat_interval(settings.worker.stale_job_s),
            f"job {job_id}" + (f" and {len(job_ids) - 1} more" if len(job_ids) > 1 else ""),
            max_s=settings.worker.time_limit_s,
        )
        with heartbeat:
            results = draft_jobs(settings, db, model, job_ids, now=claimed_at)
    except SoftTimeLimitExceeded:
        logger.error("job %d hit the soft time limit (%.0f s)", job_id,
                     settings.worker.soft_time_limit_s)
        if claimed_at is not None:
            fail_claimed(db, job_ids, claimed_at, "time limit exceeded")
        raise
    elapsed = time.perf_counter() - started
    for other, result in zip(job_ids[1:], results[1:], strict=True):
        _after(other, result, elapsed)
    leader = results[0]
    if isinstance(leader, TransientJobError):
        logger.warning("job %d: %s; retrying", job_id, leader)
        raise leader
    _after(job_id, leader, elapsed)
    if isinstance(leader, JobError):
        return {"job_id": job_id, "state": JobState.FAILED.value, "error": str(leader),
                "batch": len(job_ids)}
    return {
        "job_id": job_id,
        "state": leader.state.value if leader.state else None,
        "report_version": leader.report_version,
        "batch": len(job_ids),
    }


def _after(job_id: int, result: DraftOutcome | JobError, elapsed: float) -> None:
    """Log a job's failure, or observe its latencies and send its SR's delivery.

    The leader's job is retried by Celery. Another job of the batch back in ``queued``
    after a transient failure (its own message was used up) is sent again with the same
    exponential backoff (:func:`_send_again`).
    """
    if isinstance(result, TransientJobError):
        delay = _send_again(job_id)
        logger.warning("job %d: %s; queued again%s", job_id, result,
                       f", sent again in {delay:.0f} s" if delay is not None else "")
        return
    if isinstance(result, JobError):
        logger.error("job %d failed: %s", job_id, result)
        return
    if result.state is not JobState.DONE:
        return
    JOB_SECONDS.observe(elapsed)
    if result.inference_seconds:
        INFERENCE_SECONDS.observe(result.inference_seconds)
    if result.outbox_ids:
        deliver.apply_async((result.outbox_ids,), queue=DELIVERY_QUEUE, ignore_result=True)


def _send_again(job_id: int) -> float | None:
    """Send a batch's job that a transient failure put back in ``queued`` again, after
    Celery's backoff for its attempts so far (5 s doubled per attempt, at most
    ``worker.retry_backoff_max_s``); returns the delay. With ``worker.max_retries`` + 1
    attempts used, or the database or the broker away, it is left to the dispatcher
    (``worker.redispatch_after_s``) and None is returned."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    worker = context.settings().worker
    try:
        with context.database().session() as session:
            attempts = int(session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0)
    except SQLAlchemyError:
        return None
    if attempts > worker.max_retries:
        return None
    delay = min(worker.retry_backoff_max_s, RETRY_BACKOFF_S * 2.0 ** max(0, attempts - 1))
    try:
        draft_report.apply_async((job_id,), countdown=delay, ignore_result=True)
    except (KombuOperationalError, OSError):
        return None
    return delay


#: The image analyses of the studies this worker process answered turns about.
_ANALYSES = RecentAnalyses()


@app.task(  # type: ignore[untyped-decorator]
    name=DIALOG_TASK,
    bind=True,
    # Acknowledged when taken: a turn lost with its worker is not answered again (serve
    # gave up on it and the reader asks again).
    acks_late=False,
    ignore_result=True,
)
def dialog_turn(self: Task, request: dict[str, Any], channel: str) -> bool:
    """Answer one dialog turn and publish its events on `channel` (see
    :mod:`~dicom_node.jobqueue.dialog`); whether it was answered."""
    settings = context.settings()
    if not channel.startswith(CHANNEL_PREFIX) or not settings.broker.url:
        logger.error("dialog turn with no usable channel; dropped")
        return False
    publisher = TurnChannel(settings.broker.url, channel)
    try:
        return run_on_worker(
            context.model, request, publisher, settings.storage.spool_dir, _ANALYSES
        )
    finally:
        publisher.close()


@app.task(  # type: ignore[untyped-decorator]
    name=f"{APP_NAME}.deliver",
    bind=True,
    acks_late=True,
    autoretry_for=(SQLAlchemyError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=10,
)
def deliver(self: Task, outbox_ids: list[int] | None = None) -> dict[str, int]:
    """Send due outbox rows (the given ones, or every due row) to their PACS destinations."""
    report = deliver_items(context.settings(), context.database(), outbox_ids)
    return {outcome.value: report.count(outcome) for outcome in DeliveryOutcome}


__all__ = ["deliver", "dialog_turn", "draft_report"]
