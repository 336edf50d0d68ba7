"""Outages the node must outlive: Redis away longer than Celery's retry window, failed passes.

The Redis test runs its own ``redis-server`` on a free loopback port, stops it while the node
works and starts it again on the same port. Before the fix, the node's scheduler thread
subscribed to a result channel for every task it sent; with Redis away longer than the result
store's reconnect window (about 20 s) the subscription raised "Retry limit exceeded ...", the
thread ended, and no study was assembled or sent again until a restart while ``/healthz`` said
ok.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from nodehelpers import T0, new_instance, node_settings, record, run_storescu
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from support.orthanc import wait_until
from support.peers import free_port, stop_process, wait_for_port

from dicom_node.jobqueue import Dispatcher, configure_app
from dicom_node.ops.service import NodeService
from dicom_node.pipeline.assembly import assemble
from dicom_node.store import Database, Job, JobState, ReportVersion

pytestmark = pytest.mark.network

#: Seconds Redis stays down: longer than the ~20 s reconnect window of Celery's Redis
#: result store (20 retries, 1 s apart), after which its subscriber gives up for good.
OUTAGE_S = 28.0


class RedisServer:
    """A ``redis-server`` of the test on 127.0.0.1:`port`, without persistence."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


def _done(node: NodeService) -> int:
    with node.db.session() as session:
        return int(
            session.scalar(select(func.count(Job.id)).where(Job.state == JobState.DONE)) or 0
        )


def _jobs(node: NodeService) -> int:
    with node.db.session() as session:
        return int(session.scalar(select(func.count(Job.id))) or 0)


def _health(node: NodeService) -> tuple[int, dict[str, Any]]:
    assert node.http is not None
    answer = httpx.get(f"{node.http.url}/healthz", timeout=10)
    return answer.status_code, answer.json()


def test_a_study_sent_while_redis_is_down_longer_than_the_retry_window_is_drafted(
    tmp_path: Path, tiny_bundle: Path, redis_server: RedisServer, rg1_uncr: Path,
    services: list[NodeService], dcmtk: dict[str, str], dcmtk_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    folder = tmp_path / "node"
    settings = node_settings(
        folder,
        node={"stable_seconds": 0.2, "assembly_interval_s": 0.1},
        inference={"bundle": tiny_bundle, "device": "cpu"},
        broker={"url": redis_server.url},
    )
    # As in production: serve with a broker has no worker of its own; a `dicom_node worker`
    # process drafts. (A worker in the sending process would hide the bug: Celery never
    # subscribes to results from inside a worker.)
    node = NodeService(settings)
    assert node.worker is None
    services.append(node)
    host, port = node.start()
    worker_log = tmp_path / "worker.log"
    worker = start_worker(folder, tiny_bundle, redis_server.url, worker_log)
    try:
        path = tmp_path / "study.dcm"
        new_instance(pydicom.dcmread(rg1_uncr), StudyInstanceUID=generate_uid()).save_as(
            path, enforce_file_format=True
        )
        redis_server.stop()
        down_since = time.monotonic()
        sent = run_storescu(dcmtk, dcmtk_env, (host, port, settings.node.ae_title), path)
        assert sent.returncode == 0, sent.stderr  # received and acknowledged in the outage
        wait_until(lambda: _jobs(node) == 1, 10, "the study's job")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))  # the outage
        status, body = _health(node)
        assert status == 503 and body["checks"]["broker"].startswith("broker unreachable")
        assert body["checks"]["threads"] == "ok", body  # the scheduler outlived the outage

        redis_server.start()
        try:
            wait_until(lambda: _done(node) == 1, 40, "the draft of the study")
        except AssertionError:
            raise AssertionError(worker_log.read_text()[-3000:]) from None
        with node.db.session() as session:
            assert session.scalar(select(func.count(ReportVersion.id))) == 1
        status, body = wait_until(lambda: (h := _health(node))[0] == 200 and h, 10, "ok")
        assert body["status"] == "ok" and body["checks"]["threads"] == "ok"
        assert not [r for r in caplog.records if "Retry limit exceeded" in r.getMessage()]
    finally:
        stop_process(worker, timeout=30)


def start_worker(
    folder: Path, bundle: Path, broker: str, log: Path
) -> subprocess.Popen[bytes]:
    """``dicom_node worker`` on `broker`, sharing the node's storage folder and database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOM_NODE_")}
    env.update({
        "DICOM_NODE_BROKER__URL": broker,
        "DICOM_NODE_STORAGE__FOLDER": str(folder),
        "DICOM_NODE_INFERENCE__BUNDLE": str(bundle),
        "DICOM_NODE_INFERENCE__DEVICE": "cpu",
        "DICOM_NODE_LOG_LEVEL": "INFO",
    })
    return subprocess.Popen(
        [sys.executable, "-c", "from dicom_node.cli import main; main()", "worker",
         "--queues", "gpu,delivery", "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )


def test_healthz_names_a_scheduler_thread_that_ended(
    tmp_path: Path, services: list[NodeService], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = node_settings(tmp_path / "node", node={"assembly_interval_s": 0.05})
    node = NodeService(settings, worker=False)
    services.append(node)
    node.start()
    assert _health(node)[1]["checks"]["threads"] == "ok"

    def interrupted() -> None:
        # Stands for whatever the loop lets through (it outlives every Exception).
        raise SystemExit(3)

    monkeypatch.setattr(node, "assemble_once", interrupted)
    status, body = wait_until(lambda: (h := _health(node))[0] == 503 and h, 10, "a 503")
    assert body["checks"]["threads"] == "not running: scheduler", body
    assert any(
        r.levelno == logging.CRITICAL and "the scheduler thread stopped" in r.getMessage()
        for r in caplog.records
    )


def test_the_scheduler_outlives_failed_passes_and_backs_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = node_settings(tmp_path / "node")
    db = Database(settings.database_url)
    db.create_all()
    db.record_instance(record("1.1", study="9.1"))
    assert len(assemble(db, 0.0, T0 + timedelta(seconds=1)).jobs_created) == 1
    dispatcher = Dispatcher(settings, db, configure_app(settings))
    calls: list[float] = []

    def before_pass() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 3:  # what Celery's result store raised after its retry window
            raise RuntimeError("Retry limit exceeded while trying to reconnect")

    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 0.05, before_pass))
    thread.start()
    try:
        wait_until(lambda: _dispatched(db), 10, "the job sent after the failed passes")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4 s
    failed = [r.getMessage() for r in caplog.records if "dispatch pass failed" in r.getMessage()]
    assert len(failed) == 3 and "RuntimeError" in failed[0], failed
    assert any("succeed again after 3 failure(s)" in r.getMessage() for r in caplog.records)
    db.dispose()


def _dispatched(db: Database) -> bool:
    with db.session() as session:
        return session.scalar(select(Job.dispatched_at)) is not None
