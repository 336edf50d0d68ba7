"""``dicom_node serve`` and ``status`` as a user runs them, and a node restarted mid-way."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from nodehelpers import node_settings, run_storescu
from sqlalchemy import func, select
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.cli.node import HTTP_PREFIX, LISTENING_PREFIX
from dicom_node.ops.service import NodeService
from dicom_node.store import Instance, Job

pytestmark = pytest.mark.network
runner = CliRunner()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of `process`, or fail after `timeout` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"no output from the node within {timeout} s")
    return process.stdout.readline()


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def counts(service: NodeService) -> tuple[int, int]:
    """(instances, jobs) in the node's database."""
    with service.db.session() as session:
        instances = session.scalar(select(func.count()).select_from(Instance))
        jobs = session.scalar(select(func.count()).select_from(Job))
    return int(instances or 0), int(jobs or 0)


def test_serve_drafts_a_report_shows_health_metrics_status_and_stops_on_sigterm(
    tmp_path: Path, dcmtk: dict[str, str], dcmtk_env: dict[str, str], rg1_uncr: Path,
    tiny_bundle: Path,
) -> None:
    folder = tmp_path / "node"
    env = {
        **os.environ,
        "DICOM_NODE_STORAGE__FOLDER": str(folder),
        "DICOM_NODE_STORAGE__MIN_FREE_BYTES": "0",
        "DICOM_NODE_NODE__STABLE_SECONDS": "0.2",
        "DICOM_NODE_NODE__ASSEMBLY_INTERVAL_S": "0.1",
        "DICOM_NODE_NODE__HTTP_PORT": "0",
        "DICOM_NODE_INFERENCE__BUNDLE": str(tiny_bundle),
        "DICOM_NODE_LOG_LEVEL": "INFO",
        "DICOM_NODE_LOG_FORMAT": "json",
    }
    env.pop("DICOM_NODE_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-c", "from dicom_node.cli import main; main()", "serve",
         "--port", "0", "--ae-title", "CXRTEST"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    status_env = {key: value for key, value in env.items() if key.startswith("DICOM_NODE_")}
    try:
        line = _read_line(process, timeout=120)
        if not line.startswith(LISTENING_PREFIX):
            process.kill()
            pytest.fail(f"unexpected output {line!r}: {process.communicate()[1]}")
        address = line.split()[3]
        host, port = address.rsplit(":", 1)
        assert line.split()[-1] == "CXRTEST" and host == "127.0.0.1"
        assert process.stdout is not None  # both lines are written and flushed together
        http_line = process.stdout.readline()
        assert http_line.startswith(HTTP_PREFIX), http_line
        base_url = http_line.split()[-1]
        health = httpx.get(f"{base_url}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        # "starting" while the model loads and self-tests in the background, then "ok"
        assert health.json()["status"] in ("starting", "ok")
        assert set(health.json()["checks"]) >= {"database", "dicom", "broker", "worker",
                                                 "model", "jobs"}
        _wait_for(lambda: httpx.get(f"{base_url}/healthz", timeout=10).json()["status"] == "ok",
                  timeout=60, what="the model to be ready")
        assert httpx.get(f"{base_url}/healthz", timeout=10).json()["model"]["phase"] == "ready"

        sent = run_storescu(dcmtk, dcmtk_env, (host, int(port), "CXRTEST"), rg1_uncr)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def drafted() -> bool:
            result = runner.invoke(app, ["status", "--json"], env=status_env)
            assert result.exit_code == 0, result.output
            jobs = json.loads(result.stdout)["counts"]["jobs"]
            assert jobs["failed"] == 0, result.stdout
            return bool(jobs["done"] == 1)

        _wait_for(drafted, timeout=60, what="the study's draft")
        exposition = httpx.get(f"{base_url}/metrics", timeout=10).text
        assert "dicom_node_studies_received_total 1.0" in exposition
        assert 'dicom_node_jobs{state="done"} 1.0' in exposition
        assert "dicom_node_inference_seconds_count 1.0" in exposition
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    payload = json.loads(runner.invoke(app, ["status", "--json"], env=status_env).stdout)
    (study,) = payload["studies"]
    assert study["instances"] == 1 and study["jobs"] == 1
    (job,) = payload["jobs"]
    assert job["state"] == "done" and job["study"] == study["study"]
    assert payload["outbox"] == []  # no PACS configured: the draft is kept, not sent
    assert "PatientName" not in json.dumps(payload) and len(study["study"]) == 12
    (sr_file,) = (folder / "reports").rglob("*.dcm")
    sr = pydicom.dcmread(sr_file)
    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    logs = process.stderr.read() if process.stderr else ""
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any("drafted" in record["message"] for record in records), logs[-2000:]
    for forbidden in (str(source.PatientName), str(source.PatientID)):
        if forbidden:
            assert forbidden not in logs
    table = runner.invoke(app, ["status"], env=status_env)
    assert table.exit_code == 0 and "done" in table.output


def test_restart_loses_nothing_and_a_stable_study_gets_one_job(
    tmp_path: Path, dcmtk: dict[str, str], dcmtk_env: dict[str, str], rg1_uncr: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    # A long assembly interval: the first node stops before it assembles anything.
    settings = node_settings(
        tmp_path / "node", node={"stable_seconds": 0.0, "assembly_interval_s": 3600}
    )
    first = NodeService(settings, worker=False, http=False)
    host, port = first.start()
    try:
        sent = run_storescu(dcmtk, dcmtk_env, (host, port, settings.node.ae_title), rg1_uncr)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert counts(first) == (1, 0)
    finally:
        first.stop()

    for _ in range(2):  # the study is queued by the first restart, and only by it
        node = NodeService(settings, worker=False, http=False)
        node.start()
        try:
            assert counts(node) == (1, 1)
            assert node.assemble_once().jobs_created == []
            with node.db.session() as session:
                path = session.scalars(select(Instance.path)).one()
            assert (settings.storage.spool_dir / path).is_file()
        finally:
            node.stop()


def test_a_port_in_use_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_node.errors import ServiceError

    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    first = NodeService(node_settings(tmp_path / "a"), worker=False, http=False)
    _, port = first.start()
    try:
        second = NodeService(
            node_settings(tmp_path / "b", node={"port": port}), worker=False, http=False
        )
        with pytest.raises(ServiceError, match="cannot listen"):
            second.start()
        second.stop()
    finally:
        first.stop()
