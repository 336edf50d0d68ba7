"""Prometheus metrics of the node.

Counts that must agree across processes (studies received, jobs per state, outbox rows per
state) are read from the node's database at scrape time by :class:`DatabaseCollector`, so
they are right whether the jobs ran in ``serve`` or on remote workers. Latencies are
histograms observed in the process that did the work: ``serve`` exposes them for the
embedded worker, ``dicom_node worker --metrics-port`` for a remote one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.errors import NOT_DRAFTED_PREFIX
from dicom_node.latency import REGISTRY
from dicom_node.store import Database, Instance, Job, JobState, OutboxItem, OutboxState, Study

logger = logging.getLogger(__name__)

class DatabaseCollector(Collector):
    """Counts read from the node's database at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        """Yield studies/instances received, jobs per state and outbox rows per state."""
        try:
            with self.db.session() as session:
                studies = session.scalar(select(func.count(Study.id))) or 0
                instances = session.scalar(select(func.count(Instance.id))) or 0
                jobs: dict[JobState, int] = {
                    state: n
                    for state, n in session.execute(
                        select(Job.state, func.count(Job.id)).group_by(Job.state)
                    )
                }
                failures: dict[str, int] = {}
                for error, n in session.execute(
                    select(Job.error, func.count(Job.id))
                    .where(Job.state == JobState.FAILED)
                    .group_by(Job.error)
                ):
                    kind = failure_kind(error)
                    failures[kind] = failures.get(kind, 0) + n
                outbox: dict[OutboxState, int] = {
                    state: n
                    for state, n in session.execute(
                        select(OutboxItem.state, func.count(OutboxItem.id)).group_by(
                            OutboxItem.state
                        )
                    )
                }
        except SQLAlchemyError as exc:
            logger.warning("metrics: cannot read the database: %s", type(exc).__name__)
            return
        yield CounterMetricFamily(
            "dicom_node_studies_received", "Studies received (distinct Study Instance UIDs).",
            value=studies,
        )
        yield CounterMetricFamily(
            "dicom_node_instances_received", "Instances received and stored.", value=instances
        )
        job_family = GaugeMetricFamily(
            "dicom_node_jobs", "Report jobs per state.", labels=["state"]
        )
        for state in JobState:
            job_family.add_metric([state.value], jobs.get(state, 0))
        yield job_family
        failed_family = GaugeMetricFamily(
            "dicom_node_failed_jobs",
            "Failed report jobs per kind of reason (the exception type of an unexpected "
            "error; the reason's first words otherwise).",
            labels=["reason"],
        )
        for kind, n in sorted(failures.items()):
            failed_family.add_metric([kind], n)
        yield failed_family
        outbox_family = GaugeMetricFamily(
            "dicom_node_outbox", "SR deliveries per state (one per SR and destination).",
            labels=["state"],
        )
        for outbox_state in OutboxState:
            outbox_family.add_metric([outbox_state.value], outbox.get(outbox_state, 0))
        yield outbox_family


def failure_kind(error: str | None) -> str:
    """A short, bounded label for a job's failure reason (no identifiers, no numbers).

    ``"unexpected error: KeyError: ..."`` -> ``"KeyError"``; other reasons keep their words
    before the first colon, digits replaced, at most 60 characters.
    """
    if not error:
        return "unknown"
    if error.startswith(NOT_DRAFTED_PREFIX):
        return "not drafted"
    if error.startswith("unexpected error: "):
        return error.removeprefix("unexpected error: ").split(":", 1)[0].strip() or "unknown"
    head = re.sub(r"\d+", "N", error.split(":", 1)[0]).strip()
    return head[:60] or "unknown"


def register_database(db: Database) -> DatabaseCollector:
    """Add the database counts to :data:`REGISTRY` (once per process and database)."""
    collector = DatabaseCollector(db)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    """Remove a collector added by :func:`register_database`."""
    try:
        REGISTRY.unregister(collector)
    except KeyError:
        pass


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


__all__ = [
    "DatabaseCollector",
    "failure_kind",
    "register_database",
    "render",
    "unregister",
]
