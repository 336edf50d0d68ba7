"""The node's Celery tasks. Arguments are row ids; everything else is in the database.

``dicom_node.draft_report(job_id)`` (queue ``gpu``)
    Runs :func:`~dicom_node.pipeline.drafting.draft_job` with the process's model, then sends the
    new SR's outbox rows to the ``delivery`` queue. While the job runs, a heartbeat
    refreshes its row every ``worker.stale_job_s`` / 4 seconds (for at most
    ``worker.time_limit_s``), so ``serve`` sees within ``worker.stale_job_s`` that a worker
    died and sends the job again. Transient failures (database away) are
    retried with exponential backoff up to ``worker.max_retries``; permanent ones (images
    unusable) fail the job at once. A job that hits the soft time limit is failed.
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
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.errors import JobError, TransientJobError
from dicom_node.jobqueue import context
from dicom_node.jobqueue.app import APP_NAME, DELIVERY_QUEUE, app
from dicom_node.latency import INFERENCE_SECONDS, JOB_SECONDS
from dicom_node.pipeline.delivery import DeliveryOutcome, deliver_items
from dicom_node.pipeline.drafting import draft_job, finish_job, touch_job
from dicom_node.pipeline.heartbeat import Heartbeat, heartbeat_interval
from dicom_node.store import JobState

logger = logging.getLogger(__name__)


@app.task(  # type: ignore[untyped-decorator]
    name=f"{APP_NAME}.draft_report",
    bind=True,
    acks_late=True,
    autoretry_for=(TransientJobError,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def draft_report(self: Task, job_id: int) -> dict[str, Any]:
    """Draft the report of one job and queue its delivery (see the module docstring)."""
    settings = context.settings()
    db = context.database()
    started = time.perf_counter()
    try:
        model = context.model()  # before the claim: a first load does not age the claim
        claimed_at = datetime.now(UTC)  # the claim's time, which names this run's heartbeat
        heartbeat = Heartbeat(
            partial(touch_job, db, job_id, claimed_at),
            heartbeat_interval(settings.worker.stale_job_s),
            f"job {job_id}",
            max_s=settings.worker.time_limit_s,
        )
        with heartbeat:
            outcome = draft_job(settings, db, model, job_id, now=claimed_at)
    except SoftTimeLimitExceeded:
        logger.error("job %d hit the soft time limit (%.0f s)", job_id,
                     settings.worker.soft_time_limit_s)
        finish_job(db, job_id, JobState.FAILED, "time limit exceeded")
        raise
    except JobError as exc:
        if isinstance(exc, TransientJobError):
            logger.warning("job %d: %s; retrying", job_id, exc)
            raise
        logger.error("job %d failed: %s", job_id, exc)
        return {"job_id": job_id, "state": JobState.FAILED.value, "error": str(exc)}
    if outcome.state is JobState.DONE:
        JOB_SECONDS.observe(time.perf_counter() - started)
        if outcome.inference_seconds:
            INFERENCE_SECONDS.observe(outcome.inference_seconds)
        if outcome.outbox_ids:
            deliver.apply_async(
                (outcome.outbox_ids,), queue=DELIVERY_QUEUE, ignore_result=True
            )
    return {
        "job_id": job_id,
        "state": outcome.state.value if outcome.state else None,
        "report_version": outcome.report_version,
    }


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


__all__ = ["deliver", "draft_report"]
