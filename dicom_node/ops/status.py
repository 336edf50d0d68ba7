"""What ``dicom_node status`` shows: studies, jobs and the outbox, read from the database.

Studies appear by a digest of their Study Instance UID only; no patient data is shown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from dicom_node._privacy import uid_digest
from dicom_node.store import Database, Job, JobState, OutboxItem, OutboxState, Study

#: Study state while instances are still arriving.
STUDY_RECEIVING = "receiving"
#: Study state once complete, before the next assembly pass.
STUDY_COMPLETE = "complete"
#: Study state when the routing rules did not queue it.
STUDY_NOT_REPORTABLE = "not reportable"


@dataclass(frozen=True)
class StudyStatus:
    """One study in the listing."""

    study: str
    instances: int
    last_received_at: datetime
    state: str
    reason: str | None
    jobs: int


@dataclass(frozen=True)
class JobStatus:
    """One job in the listing."""

    id: int
    study: str
    state: str
    instances: int
    attempts: int
    created_at: datetime
    updated_at: datetime
    error: str | None


@dataclass(frozen=True)
class OutboxStatus:
    """One outbox entry in the listing."""

    id: int
    study: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None


@dataclass
class NodeStatus:
    """The node's state: the newest studies, jobs and outbox entries, and counts."""

    studies: list[StudyStatus] = field(default_factory=list)
    jobs: list[JobStatus] = field(default_factory=list)
    outbox: list[OutboxStatus] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 strings)."""

        def convert(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {key: convert(item) for key, item in value.items()}
            if isinstance(value, list):
                return [convert(item) for item in value]
            return value

        result: dict[str, Any] = convert(asdict(self))
        return result


def _study_state(study: Study, latest_job: Job | None, cutoff: datetime) -> str:
    if study.assembled_count != study.instance_count:
        return STUDY_RECEIVING if study.last_received_at >= cutoff else STUDY_COMPLETE
    if study.not_reportable_reason is not None:
        return STUDY_NOT_REPORTABLE
    return latest_job.state.value if latest_job is not None else STUDY_COMPLETE


def collect_status(
    db: Database, stable_seconds: float, now: datetime, limit: int = 50
) -> NodeStatus:
    """Read the node's state from the database.

    Parameters
    ----------
    db
        The node's database.
    stable_seconds
        The node's ``stable_seconds`` (tells receiving from complete studies).
    now
        The current time (timezone-aware).
    limit
        How many of the newest studies, jobs and outbox entries to list.

    Returns
    -------
    NodeStatus
        The newest entries first, and counts of every study, job and outbox state.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cutoff = now - timedelta(seconds=stable_seconds)
    status = NodeStatus()
    with db.session() as session:
        studies = session.scalars(
            select(Study).order_by(Study.last_received_at.desc()).limit(limit)
        ).all()
        digests = {study.id: uid_digest(study.study_instance_uid) for study in studies}
        jobs_by_study: dict[int, list[Job]] = {}
        for job in session.scalars(
            select(Job).where(Job.study_id.in_(list(digests))).order_by(Job.id)
        ):
            jobs_by_study.setdefault(job.study_id, []).append(job)
        for study in studies:
            jobs = jobs_by_study.get(study.id, [])
            status.studies.append(
                StudyStatus(
                    study=digests[study.id],
                    instances=study.instance_count,
                    last_received_at=study.last_received_at,
                    state=_study_state(study, jobs[-1] if jobs else None, cutoff),
                    reason=study.not_reportable_reason
                    or (jobs[-1].error if jobs and jobs[-1].state is JobState.FAILED else None),
                    jobs=len(jobs),
                )
            )
        for job, study_uid in session.execute(
            select(Job, Study.study_instance_uid)
            .join(Study, Job.study_id == Study.id)
            .order_by(Job.id.desc())
            .limit(limit)
        ):
            status.jobs.append(
                JobStatus(
                    id=job.id,
                    study=uid_digest(study_uid),
                    state=job.state.value,
                    instances=job.instance_count,
                    attempts=job.attempts,
                    created_at=job.created_at,
                    updated_at=job.updated_at,
                    error=job.error,
                )
            )
        for item, study_uid in session.execute(
            select(OutboxItem, Study.study_instance_uid)
            .join(Study, OutboxItem.study_id == Study.id)
            .order_by(OutboxItem.id.desc())
            .limit(limit)
        ):
            status.outbox.append(
                OutboxStatus(
                    id=item.id,
                    study=uid_digest(study_uid),
                    destination=item.destination,
                    state=item.state.value,
                    attempts=item.attempts,
                    next_attempt_at=item.next_attempt_at,
                    last_error=item.last_error,
                )
            )
        job_counts = {
            state: count
            for state, count in session.execute(
                select(Job.state, func.count()).group_by(Job.state)
            )
        }
        outbox_counts = {
            state: count
            for state, count in session.execute(
                select(OutboxItem.state, func.count()).group_by(OutboxItem.state)
            )
        }
        total_studies = session.scalar(select(func.count()).select_from(Study)) or 0
        total_instances = session.scalar(
            select(func.coalesce(func.sum(Study.instance_count), 0))
        )
    status.counts = {
        "studies": {"total": int(total_studies), "instances": int(total_instances or 0)},
        "jobs": {state.value: int(job_counts.get(state, 0)) for state in JobState},
        "outbox": {state.value: int(outbox_counts.get(state, 0)) for state in OutboxState},
    }
    return status


__all__ = [
    "STUDY_COMPLETE",
    "STUDY_NOT_REPORTABLE",
    "STUDY_RECEIVING",
    "JobStatus",
    "NodeStatus",
    "OutboxStatus",
    "StudyStatus",
    "collect_status",
]
