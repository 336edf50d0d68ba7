"""The dispatcher: database rows -> messages on the embedded (SQLite) broker, no worker."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from nodehelpers import T0, node_settings, record
from sqlalchemy import select, update

from dicom_node.jobqueue import Dispatcher, configure_app
from dicom_node.jobqueue.app import EMBEDDED_BROKER_FILE
from dicom_node.pipeline.assembly import assemble
from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState, OutboxItem, OutboxState, Study


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(
        tmp_path / "node",
        worker={"redispatch_after_s": 60, "stale_job_s": 300, "max_retries": 1},
        delivery={"retry_base_s": 10},
    )


@pytest.fixture
def db(settings: Settings) -> Database:
    database = Database(settings.database_url)
    database.create_all()
    return database


def messages(settings: Settings) -> list[tuple[str, str]]:
    """(queue, task name) of every message waiting in the embedded broker."""
    path = settings.storage.folder / EMBEDDED_BROKER_FILE
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT q.name, m.payload FROM kombu_message m JOIN kombu_queue q "
            "ON m.queue_id = q.id WHERE m.visible = 1 ORDER BY m.id"
        ).fetchall()
    return [(queue, json.loads(payload)["headers"]["task"]) for queue, payload in rows]


def test_jobs_are_sent_once_then_again_only_when_their_message_may_be_lost(
    settings: Settings, db: Database
) -> None:
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    db.record_instance(record("1.1", study="9.1"))
    db.record_instance(record("2.1", study="9.2"))
    assert len(assemble(db, 0.0, T0 + timedelta(seconds=1)).jobs_created) == 2
    now = T0 + timedelta(seconds=2)
    assert dispatcher.dispatch_once(now).jobs == 2
    assert messages(settings) == [("gpu", "dicom_node.draft_report")] * 2
    assert dispatcher.dispatch_once(now + timedelta(seconds=30)).jobs == 0  # sent recently
    assert dispatcher.dispatch_once(now + timedelta(seconds=61)).jobs == 2  # still queued
    assert len(messages(settings)) == 4


def test_a_lost_running_job_is_sent_again_then_failed_when_out_of_attempts(
    settings: Settings, db: Database
) -> None:
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    db.record_instance(record("1.1", study="9.1"))
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=1)).jobs_created
    with db.session() as session:  # a worker took it and died (killed at the time limit)
        session.execute(update(Job).values(state=JobState.RUNNING, attempts=1,
                                           started_at=T0, updated_at=T0, dispatched_at=T0))
    assert dispatcher.dispatch_once(T0 + timedelta(seconds=100)).jobs == 0  # not stale yet
    assert dispatcher.dispatch_once(T0 + timedelta(seconds=301)).jobs == 1
    with db.session() as session:
        session.execute(update(Job).values(attempts=2))
    assert dispatcher.dispatch_once(T0 + timedelta(seconds=700)).jobs == 0
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.FAILED
        assert "lost 2 times" in (job.error or "")


def test_due_deliveries_are_sent_at_most_once_per_retry_interval(
    settings: Settings, db: Database
) -> None:
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    db.record_instance(record("1.1", study="9.1"))
    with db.session() as session:
        study_id = session.scalars(select(Study.id)).one()
        for n, due in enumerate((T0, T0 + timedelta(hours=1))):
            session.add(OutboxItem(
                study_id=study_id, sr_sop_instance_uid=f"5.{n}", sr_path=f"{n}.dcm",
                destination="pacs", state=OutboxState.PENDING, attempts=0,
                next_attempt_at=due, created_at=T0, updated_at=T0,
            ))
    now = T0 + timedelta(seconds=1)
    assert dispatcher.dispatch_once(now).deliveries == 1  # only the due row
    assert dispatcher.dispatch_once(now + timedelta(seconds=5)).deliveries == 0
    assert dispatcher.dispatch_once(now + timedelta(seconds=11)).deliveries == 1
    assert messages(settings) == [("delivery", "dicom_node.deliver")] * 2
