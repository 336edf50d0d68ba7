"""Recovery from workers and senders that died: heartbeats, requeue at start, quiet retries.

* ``dicom_node serve`` killed (SIGKILL) while a job runs: the restarted node, its embedded
  worker being the only one, queues the job again at once, logs a WARNING naming the job, and
  drafts it well within 60 s.
* A standalone worker that died: its job's heartbeat stops, and the dispatcher sends the job
  again once it has been silent for ``worker.stale_job_s`` (45 s by default), while a job
  whose worker still reports is left alone however long it runs.
* A sender killed while delivering: its ``sending`` rows are pending again after
  ``delivery.claim_timeout_s`` (45 s) without a heartbeat, and the SR is sent again (at least
  once delivery), while a slow but living sender keeps its rows.
* While the PACS is down each retry logs the node's WARNING only, not pynetdicom's ERRORs.

The job of the serve test is held ``running`` by a RIS that accepts connections and never
answers (the node asks it for the study's order and waits ``ris.timeout_s``), so the kill
lands in the middle of the job every time.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pydicom
import pytest
from nodehelpers import T0, make_draft_sr, new_instance, node_settings, record, run_storescu
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]
from sqlalchemy import select, update
from support.orthanc import wait_until
from support.peers import free_port

from dicom_node.cli.node import LISTENING_PREFIX
from dicom_node.dicom.dimse import StoreResponseStatus
from dicom_node.jobqueue import Dispatcher, configure_app
from dicom_node.ops import logs as node_logs
from dicom_node.pipeline.assembly import assemble
from dicom_node.pipeline.delivery import DeliveryOutcome, deliver_items, enqueue_sr, release_claims
from dicom_node.pipeline.drafting import claim_job, touch_job
from dicom_node.pipeline.heartbeat import Heartbeat
from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState, OutboxItem, OutboxState

pytestmark = pytest.mark.network

#: Seconds the silent RIS holds a job (``ris.timeout_s``).
RIS_HOLD_S = 6


# --------------------------------------------------------------------------- peers
@pytest.fixture
def silent_ris() -> Iterator[int]:
    """Port of a RIS that accepts TCP connections and never answers an association."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(32)
        yield int(server.getsockname()[1])


class Pacs:
    """A pynetdicom storage SCP; with `hold` set, each C-STORE waits until it is released."""

    def __init__(self, hold: bool = False) -> None:
        self.storing = threading.Event()  # a C-STORE has arrived
        self.release = threading.Event()  # answer it
        if not hold:
            self.release.set()
        self.received: list[str] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(
            ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: Event) -> int:
        self.storing.set()
        self.release.wait(30)  # a slow PACS: the answer comes when the test says so
        self.received.append(str(event.dataset.SOPInstanceUID))
        return int(StoreResponseStatus.SUCCESS)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    server = Pacs()
    yield server
    server.stop()


@pytest.fixture
def slow_pacs() -> Iterator[Pacs]:
    server = Pacs(hold=True)
    yield server
    server.release.set()
    server.stop()


# --------------------------------------------------------------------------- serve
def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``dicom_node serve``; returns the process and the SCP's port."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from dicom_node.cli import main; main()", "serve",
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=log.open("ab"), text=True, env=env,
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(120):
            process.kill()
            pytest.fail(f"serve did not start: {log.read_text()[-2000:]}")
    line = process.stdout.readline()
    assert line.startswith(LISTENING_PREFIX), (line, log.read_text()[-2000:])
    return process, int(line.split()[3].rsplit(":", 1)[1])


def _job(db: Database) -> Job | None:
    with db.session() as session:
        job = session.scalars(select(Job)).first()
        if job is not None:
            session.expunge(job)
        return job


