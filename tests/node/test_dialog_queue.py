"""Dialog turns on the worker tier: with a Redis broker, ``serve`` loads no LLM and a
separate ``dicom_node worker`` process answers each turn from the ``dialog`` queue, its text
streamed back over Redis pub/sub and relayed to the page as server-sent events.

Redis is the local server on 127.0.0.1:6379; each test uses a database number of its own,
emptied before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import redis
from nodehelpers import T0, new_instance, node_settings, record
from sqlalchemy import select
from support.peers import free_port, stop_process

from dicom_node.api._analysis import AnalysisCache
from dicom_node.api._text import clean_generated
from dicom_node.api.dialog.generators import LocalTurnGenerator, QueuedTurnGenerator
from dicom_node.api.errors import ModelUnavailableError
from dicom_node.jobqueue.dialog import TurnRequest, answer_turn
from dicom_node.models import model_cache
from dicom_node.ops.service import NodeService
from dicom_node.pipeline.assembly import assemble
from dicom_node.pipeline.drafting import draft_jobs
from dicom_node.settings import Settings
from dicom_node.store import Database, DialogMessage

pytestmark = pytest.mark.network

REDIS = "redis://127.0.0.1:6379"
TOKEN = "jane-token-0123456789abcdef"
STUDY = "1.2.840.99.1"
USERS = {"jane": {"token": TOKEN, "display_name": "Doe^Jane", "organization": "Hospital"}}


@pytest.fixture
def redis_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis database of this test (11, or the number the test is parametrized with),
    empty; its broker URL."""
    number = getattr(request, "param", 11)
    client = redis.Redis.from_url(f"{REDIS}/{number}")
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379", pytrace=False)
    yield f"{REDIS}/{number}"
    client.flushdb()
    client.close()


def _serve_settings(folder: Path, bundle: Path, broker: str, **api: Any) -> Settings:
    return node_settings(
        folder,
        broker={"url": broker},
        inference={"bundle": bundle, "device": "cpu"},
        api={"enabled": True, "port": 0, "users": USERS, **api},
    )


def _drafted_study(settings: Settings, source: Path, model: Any) -> None:
    """One study drafted by the tiny model, as a worker would have drafted it."""
    db = Database(settings.database_url)
    db.create_all()
    image = pydicom.dcmread(source)
    target = settings.storage.spool_dir / "1.2.3.1.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    new_instance(image, SOPInstanceUID="1.2.3.1", StudyInstanceUID=STUDY).save_as(target)
    db.record_instance(record("1.2.3.1", study=STUDY, at=T0))
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    (outcome,) = draft_jobs(settings, db, model, [job_id])
    assert getattr(outcome, "report_version", None) == 1, outcome
    db.dispose()


