"""The database layer on SQLite and on the local PostgreSQL (a throwaway database)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from nodehelpers import T0, record
from sqlalchemy import select, text

from dicom_node.errors import DatabaseError
from dicom_node.store import Database, Instance, Job, JobState, Study


def test_record_instance_is_idempotent_and_tracks_the_study(database: Database) -> None:
    assert database.record_instance(record("1.2.3.1")) is True
    assert database.record_instance(record("1.2.3.1", at=T0 + timedelta(seconds=5))) is False
    assert database.record_instance(
        record("1.2.3.2", at=T0 + timedelta(seconds=2), accession_number="ACC1")
    )
    # An instance that committed late with an earlier arrival time does not move time back.
    assert database.record_instance(record("1.2.3.3", at=T0 + timedelta(seconds=1)))
    assert database.has_instance("1.2.3.1") and not database.has_instance("9.9")
    with database.session() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 3
        assert study.first_received_at == T0
        assert study.last_received_at == T0 + timedelta(seconds=2)
        assert study.last_received_at.tzinfo is not None
        assert study.accession_number == "ACC1"
        assert len(study.instances) == 3


def test_timestamps_come_back_as_aware_utc(database: Database) -> None:
    local = datetime(2025, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    database.record_instance(record("1.2.3.1", at=local))
    with database.session() as session:
        received = session.scalars(select(Instance.received_at)).one()
    assert received == T0 and received.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="timezone-aware"):
        database.record_instance(record("1.2.3.1", at=datetime(2025, 3, 1, 8, 0)))


def test_concurrent_copies_of_one_instance_are_recorded_once(database: Database) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        results.append(database.record_instance(record("1.2.3.1")))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False, False, False, True]
    with database.session() as session:
        assert session.scalars(select(Study.instance_count)).one() == 1


def test_job_states_are_stored_as_lowercase_values(database: Database) -> None:
    database.record_instance(record("1.2.3.1"))
    with database.session() as session:
        study_id = session.scalars(select(Study.id)).one()
        session.add(
            Job(study_id=study_id, instance_set_hash="h", instance_count=1, instances_until=T0,
                state=JobState.QUEUED, attempts=0, created_at=T0, updated_at=T0)
        )
    with database.session() as session:
        assert session.execute(text("SELECT state FROM jobs")).scalar_one() == "queued"


def test_create_all_is_idempotent_and_sqlite_runs_in_wal_mode(database: Database) -> None:
    database.create_all()
    if database.backend == "sqlite":
        with database.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


def test_unsupported_database_urls_are_refused() -> None:
    with pytest.raises(DatabaseError, match="not supported"):
        Database("mysql://user@host/db")
    with pytest.raises(DatabaseError, match="not a valid"):
        Database("not a url")


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    db = Database("postgresql://user:secret@127.0.0.1:1/db")
    assert db.engine.dialect.driver == "psycopg"
    assert "secret" not in repr(db)
    db.dispose()
