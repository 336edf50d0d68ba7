"""Dynamic batching of report jobs through the real Celery path: the dispatcher sends one
message per queued job, the embedded worker (threads, SQLite transport) runs ``draft_report``,
which drafts the jobs it finds queued in one vision call and one batched ``generate``.

The model calls are counted on the process's cached model (the one the worker's tasks get);
every job's outcome is read from its own row.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from nodehelpers import T0, new_instance, node_settings, record
from sqlalchemy import select
from support.orthanc import wait_until

from dicom_node.jobqueue import GPU_QUEUE, Dispatcher, EmbeddedWorker, configure_app
from dicom_node.jobqueue import context as queue_context
from dicom_node.jobqueue.batching import collect_batch
from dicom_node.models.model_cache import forget_models
from dicom_node.pipeline.assembly import assemble
from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState, ReportVersion

PACS = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}}


def _settings(folder: Path, bundle: Path, **worker: Any) -> Settings:
    return node_settings(
        folder, pacs=PACS, inference={"bundle": bundle, "device": "cpu"}, worker=worker
    )


def _studies(settings: Settings, db: Database, source: Path, count: int) -> list[int]:
    """`count` studies of one chest CR each (SOP 1.2.3.N), assembled: their job ids."""
    image = pydicom.dcmread(source)
    for index in range(count):
        sop, study = f"1.2.3.{index + 1}", f"1.2.840.99.{index + 1}"
        target = settings.storage.spool_dir / f"{sop}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        new_instance(image, SOPInstanceUID=sop, StudyInstanceUID=study).save_as(target)
        db.record_instance(record(sop, study=study, at=T0))
    job_ids = sorted(assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created)
    assert len(job_ids) == count
    return job_ids


def _rows(db: Database) -> list[Job]:
    with db.session() as session:
        rows = list(session.scalars(select(Job).order_by(Job.id)))
        for row in rows:
            session.expunge(row)
        return rows


def _draft_messages(settings: Settings) -> list[tuple[int, bool]]:
    """The draft messages waiting in the embedded broker: (job id, has an ETA)."""
    import base64
    import json
    import sqlite3

    from dicom_node.jobqueue.app import EMBEDDED_BROKER_FILE

    with sqlite3.connect(settings.storage.folder / EMBEDDED_BROKER_FILE) as broker:
        payloads = [row[0] for row in broker.execute("SELECT payload FROM kombu_message")]
    found = []
    for payload in payloads:
        message = json.loads(payload)
        if message["headers"]["task"] == "dicom_node.draft_report":
            args = json.loads(base64.b64decode(message["body"]))[0]
            found.append((args[0], message["headers"]["eta"] is not None))
    return found


@pytest.fixture
def counted_model() -> Iterator[dict[str, list[int]]]:
    """The worker's model (loaded here, from the cache its tasks use), with its vision and
    generate calls counted: batch sizes per call."""
    model = queue_context.load_model()
    calls: dict[str, list[int]] = {"vision": [], "generate": []}
    vision, generate = model.vision, model.generate_reports

    def counted_vision(pixels):  # type: ignore[no-untyped-def]
        calls["vision"].append(len(pixels))
        return vision(pixels)

    def counted_generate(requests, **kwargs):  # type: ignore[no-untyped-def]
        calls["generate"].append(len(requests))
        return generate(requests, **kwargs)

    model.vision = counted_vision  # type: ignore[method-assign,assignment]
    model.generate_reports = counted_generate  # type: ignore[method-assign,assignment]
    try:
        yield calls
    finally:
        model.vision = vision  # type: ignore[method-assign]
        del model.generate_reports
        forget_models()


@pytest.fixture
def node(tmp_path: Path, tiny_bundle: Path) -> Iterator[tuple[Settings, Database]]:
    settings = _settings(tmp_path / "node", tiny_bundle, batch_size=3, batch_wait_ms=300)
    db = Database(settings.database_url)
    db.create_all()
    configure_app(settings)
    queue_context.set_settings(settings, db)
    yield settings, db
    db.dispose()


def test_queued_studies_are_drafted_in_batches_and_a_failing_study_fails_alone(
    node: tuple[Settings, Database], rg1_uncr: Path, counted_model: dict[str, list[int]]
) -> None:
    settings, db = node
    job_ids = _studies(settings, db, rg1_uncr, 5)
    (settings.storage.spool_dir / "1.2.3.2.dcm").unlink()  # the second study cannot be read
    app = configure_app(settings)
    # The gpu queue only: one task at a time (with delivery the worker runs two).
    worker = EmbeddedWorker(app, settings, queues=(GPU_QUEUE,))
    Dispatcher(settings, db, app).dispatch_once()  # five messages, one per job
    worker.start()
    try:
        wait_until(
            lambda: all(j.state in (JobState.DONE, JobState.FAILED) for j in _rows(db)),
            120, "every job to end",
        )
    finally:
        worker.stop()
    rows = _rows(db)
    assert [j.state for j in rows] == [
        JobState.DONE, JobState.FAILED, JobState.DONE, JobState.DONE, JobState.DONE
    ]
    assert "cannot be read from the spool" in (rows[1].error or "")
    assert all(j.attempts == 1 for j in rows)  # no job drafted twice
    # Jobs 1-3 in one batch (the second failing alone before the model), jobs 4-5 in the
    # next: each batch is one vision call and one generate call.
    assert counted_model["generate"] == [2, 2]
    assert counted_model["vision"] == [2, 2]
    with db.session() as session:
        versions = list(session.scalars(select(ReportVersion).order_by(ReportVersion.job_id)))
    assert [v.job_id for v in versions] == [job_ids[0], *job_ids[2:]]
    # One claim per batch: the jobs of a batch share their start, which names its heartbeat.
    assert rows[0].started_at == rows[2].started_at != rows[3].started_at == rows[4].started_at


def test_batch_size_one_drafts_each_job_alone(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path
) -> None:
    settings = _settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    job_ids = _studies(settings, db, rg1_uncr, 3)
    assert settings.worker.batch_size == 1
    assert collect_batch(settings, db, job_ids[0]) == [job_ids[0]]
    db.dispose()


def test_a_batch_waits_for_more_jobs_at_most_batch_wait_ms(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path
) -> None:
    settings = _settings(tmp_path / "node", tiny_bundle, batch_size=4, batch_wait_ms=500)
    db = Database(settings.database_url)
    db.create_all()
    job_ids = _studies(settings, db, rg1_uncr, 2)
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    # Two queued jobs of four: the batch waits the whole 500 ms for two more, then goes.
    assert collect_batch(settings, db, job_ids[0], clock=lambda: now[0], sleep=sleep) == job_ids
    assert sum(waits) == pytest.approx(0.5)
    # A job that is not claimable (done) leads no batch and waits for nothing.
    with db.session() as session:
        session.get(Job, job_ids[1]).state = JobState.DONE  # type: ignore[union-attr]
    waits.clear()
    assert collect_batch(settings, db, job_ids[1], clock=lambda: now[0], sleep=sleep) == [
        job_ids[1]
    ]
    assert waits == []
    db.dispose()


@pytest.mark.parametrize("transient", ["leader", "follower"])
def test_a_transient_error_requeues_its_job_the_leader_retried_by_celery(
    node: tuple[Settings, Database], rg1_uncr: Path, counted_model: dict[str, list[int]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, transient: str,
) -> None:
    """The RIS lookup of one study fails transiently (as a database away would): that job
    alone goes back to ``queued``; the others are drafted. The task's own job is retried by
    Celery; another job of the batch is sent again with the same backoff."""
    from dicom_node.errors import TransientJobError
    from dicom_node.jobqueue.tasks import draft_report
    from dicom_node.pipeline import drafting

    settings, db = node
    job_ids = _studies(settings, db, rg1_uncr, 3)
    flaky = "1.2.840.99.1" if transient == "leader" else "1.2.840.99.3"
    resolve = drafting.resolve_worklist

    def lookup(settings: Settings, db: Database, study: Any) -> Any:
        if study.study_instance_uid == flaky:
            raise TransientJobError("the database is away")
        return resolve(settings, db, study)

    monkeypatch.setattr(drafting, "resolve_worklist", lookup)
    result = draft_report.apply(args=(job_ids[0],))
    rows = _rows(db)
    retried = [r for r in caplog.records if r.getMessage().endswith("; retrying")]
    if transient == "leader":
        # Eagerly applied, Celery's retries run at once: the task's own job is tried
        # max_retries + 1 times, each time alone (the others are drafted by the first run).
        tries = settings.worker.max_retries + 1
        assert result.state == "FAILURE" and len(retried) == tries
        assert [j.state for j in rows] == [JobState.QUEUED, JobState.DONE, JobState.DONE]
        assert [j.attempts for j in rows] == [tries, 1, 1]
    else:
        assert result.state == "SUCCESS" and result.result["batch"] == 3 and not retried
        assert [j.state for j in rows] == [JobState.DONE, JobState.DONE, JobState.QUEUED]
        assert [j.attempts for j in rows] == [1, 1, 1]
        # The third job's own message was used up: it is sent again, 5 s later.
        assert _draft_messages(settings) == [(job_ids[2], True)]
    assert counted_model["generate"] == [2]
    queued = next(j for j in rows if j.state is JobState.QUEUED)
    assert queued.error == "the database is away"


def test_the_vision_side_of_a_batch_is_one_call_with_each_study_s_own_result(
    tiny_model: Any, chest_cr_path: Path, tmp_path: Path
) -> None:
    import torch

    from inference import PreprocessingError

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    studies = [[chest_cr_path], [broken], [chest_cr_path, chest_cr_path]]
    alone = [tiny_model.analyse(s, skip_unusable=True) if s != [broken] else None
             for s in studies]
    calls: list[int] = []
    vision = tiny_model.vision

    def counted(pixels):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return vision(pixels)

    tiny_model.vision = counted
    try:
        together = tiny_model.analyse_many(studies, skip_unusable=True)
    finally:
        tiny_model.vision = vision
    assert calls == [3]  # the usable images of all studies in one call
    assert isinstance(together[1], PreprocessingError)
    for mine, single in ((together[0], alone[0]), (together[2], alone[2])):
        assert not isinstance(mine, Exception) and single is not None
        assert [f.probability for f in mine.findings] == pytest.approx(
            [f.probability for f in single.findings], abs=1e-5)
        assert torch.allclose(mine.image_tokens, single.image_tokens, atol=1e-5)