def _start_worker(folder: Path, bundle: Path, broker: str, log: Path) -> subprocess.Popen[bytes]:
    """``dicom_node worker`` on the dialog queue only, sharing the node's storage folder and
    database, one process with one model."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOM_NODE_")}
    env.update({
        "DICOM_NODE_BROKER__URL": broker,
        "DICOM_NODE_STORAGE__FOLDER": str(folder),
        "DICOM_NODE_STORAGE__MIN_FREE_BYTES": "0",
        "DICOM_NODE_INFERENCE__BUNDLE": str(bundle),
        "DICOM_NODE_INFERENCE__DEVICE": "cpu",
        "DICOM_NODE_LOG_LEVEL": "INFO",
        "DICOM_NODE_WORKER__METRICS_PORT": str(free_port()),
    })
    return subprocess.Popen(
        [sys.executable, "-c", "from dicom_node.cli import main; main()", "worker",
         "--queues", "dialog", "--pool", "threads", "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )


def _events(response: httpx.Response) -> list[tuple[str, Any]]:
    buffer = "".join(response.iter_text())
    events = []
    for raw in buffer.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in raw.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_dialog_turn_is_answered_by_a_worker_while_serve_holds_no_llm(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, rg1_uncr: Path, redis_db: str,
    services: list[NodeService],
) -> None:
    folder = tmp_path / "node"
    settings = _serve_settings(folder, tiny_bundle, redis_db, worker_turn_timeout_s=120)
    _drafted_study(settings, rg1_uncr, tiny_model)
    model_cache.forget_models()
    log = tmp_path / "worker.log"
    worker = _start_worker(folder, tiny_bundle, redis_db, log)
    try:
        node = NodeService(settings)  # a broker is set: no embedded worker
        services.append(node)
        node.start()
        assert node.worker is None and node.warmup is None  # serve makes no model ready
        assert node.api is not None and node.api.service is not None
        generator = node.api.service._turns.generator
        assert isinstance(generator, QueuedTurnGenerator)
        asked: list[TurnRequest] = []
        generate = generator.generate

        def recorded(request: TurnRequest, on_text: Any = None) -> list[str]:
            asked.append(request)
            return generate(request, on_text)

        generator.generate = recorded  # type: ignore[method-assign]
        with httpx.stream(
            "POST", f"{node.api.url}/api/studies/{STUDY}/messages?stream=true",
            json={"text": "Is the heart enlarged?"},
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=180,
        ) as response:
            assert response.status_code == 200
            events = _events(response)
    finally:
        stop_process(worker)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done", (events, log.read_text())
    assert names.count("token") >= 2 and set(names[1:-1]) == {"token"}
    done = events[-1][1]
    streamed = "".join(data["text"] for name, data in events if name == "token")
    assert streamed.strip() == done["answer"]["text"] != ""
    # The answer is the model's: the tiny model in this process gives the same text.
    (request,) = asked
    expected = clean_generated("".join(answer_turn(tiny_model, request,
                                                   settings.storage.spool_dir)))
    assert done["answer"]["text"] == expected
    assert "dicom_node.dialog_turn" in log.read_text()
    # The exchange is stored by serve; serve loaded no model for it.
    with node.db.session() as session:
        texts = [m.text for m in session.scalars(select(DialogMessage).order_by(DialogMessage.id))]
    assert texts == ["Is the heart enlarged?", done["answer"]["text"]]
    assert model_cache._models == {}


@pytest.mark.parametrize("redis_db", [12], indirect=True)
def test_a_turn_no_worker_takes_fails_with_a_clear_503(
    tmp_path: Path, tiny_bundle: Path, redis_db: str
) -> None:
    settings = _serve_settings(tmp_path / "node", tiny_bundle, redis_db,
                               worker_turn_timeout_s=1.5)
    request = TurnRequest(STUDY, ("1.2.3.1.dcm",), "FINDINGS: x\nIMPRESSION: y", (),
                          "Is the heart enlarged?")
    with pytest.raises(ModelUnavailableError, match="no worker took the dialog turn within 2 s"):
        QueuedTurnGenerator(settings).generate(request)
    # The message expires: a worker started later does not answer a turn nobody waits for.
    queued = redis.Redis.from_url(redis_db).lrange("dialog", 0, -1)
    (message,) = queued
    assert json.loads(message)["headers"]["expires"] is not None


def test_the_embedded_default_answers_in_process(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path
) -> None:
    settings = node_settings(tmp_path / "node", inference={"bundle": tiny_bundle},
                             api={"enabled": True, "port": 0, "users": USERS})
    node = NodeService(settings, http=False)
    try:
        assert node.warmup is not None  # serve makes its own model ready
    finally:
        node.db.dispose()
    from dicom_node.api.dialog.generators import turn_generator

    generator = turn_generator(settings, node.db, AnalysisCache(2))
    assert isinstance(generator, LocalTurnGenerator)
    spool = settings.storage.spool_dir
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "a.dcm").write_bytes(chest_cr_path.read_bytes())
    request = TurnRequest(STUDY, ("a.dcm",), "FINDINGS: x\nIMPRESSION: y", (), "Why?")
    local = LocalTurnGenerator(settings, lambda: tiny_model, AnalysisCache(2))
    pieces: list[str] = []
    assert local.generate(request, pieces.append) == pieces != []


def test_a_turn_message_naming_a_file_outside_the_spool_is_refused() -> None:
    message = TurnRequest(STUDY, ("a.dcm",), "c", (), "q").to_message()
    assert TurnRequest.from_message(message).images == ("a.dcm",)
    for bad in ("../etc/passwd", "/etc/passwd"):
        with pytest.raises(ValueError, match="inside the spool folder"):
            TurnRequest.from_message({**message, "images": [bad]})
    with pytest.raises(ValueError, match="malformed"):
        TurnRequest.from_message({"images": []})


def test_workers_read_the_dialog_queue_before_the_drafts(tmp_path: Path) -> None:
    from dicom_node.jobqueue.app import by_priority, celery_config

    assert by_priority(["delivery", "gpu", "dialog"]) == ["dialog", "gpu", "delivery"]
    settings = node_settings(tmp_path / "node", broker={"url": f"{REDIS}/11"})
    options = celery_config(settings)["broker_transport_options"]
    # Redis reads the queues in the order given instead of taking turns between them.
    assert options["queue_order_strategy"] == "priority"
    assert celery_config(settings)["task_routes"]["dicom_node.dialog_turn"] == {
        "queue": "dialog"
    }


@pytest.mark.parametrize("redis_db", [12], indirect=True)
def test_a_worker_that_dies_mid_turn_leaves_nothing_stored_and_a_clear_503(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, rg1_uncr: Path, redis_db: str,
) -> None:
    """A stand-in worker takes the turn from the dialog queue, publishes its start and one
    piece, and dies (sends nothing more): the turn fails after the timeout, and neither the
    message nor an answer is stored."""
    import base64
    import threading

    from dicom_node.api._auth import Reader
    from dicom_node.api.dialog import DialogService
    from dicom_node.store import AuditEvent

    settings = _serve_settings(tmp_path / "node", tiny_bundle, redis_db,
                               worker_turn_timeout_s=2.0)
    _drafted_study(settings, rg1_uncr, tiny_model)
    db = Database(settings.database_url)
    service = DialogService(settings, db)
    assert isinstance(service._turns.generator, QueuedTurnGenerator)
    client = redis.Redis.from_url(redis_db)

    def dying_worker() -> None:
        taken = client.brpop(["dialog"], timeout=30)
        assert taken is not None
        body = json.loads(base64.b64decode(json.loads(taken[1])["body"]))
        channel = body[0][1]
        client.publish(channel, json.dumps({"event": "start"}))
        client.publish(channel, json.dumps({"event": "token", "text": "The heart"}))

    thread = threading.Thread(target=dying_worker)
    thread.start()
    jane = Reader("jane", "Doe^Jane", "Hospital", True)
    turn = service.prepare_turn(jane, STUDY, "Is the heart enlarged?")
    pieces: list[str] = []
    try:
        with pytest.raises(ModelUnavailableError, match="sent nothing for 2 s"):
            service.run_turn(turn, pieces.append)
    finally:
        thread.join(30)
        service.close()
    assert pieces == ["The heart"]  # what came was relayed
    with db.session() as session:
        assert list(session.scalars(select(DialogMessage))) == []
        events = list(session.scalars(select(AuditEvent)))
    assert any(e.action == "post_message" and e.status_code == 503 for e in events)
    db.dispose()
    client.close()
