"""Dynamic batching of report jobs: which jobs one ``draft_report`` task drafts together.

A ``gpu`` worker that receives ``draft_report(job_id)`` makes that job the **leader** of a
batch. With ``worker.batch_size`` above 1 it adds the oldest other ``queued`` jobs, up to the
batch size, and waits at most ``worker.batch_wait_ms`` for more to arrive while the batch is
not full. The jobs are then claimed one by one (the claim is one conditional UPDATE,
:func:`~dicom_node.pipeline.drafting.claim_job`), so a job that another worker took
meanwhile is skipped, never drafted twice; the messages of the jobs a batch took find their
jobs running or done when they arrive, and skip them.

A leader whose own job is not claimable (already running elsewhere, done, failed) drafts
nothing and waits for nothing: its message was a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select

from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState

#: Seconds between two looks for more queued jobs while a batch waits to fill.
POLL_S = 0.02


def claimable(db: Database, job_id: int, stale_after_s: float, now: datetime) -> bool:
    """Whether the job may be claimed now: queued, or running with its worker lost."""
    stale_before = now - timedelta(seconds=stale_after_s)
    with db.session() as session:
        found = session.scalar(
            select(Job.id).where(
                Job.id == job_id,
                or_(
                    Job.state == JobState.QUEUED,
                    and_(Job.state == JobState.RUNNING, Job.updated_at < stale_before),
                ),
            )
        )
    return found is not None


def queued_jobs(db: Database, limit: int, exclude: int) -> list[int]:
    """Ids of up to `limit` queued jobs other than `exclude`, oldest first."""
    if limit <= 0:
        return []
    with db.session() as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(Job.state == JobState.QUEUED, Job.id != exclude)
                .order_by(Job.id)
                .limit(limit)
            )
        )


def collect_batch(
    settings: Settings,
    db: Database,
    job_id: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> list[int]:
    """The jobs to draft with job `job_id` (the leader, first), see the module docstring.

    Parameters
    ----------
    settings
        ``worker.batch_size`` and ``worker.batch_wait_ms``, ``worker.stale_job_s``.
    db
        The node's database.
    job_id
        The job of the task's own message.
    clock, sleep
        Time source and wait (tests).

    Returns
    -------
    list of int
        `job_id`, then up to ``batch_size`` - 1 other queued jobs, oldest first.
    """
    worker = settings.worker
    if worker.batch_size == 1:
        return [job_id]
    if not claimable(db, job_id, worker.stale_job_s, datetime.now(UTC)):
        return [job_id]
    deadline = clock() + worker.batch_wait_ms / 1000.0
    others = queued_jobs(db, worker.batch_size - 1, job_id)
    while len(others) < worker.batch_size - 1 and clock() < deadline:
        sleep(min(POLL_S, max(0.0, deadline - clock())))
        others = queued_jobs(db, worker.batch_size - 1, job_id)
    return [job_id, *others]


__all__ = ["POLL_S", "claimable", "collect_batch", "queued_jobs"]
