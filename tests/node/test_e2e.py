"""The node end to end with real peers: Orthanc as PACS and RIS, Redis as broker, a tiny model.

Covers the issue's list: an auto-forwarded study comes back as an SR in the same study with
the worklist indication; the SR waits in the outbox while the PACS is down and arrives once
it is back; a worker process on Redis runs the jobs the SCP queued; a node restarted in the
middle of a study loses nothing. (Unknown calling AEs and malformed files: test_scp.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from nodehelpers import new_instance, node_settings, run_storescu
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from support.orthanc import ORTHANC_AE, Orthanc, wait_until
from support.peers import free_port, stop_process
from support.validators import validate_sr_file

from dicom_node.ops.service import NodeService
from dicom_node.settings import Settings
from dicom_node.store import Job, JobState, OutboxItem, OutboxState, ReportVersion
from sr_templates import read_report

pytestmark = pytest.mark.network

#: The node's AE title in these tests.
NODE_AE = "CXRNODE"
#: Redis database of the broker test (flushed before and after).
REDIS_DB = 13
INDICATION = "Fever and productive cough"


@pytest.fixture
def chest_study(rg1_uncr: Path) -> Callable[..., Dataset]:
    """Factory: a copy of RG1_UNCR in a new study, with accession number and patient ID."""
    source = pydicom.dcmread(rg1_uncr)

    def make(accession: str = "ACCE2E1", **changes: Any) -> Dataset:
        return new_instance(
            source,
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
            AccessionNumber=accession,
            PatientID=f"PID-{accession}",
            PatientName=f"Testpatient^{accession}",
            **changes,
        )

    return make


@pytest.fixture
def orthancs(tmp_path: Path, loopback_preload: dict[str, str]) -> Iterator[Callable[..., Orthanc]]:
    """Factory: ``orthancs(node=None, name='pacs')`` makes an Orthanc; all stopped after."""
    made: list[Orthanc] = []

    def make(node: tuple[str, str, int] | None = None, name: str = "pacs") -> Orthanc:
        server = Orthanc(tmp_path / name, loopback_preload, node)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def e2e_settings(folder: Path, tiny_bundle: Path, port: int, **sections: Any) -> Settings:
    base: dict[str, Any] = {
        "node": {"port": port, "ae_title": NODE_AE, "stable_seconds": 0.5,
                 "assembly_interval_s": 0.1},
        "inference": {"bundle": tiny_bundle},
        "delivery": {"retry_base_s": 0.5, "retry_max_s": 1.0, "timeout_s": 10.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return node_settings(folder, **base)


def worklist_item(study: Dataset) -> Dataset:
    """The RIS order of `study` (same accession, patient and Study UID)."""
    item = Dataset()
    item.AccessionNumber = study.AccessionNumber
    item.PatientName = study.PatientName
    item.PatientID = study.PatientID
    item.StudyInstanceUID = study.StudyInstanceUID
    item.RequestedProcedureID = "RP1"
    item.RequestedProcedureDescription = "XR CHEST PA"
    item.ReasonForTheRequestedProcedure = INDICATION
    step = Dataset()
    step.Modality = "CR"
    step.ScheduledStationAETitle = "CXRROOM1"
    step.ScheduledProcedureStepStartDate = date.today().strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = "080000"
    step.ScheduledProcedureStepDescription = "Chest radiograph"
    step.ScheduledProcedureStepID = "SPS1"
    item.ScheduledProcedureStepSequence = [step]
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    item.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    item.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return item


def count(service: NodeService, statement: Any) -> int:
    with service.db.session() as session:
        return int(session.scalar(statement) or 0)


def test_a_forwarded_study_comes_back_as_an_sr_with_the_worklist_indication(
    tmp_path: Path, tiny_bundle: Path, orthancs: Callable[..., Orthanc],
    services: list[NodeService], chest_study: Callable[..., Dataset],
) -> None:
    node_port = free_port()
    pacs = orthancs(node=(NODE_AE, "127.0.0.1", node_port))
    settings = e2e_settings(
        tmp_path / "node", tiny_bundle, node_port,
        pacs={"orthanc": {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port}},
        ris={"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port,
             "poll_interval_s": 3600},
    )
    study = chest_study()
    pacs.add_worklist_item("order1", worklist_item(study))
    pacs.start()
    node = NodeService(settings)
    services.append(node)
    node.start()

    pacs.upload(study)  # Orthanc's Lua rule forwards it to the node
    (sr,) = wait_until(pacs.srs, 90, "the SR in Orthanc")

    assert sr.StudyInstanceUID == study.StudyInstanceUID
    assert pacs.find("Study", StudyInstanceUID=study.StudyInstanceUID)
    assert len(pacs.find("Instance", StudyInstanceUID=study.StudyInstanceUID)) == 2
    report = read_report(sr)
    assert report.indication == INDICATION
    assert report.verification.value == "UNVERIFIED" and len(report.findings) == 14
    (request,) = sr.ReferencedRequestSequence
    assert request.AccessionNumber == study.AccessionNumber
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == study.SOPInstanceUID
    # Orthanc does not forward SRs; the node would ignore its own anyway: one job only.
    assert count(node, select(func.count(Job.id))) == 1
    sent = wait_until(
        lambda: count(node, select(func.count(OutboxItem.id)).where(
            OutboxItem.state == OutboxState.SENT)),
        10, "the outbox row marked sent",
    )
    assert sent == 1


def test_a_radialog_bundle_drafts_a_forwarded_study_into_a_valid_sr(
    tmp_path: Path, radialog_bundle: Path, orthancs: Callable[..., Orthanc],
    services: list[NodeService], chest_study: Callable[..., Dataset],
) -> None:
    """A RaDialog v1 import (BioViL-T, Q-Former, its classifier, Vicuna + LoRA, tiny) runs
    the node's drafting path like the node's own model: the SR reaches Orthanc, names the
    imported model and its provenance, codes all 14 findings and passes dciodvfy."""
    node_port = free_port()
    pacs = orthancs(node=(NODE_AE, "127.0.0.1", node_port))
    settings = e2e_settings(
        tmp_path / "node", radialog_bundle, node_port,
        pacs={"orthanc": {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port}},
        ris={"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port,
             "poll_interval_s": 3600},
    )
    study = chest_study("ACCRAD1")
    pacs.add_worklist_item("order1", worklist_item(study))
    pacs.start()
    node = NodeService(settings)
    services.append(node)
    node.start()

    pacs.upload(study)
    (sr,) = wait_until(pacs.srs, 120, "the SR in Orthanc")
    assert sr.StudyInstanceUID == study.StudyInstanceUID
    report = read_report(sr)
    assert report.indication == INDICATION and len(report.findings) == 14
    assert report.algorithm is not None and report.algorithm.name == "radialog-v1"
    assert "RaDialog" in report.algorithm.parameters["source"]
    assert "Research use only" in report.algorithm.parameters["intended_use"]
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    validate_sr_file(path)


def test_with_the_pacs_down_the_sr_waits_and_is_delivered_once_it_is_back(
    tmp_path: Path, tiny_bundle: Path, orthancs: Callable[..., Orthanc],
    services: list[NodeService], chest_study: Callable[..., Dataset],
    dcmtk: dict[str, str], dcmtk_env: dict[str, str],
) -> None:
    pacs = orthancs()  # configured, not started: the PACS is down
    settings = e2e_settings(
        tmp_path / "node", tiny_bundle, 0,
        pacs={"orthanc": {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port}},
    )
    node = NodeService(settings)
    services.append(node)
    host, port = node.start()
    study = chest_study("ACCDOWN")
    path = tmp_path / "study.dcm"
    study.save_as(path, enforce_file_format=True)
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, NODE_AE), path)
    assert sent.returncode == 0, sent.stderr

    def retried() -> bool:
        with node.db.session() as session:
            item = session.scalars(select(OutboxItem)).first()
            return item is not None and item.state == OutboxState.PENDING and item.attempts >= 2

    try:
        wait_until(retried, 90, "two failed delivery attempts")
    except AssertionError:
        with node.db.session() as session:
            rows = [(i.state, i.attempts, i.next_attempt_at, i.last_error)
                    for i in session.scalars(select(OutboxItem))]
            jobs = [(j.state, j.error) for j in session.scalars(select(Job))]
        raise AssertionError(f"outbox {rows}, jobs {jobs}") from None
    pacs.start()
    (sr,) = wait_until(pacs.srs, 30, "the SR in Orthanc after it came back")
    assert sr.StudyInstanceUID == study.StudyInstanceUID

    def delivered() -> OutboxItem | None:
        # Orthanc holds the SR once it answered the C-STORE; the node records that answer
        # a moment later
        with node.db.session() as session:
            item = session.scalars(select(OutboxItem)).one()
            return item if item.state == OutboxState.SENT else None

    item = wait_until(delivered, 10, "the outbox row marked sent")
    assert item.state == OutboxState.SENT and item.attempts >= 3
    assert not list(settings.storage.outbox_dir.rglob("*.dcm"))  # delivered: outbox emptied


def test_a_worker_on_redis_runs_the_jobs_the_scp_queued(
    tmp_path: Path, tiny_bundle: Path, services: list[NodeService],
    chest_study: Callable[..., Dataset], dcmtk: dict[str, str], dcmtk_env: dict[str, str],
) -> None:
    broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(broker)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379", pytrace=False)
    folder = tmp_path / "node"
    settings = e2e_settings(folder, tiny_bundle, 0, broker={"url": broker})
    node = NodeService(settings)  # a broker is set: no embedded worker
    assert node.worker is None
    services.append(node)
    host, port = node.start()
    paths = []
    for index in range(2):
        path = tmp_path / f"study{index}.dcm"
        chest_study(f"ACCREDIS{index}").save_as(path, enforce_file_format=True)
        paths.append(path)
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, NODE_AE), *paths)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: count(node, select(func.count(Job.id))) == 2, 20, "two queued jobs")
    assert count(node, select(func.count(ReportVersion.id))) == 0  # nobody drafts yet

    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOM_NODE_")}
    env.update({
        "DICOM_NODE_BROKER__URL": broker,
        "DICOM_NODE_STORAGE__FOLDER": str(folder),
        "DICOM_NODE_INFERENCE__BUNDLE": str(tiny_bundle),
        "DICOM_NODE_LOG_LEVEL": "INFO",
    })
    worker = subprocess.Popen(
        [sys.executable, "-c", "from dicom_node.cli import main; main()", "worker",
         "--queues", "gpu,delivery", "--concurrency", "1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "worker.log").open("wb"), env=env,
    )
    try:
        def drafted() -> bool:
            done = count(node, select(func.count(Job.id)).where(Job.state == JobState.DONE))
            return done == 2

        try:
            wait_until(drafted, 120, "both jobs done by the worker")
        except AssertionError:
            raise AssertionError((tmp_path / "worker.log").read_text()[-3000:]) from None
        assert count(node, select(func.count(ReportVersion.id))) == 2
        log = (tmp_path / "worker.log").read_text()
        assert "drafted" in log and "PID-ACCREDIS" not in log and "Testpatient" not in log
    finally:
        stop_process(worker, timeout=30)
        client.flushdb()


def test_a_node_restarted_in_the_middle_of_a_study_loses_nothing(
    tmp_path: Path, tiny_bundle: Path, services: list[NodeService],
    chest_study: Callable[..., Dataset], dcmtk: dict[str, str], dcmtk_env: dict[str, str],
) -> None:
    settings = e2e_settings(tmp_path / "node", tiny_bundle, 0, node={"stable_seconds": 3.0})
    frontal = chest_study("ACCRESTART")
    lateral = new_instance(frontal, ViewPosition="LL", SeriesInstanceUID=generate_uid())
    paths = []
    for name, ds in (("pa", frontal), ("lat", lateral)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)

    first = NodeService(settings)
    host, port = first.start()
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, NODE_AE), paths[0])
    assert sent.returncode == 0, sent.stderr
    first.stop()  # stopped before the study is complete: nothing assembled yet
    assert not list(settings.storage.reports_dir.rglob("*.dcm"))

    second = NodeService(settings)
    services.append(second)
    host, port = second.start()
    sent = run_storescu(dcmtk, dcmtk_env, (host, port, NODE_AE), paths[1])
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: count(second, select(func.count(ReportVersion.id))) == 1, 60, "the draft"
    )
    with second.db.session() as session:
        (job,) = session.scalars(select(Job)).all()
        assert job.instance_count == 2 and job.state == JobState.DONE
    (sr_file,) = settings.storage.reports_dir.rglob("*.dcm")
    sr = pydicom.dcmread(sr_file)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {frontal.SOPInstanceUID, lateral.SOPInstanceUID}
