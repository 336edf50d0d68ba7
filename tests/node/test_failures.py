"""A node whose model breaks, and a node whose model is still being built: what a user sees.

The decoder is broken on purpose the way transformers 5.24 broke it (``KeyError:
'past_key_values'`` inside lookup decoding). With the self-test on, the node finds it at start:
``/healthz`` 503 names the check and studies wait, queued. With the self-test off the job runs
into it: the job is ``failed`` with the exception type, never left ``running``, and
``/healthz``, ``/metrics``, ``status`` and the reader page's worklist all show it.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from nodehelpers import node_settings, run_storescu
from sqlalchemy import select
from support.orthanc import wait_until

from dicom_node.models.model_cache import forget_models
from dicom_node.models.readiness import READINESS, ModelPhase
from dicom_node.ops.service import NodeService
from dicom_node.ops.status import collect_status
from dicom_node.settings import DEFAULT_BUNDLE
from dicom_node.store import Job, JobState

pytestmark = pytest.mark.network

TOKEN = "reader-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(folder: Path, bundle: Path, **sections: Any) -> Any:
    values: dict[str, Any] = {
        "node": {"stable_seconds": 0.2, "assembly_interval_s": 0.1},
        "inference": {"bundle": bundle, "device": "cpu"},
        "api": {"enabled": True, "port": 0, "users": {"reader": {
            "token": TOKEN, "display_name": "Doe^Jane", "organization": "General Hospital"}}},
    }
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value}
    return node_settings(folder, **values)


def _jobs(service: NodeService) -> list[Job]:
    with service.db.session() as session:
        rows = list(session.scalars(select(Job).order_by(Job.id)))
        for row in rows:
            session.expunge(row)
    return rows


@pytest.fixture
def broken_decoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lookup decoding fails as it did with transformers 5.24; the model cache starts empty."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("past_key_values")

    monkeypatch.setattr("inference.generation.lookup_greedy_decode", broken)
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    forget_models()
    yield
    forget_models()


@pytest.fixture
def node() -> Iterator[Callable[..., NodeService]]:
    started: list[NodeService] = []

    def start(settings: Any, build_command: list[str] | None = None) -> NodeService:
        service = NodeService(settings)
        if build_command is not None:
            assert service.warmup is not None
            service.warmup.build_command = build_command
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def _urls(service: NodeService) -> tuple[str, str]:
    assert service.http is not None and service.api is not None
    return service.http.url, service.api.url


def test_a_decoder_broken_at_job_time_fails_the_job_with_a_reason_everywhere(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path, dcmtk: dict[str, str],
    dcmtk_env: dict[str, str], broken_decoder: None, node: Callable[..., NodeService],
) -> None:
    settings = _settings(
        tmp_path / "node", tiny_bundle,
        inference={"self_test": False}, worker={"unhealthy_after_failures": 1},
    )
    service = node(settings)
    ops, api = _urls(service)
    wait_until(lambda: READINESS.status().phase is ModelPhase.READY, 60, "the model")
    assert httpx.get(f"{ops}/healthz", timeout=10).status_code == 200
    host, port = service.address or ("", 0)
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, settings.node.ae_title), rg1_uncr)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def finished() -> list[Job]:
        rows = _jobs(service)
        return rows if rows and rows[-1].state not in (JobState.QUEUED, JobState.RUNNING) else []

    (job,) = wait_until(finished, 60, "the job to end")
    assert job.state is JobState.FAILED
    assert job.error is not None and "KeyError" in job.error
    assert job.error.startswith("unexpected error")

    health = httpx.get(f"{ops}/healthz", timeout=10)
    assert health.status_code == 503
    assert "last 1 report jobs failed" in health.json()["checks"]["jobs"]
    assert "KeyError" in health.json()["checks"]["jobs"]
    metrics = httpx.get(f"{ops}/metrics", timeout=10).text
    assert 'dicom_node_failed_jobs{reason="KeyError"} 1.0' in metrics
    assert 'dicom_node_jobs{state="running"} 0.0' in metrics

    (row,) = httpx.get(f"{api}/api/studies", headers=AUTH, timeout=10).json()
    # the reader gets plain words; the exception's name stays in the job row and the log
    assert row["status"] == "failed"
    assert row["status_reason"] == (
        "drafting stopped on an unexpected error; the node's log has the details"
    )
    status = collect_status(service.db, 0.2, datetime.now(UTC))
    assert status.studies[0].state == "failed" and "KeyError" in (status.studies[0].reason or "")


def test_a_decoder_broken_at_start_is_found_by_the_self_test_and_jobs_wait(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path, dcmtk: dict[str, str],
    dcmtk_env: dict[str, str], broken_decoder: None, node: Callable[..., NodeService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(tmp_path / "node", tiny_bundle)
    service = node(settings)
    ops, api = _urls(service)

    def unhealthy() -> httpx.Response | None:
        answer = httpx.get(f"{ops}/healthz", timeout=10)
        return answer if answer.status_code == 503 else None

    health = wait_until(unhealthy, 60, "/healthz to report the model")
    assert health.json()["checks"]["model"].startswith("adapter:report failed: KeyError")
    assert health.json()["model"]["phase"] == "failed"
    assert [r.getMessage() for r in caplog.records if "self-test" in r.getMessage()]

    host, port = service.address or ("", 0)
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, settings.node.ae_title), rg1_uncr)
    assert sent.returncode == 0, sent.stdout + sent.stderr  # studies are still received
    (job,) = wait_until(lambda: _jobs(service), 30, "the study's job")
    time.sleep(1.5)  # fifteen dispatcher passes: none hands the job to the broken model
    (job,) = _jobs(service)
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.dispatched_at is None
    (row,) = httpx.get(f"{api}/api/studies", headers=AUTH, timeout=10).json()
    assert row["status"] == "queued"
    assert row["status_reason"] == "waiting: the model is not usable (see /healthz)"


def test_a_first_run_listens_at_once_and_drafts_once_the_build_ends(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path, dcmtk: dict[str, str],
    dcmtk_env: dict[str, str], node: Callable[..., NodeService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo build is replaced by a quick one that writes progress and a real (tiny)
    bundle when a flag file appears; everything else is the first run of ``serve``."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    forget_models()
    release = tmp_path / "release-the-build"
    build = textwrap.dedent(f"""
        import json, shutil, time
        from pathlib import Path
        work = Path("{DEFAULT_BUNDLE}.work")
        work.mkdir(parents=True, exist_ok=True)
        (work / "progress.json").write_text(json.dumps({{
            "step": 3, "steps": 8, "name": "training the findings classifier",
            "build_started": time.time()}}))
        while not Path("{release}").exists():
            time.sleep(0.05)
        shutil.copytree("{tiny_bundle}", "{DEFAULT_BUNDLE}")
    """)
    settings = _settings(tmp_path / "node", DEFAULT_BUNDLE)
    started = time.monotonic()
    service = node(settings, build_command=[sys.executable, "-c", build])
    ops, api = _urls(service)
    assert time.monotonic() - started < 10  # listening while the model is built

    def building() -> dict[str, Any] | None:
        body = httpx.get(f"{ops}/healthz", timeout=10).json()
        return body if "step 3 of 8" in body["model"]["detail"] else None

    body = wait_until(building, 30, "the build's progress on /healthz")
    assert body["status"] == "starting" and body["model"]["phase"] == "building"
    host, port = service.address or ("", 0)
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, settings.node.ae_title), rg1_uncr)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (job,) = wait_until(lambda: _jobs(service), 30, "the study's job")
    time.sleep(1.0)
    (job,) = _jobs(service)
    assert job.state is JobState.QUEUED  # accepted and queued, waiting for the model
    (row,) = httpx.get(f"{api}/api/studies", headers=AUTH, timeout=10).json()
    assert row["status"] == "queued" and "waiting for the model (building" in row["status_reason"]

    release.touch()
    wait_until(lambda: _jobs(service)[0].state is JobState.DONE, 120, "the draft")
    body = httpx.get(f"{ops}/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["model"]["phase"] == "ready"
    (row,) = httpx.get(f"{api}/api/studies", headers=AUTH, timeout=10).json()
    assert row["status"] == "drafted"


@pytest.fixture
def cleanups() -> Iterator[list[Callable[[], None]]]:
    tasks: list[Callable[[], None]] = []
    yield tasks
    for task in tasks:
        task()


def test_a_malformed_birth_date_never_reaches_the_log_or_the_sender(
    tmp_path: Path, tiny_bundle: Path, rg1_uncr: Path, scu_store: Callable[..., int],
    node: Callable[..., NodeService], capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, cleanups: list[Callable[[], None]],
) -> None:
    import logging

    import pydicom
    from nodehelpers import RunningNode, new_instance
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from dicom_node.dicom.dimse import StoreStatus
    from dicom_node.ops import logs as node_logs

    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    level = logging.getLogger().level
    node_logs.configure_logging("INFO", "json")
    installed = node_logs._installed

    def restore() -> None:
        logging.getLogger().removeHandler(installed)  # type: ignore[arg-type]
        logging.getLogger().setLevel(level)
        logging.captureWarnings(False)
        node_logs._installed = None

    cleanups.append(restore)
    bad_date, name, patient_id = "05.03.1940", "Qwertz^Ulrike", "PID-4711-0815"
    source = new_instance(pydicom.dcmread(rg1_uncr), PatientName=name, PatientID=patient_id)
    source.add(RawDataElement(  # as a broken modality writes it
        Tag(0x00100030), "DA", len(bad_date), bad_date.encode(), 0, False, True))
    service = node(_settings(tmp_path / "node", tiny_bundle))
    host, port = service.address or ("", 0)
    target = RunningNode(host=host, port=port, settings=service.settings,
                         spool=service.spool, db=service.db, scp=service.scp)
    # refused at the door, naming the attribute and not its value
    assert scu_store(target, source) == StoreStatus.UNUSABLE_IMAGE
    assert _jobs(service) == []
    # and a library that logs the value (pydicom does, on conversion) is scrubbed too
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '%s'", bad_date)
    logs = capfd.readouterr().err
    assert "PatientBirthDate is not a DICOM date" in logs
    assert "Invalid value for VR DA: <redacted>" in logs
    for value in (bad_date, "05.03", name, "Qwertz", patient_id):
        assert value not in logs