def test_a_job_left_running_by_a_killed_node_is_drafted_after_a_restart_within_60_s(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path, silent_ris: int,
    dcmtk: dict[str, str], dcmtk_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    folder = tmp_path / "node"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOM_NODE_")}
    env.update({
        "DICOM_NODE_STORAGE__FOLDER": str(folder),
        "DICOM_NODE_STORAGE__MIN_FREE_BYTES": "0",
        "DICOM_NODE_NODE__STABLE_SECONDS": "0.2",
        "DICOM_NODE_NODE__ASSEMBLY_INTERVAL_S": "0.1",
        "DICOM_NODE_NODE__HTTP_PORT": "0",
        "DICOM_NODE_INFERENCE__BUNDLE": str(tiny_bundle),
        "DICOM_NODE_INFERENCE__DEVICE": "cpu",
        "DICOM_NODE_RIS__AE_TITLE": "RIS",
        "DICOM_NODE_RIS__HOST": "127.0.0.1",
        "DICOM_NODE_RIS__PORT": str(silent_ris),
        "DICOM_NODE_RIS__TIMEOUT_S": str(RIS_HOLD_S),
        "DICOM_NODE_RIS__POLL_INTERVAL_S": "3600",
        "DICOM_NODE_LOG_LEVEL": "INFO",
        "DICOM_NODE_LOG_FORMAT": "json",
    })
    settings = node_settings(folder)  # the same database, read by the test
    source = pydicom.dcmread(rg1_uncr)
    study = new_instance(source, StudyInstanceUID=generate_uid())
    path = tmp_path / "study.dcm"
    study.save_as(path, enforce_file_format=True)

    first, port = _serve(env, tmp_path / "first.log")
    try:
        sent = run_storescu(dcmtk, dcmtk_env, ("127.0.0.1", port, "CXRNODE"), path)
        assert sent.returncode == 0, sent.stderr
        db = Database(settings.database_url)
        running = wait_until(
            lambda: (job := _job(db)) is not None and job.state is JobState.RUNNING and job,
            90, "the job running (waiting for the RIS)",
        )
        first.send_signal(signal.SIGKILL)  # the node dies in the middle of the job
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    killed_at = time.monotonic()
    assert (job := _job(db)) is not None and job.state is JobState.RUNNING

    second, _ = _serve(env, tmp_path / "second.log")
    try:
        done = wait_until(
            lambda: (job := _job(db)) is not None and job.state is JobState.DONE and job,
            60, "the job drafted after the restart",
        )
        assert time.monotonic() - killed_at < 60
        assert done.attempts == 2
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        db.dispose()
    logs = (tmp_path / "second.log").read_text()
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    warnings = [r["message"] for r in records if r["level"] == "WARNING"]
    assert f"job {running.id} was left running when the node stopped; queued again " \
        "(attempt 2 of 6)" in warnings, warnings
    # The silent RIS: the node's WARNING says so; pynetdicom's "ACSE timeout" ERROR is dropped.
    assert not [r for r in records if r["logger"].startswith("pynetdicom")], records
    for forbidden in (str(source.PatientName), str(source.PatientID)):
        if forbidden:
            assert forbidden not in logs


# --------------------------------------------------------------------------- heartbeats
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default worker and delivery settings (stale_job_s, claim_timeout_s: 45 s)."""
    return node_settings(
        tmp_path / "node",
        pacs={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    database.create_all()
    yield database
    database.dispose()


def _one_job(db: Database) -> int:
    db.record_instance(record("1.1", study="9.1"))
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=1)).jobs_created
    return job_id


def test_the_heartbeat_refreshes_its_own_run_only_and_stops_with_it(db: Database) -> None:
    job_id = _one_job(db)
    claimed_at = datetime.now(UTC)
    assert claim_job(db, job_id, 45, claimed_at)
    def refreshed() -> bool:
        job = _job(db)
        return job is not None and job.updated_at > claimed_at

    assert not refreshed()
    with Heartbeat(partial(touch_job, db, job_id, claimed_at), 0.05, f"job {job_id}"):
        wait_until(refreshed, 5, "a beat")
    with db.session() as session:
        session.execute(update(Job).values(state=JobState.DONE))
    assert not touch_job(db, job_id, claimed_at, datetime.now(UTC))  # finished: not revived
    assert not touch_job(db, job_id, T0, datetime.now(UTC))  # another run's claim time

    beats: list[float] = []
    started = time.monotonic()
    with Heartbeat(lambda _: beats.append(time.monotonic()), 0.02, "a hung job", max_s=0.2):
        time.sleep(0.6)  # the work (a hung job) outlives max_s: its heartbeat gives up
    assert beats and max(beats) - started < 0.25, beats


def test_a_silent_job_is_sent_again_after_45_s_and_a_reporting_one_never(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert settings.worker.stale_job_s == 45  # the default
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    job_id = _one_job(db)
    now = datetime.now(UTC)
    claimed_at = now - timedelta(hours=2)  # a long job: started two hours ago
    assert claim_job(db, job_id, 45, claimed_at)
    with db.session() as session:
        session.execute(update(Job).values(dispatched_at=claimed_at))
    assert touch_job(db, job_id, claimed_at, now - timedelta(seconds=5))  # its worker reports
    assert dispatcher.dispatch_once(now).jobs == 0
    assert not claim_job(db, job_id, 45, now)  # a duplicate message finds it taken

    later = now + timedelta(seconds=41)  # the worker died after that beat: 46 s of silence
    assert dispatcher.dispatch_once(later).jobs == 1
    assert f"job {job_id} was abandoned by its worker (no heartbeat for 46 s); sent again " \
        "(attempt 2 of 6)" in caplog.messages
    assert dispatcher.dispatch_once(later + timedelta(seconds=1)).jobs == 0  # sent once
    assert claim_job(db, job_id, 45, later)  # the next worker takes it over
    assert not touch_job(db, job_id, claimed_at, later)  # the dead run cannot take it back


def test_a_node_restarted_with_its_own_worker_takes_back_what_it_left_half_done(
    settings: Settings, db: Database, cr_header: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    for index in range(2):
        db.record_instance(record(f"1.{index}", study=f"9.{index}"))
    first, second = assemble(db, 0.0, T0 + timedelta(seconds=1)).jobs_created
    now = datetime.now(UTC)
    with db.session() as session:
        session.execute(update(Job).values(state=JobState.RUNNING, attempts=1, started_at=now,
                                           updated_at=now, dispatched_at=now))
        session.execute(update(Job).where(Job.id == second).values(attempts=6))
    row_id = _sending_row(settings, db, cr_header, now)

    requeued = dispatcher.requeue_abandoned(now)

    assert (requeued.jobs, requeued.failed, requeued.deliveries) == ((first,), (second,), (row_id,))
    with db.session() as session:
        states = dict(session.execute(select(Job.id, Job.state)).all())
        row = session.get_one(OutboxItem, row_id)
    assert states == {first: JobState.QUEUED, second: JobState.FAILED}
    assert row.state is OutboxState.PENDING and row.next_attempt_at == now
    assert f"job {first} was left running when the node stopped; queued again " \
        "(attempt 2 of 6)" in caplog.messages
    assert dispatcher.dispatch_once(now).jobs == 1  # sent at the next pass


# --------------------------------------------------------------------------- delivery
def _queue_sr(settings: Settings, db: Database, header: Dataset) -> int:
    """The SR of `header`'s study in the outbox for the destination ``pacs``."""
    db.record_instance(record("2.1", study=str(header.StudyInstanceUID)))
    (row_id,) = enqueue_sr(db, settings.storage.outbox_dir, make_draft_sr(header), ["pacs"], now=T0)
    return row_id


def _sending_row(
    settings: Settings, db: Database, header: Dataset, claimed_at: datetime
) -> int:
    """An outbox row a sender claimed at `claimed_at` and then died with."""
    row_id = _queue_sr(settings, db, header)
    with db.session() as session:
        session.execute(update(OutboxItem).values(state=OutboxState.SENDING,
                                                  updated_at=claimed_at))
    return row_id


def test_an_sr_left_sending_by_a_dead_sender_is_sent_again_after_45_s(
    tmp_path: Path, db: Database, pacs: Pacs, cr_header: Dataset,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = node_settings(
        tmp_path / "node",
        pacs={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
    )
    assert settings.delivery.claim_timeout_s == 45  # the default
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    now = datetime.now(UTC)
    row_id = _sending_row(settings, db, cr_header, now)
    assert dispatcher.dispatch_once(now + timedelta(seconds=44)).deliveries == 0
    later = now + timedelta(seconds=46)
    assert dispatcher.dispatch_once(later).deliveries == 1  # deliver([row]) is queued

    (result,) = deliver_items(settings, db, [row_id], later).results  # what the worker runs

    assert result.outcome is DeliveryOutcome.SENT and len(pacs.received) == 1
    assert any(
        f"outbox entry {row_id} (SR" in message and "sent again" in message
        for message in caplog.messages
    ), caplog.messages


def test_a_slow_sender_keeps_its_claim_with_its_heartbeat(
    tmp_path: Path, db: Database, slow_pacs: Pacs, cr_header: Dataset
) -> None:
    settings = node_settings(
        tmp_path / "node",
        pacs={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": slow_pacs.port}},
        delivery={"claim_timeout_s": 0.4},  # a beat every 0.1 s
    )
    row_id = _queue_sr(settings, db, cr_header)
    sender = threading.Thread(target=deliver_items, args=(settings, db))
    sender.start()
    try:
        assert slow_pacs.storing.wait(30), "the C-STORE never arrived"
        with db.session() as session:
            claimed_at = session.get_one(OutboxItem, row_id).updated_at

        def refreshed_past_the_timeout() -> bool:
            with db.session() as session:
                row = session.get_one(OutboxItem, row_id)
            return row.state is OutboxState.SENDING and row.updated_at > claimed_at + timedelta(
                seconds=0.5
            )

        # The C-STORE takes longer than claim_timeout_s; the heartbeat keeps the claim fresh,
        # so another sender does not take the row over.
        wait_until(refreshed_past_the_timeout, 10, "heartbeats past the claim timeout", 0.05)
        now = datetime.now(UTC)
        assert release_claims(db, now, now - timedelta(seconds=0.4)) == []
    finally:
        slow_pacs.release.set()
        sender.join(30)
    with db.session() as session:
        assert session.get_one(OutboxItem, row_id).state is OutboxState.SENT
    assert len(slow_pacs.received) == 1  # sent once


def test_with_the_pacs_down_each_retry_logs_the_nodes_warning_only(
    settings: Settings, db: Database, cr_header: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    node_logs.configure_logging("WARNING", "text")
    caplog.set_level(logging.WARNING)
    _queue_sr(settings, db, cr_header)
    (result,) = deliver_items(settings, db).results  # nothing listens on the PACS port
    assert result.outcome is DeliveryOutcome.RETRY
    lines = [(r.levelname, r.name, r.getMessage()) for r in caplog.records]
    assert [(level, name) for level, name, _ in lines] == [
        ("WARNING", "dicom_node.pipeline.delivery")]
    assert "cannot be reached" in lines[0][2] and "next attempt in 5 s" in lines[0][2]
