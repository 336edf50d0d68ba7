"""The node's storage: the database layer on SQLite and on the local PostgreSQL (a throwaway
database), and the spool's atomic, durable writes."""

from __future__ import annotations

import errno
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nodehelpers import T0, record
from sqlalchemy import select, text

import dicom_node.store.spool as spool_module
from dicom_node.errors import DatabaseError, DiskFullError, SpoolError
from dicom_node.store import Database, Instance, Job, JobState, Study
from dicom_node.store.spool import TEMP_PREFIX, Spool


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
            # FULL (2): a row committed before C-STORE success survives a power cut.
            assert connection.execute(text("PRAGMA synchronous")).scalar_one() == 2


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


# --------------------------------------------------------------------------- the spool
@pytest.fixture
def fsynced_folders(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Folders the spool fsyncs, in order (the real fsync still runs)."""
    folders: list[Path] = []
    real = spool_module._fsync_directory

    def record_fsync(folder: Path) -> None:
        folders.append(folder)
        real(folder)

    monkeypatch.setattr(spool_module, "_fsync_directory", record_fsync)
    return folders


def test_spool_write_makes_the_file_and_its_new_folders_durable(
    tmp_path: Path, fsynced_folders: list[Path]
) -> None:
    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    data = os.urandom(3000)
    target = spool.write(relative, data)
    assert target == spool.root / relative and target.read_bytes() == data
    assert not list(spool.root.rglob(f"{TEMP_PREFIX}*"))
    study, series = target.parent.parent, target.parent
    # Each new folder's name is made durable in its parent, then the file's name in its own.
    assert fsynced_folders == [spool.root, study, series]

    fsynced_folders.clear()
    spool.write(spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.6"), data)
    assert fsynced_folders == [series]


def test_spool_write_completes_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(
        spool_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000]))
    )
    spool = Spool(tmp_path)
    data = os.urandom(10_001)
    assert spool.write(Path("a/b.dcm"), data).read_bytes() == data


@pytest.mark.parametrize(
    ("error", "expected"), [(errno.ENOSPC, DiskFullError), (errno.EIO, SpoolError)]
)
def test_a_failed_spool_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, expected: type[Exception]
) -> None:
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        # The new folders are made; the temporary file's fsync fails.
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(error, os.strerror(error))
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    spool = Spool(tmp_path / "spool")
    with pytest.raises(expected):
        spool.write(Path("a/b.dcm"), b"data")
    assert [path for path in spool.root.rglob("*") if path.is_file()] == []
