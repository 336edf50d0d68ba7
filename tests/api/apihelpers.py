"""Helpers of the dialog API tests: settings, a drafted study, validators, Orthanc."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_node._privacy import patient_key
from dicom_node.api import DialogService
from dicom_node.reports import FindingRecord, store_report_version
from dicom_node.settings import Settings, load_settings
from dicom_node.spool import Spool
from dicom_node.store import (
    AuditEvent,
    Database,
    DialogMessage,
    InstanceRecord,
    OutboxItem,
    Proposal,
    ReportKind,
    ReportVersion,
)
from sr_templates import AlgorithmInfo, Finding, Presence, Report, build_draft_sr

#: Bearer tokens of the test users.
JANE_TOKEN = "jane-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"
#: Patient attributes of the seeded study; they must never reach the log.
PATIENT_NAME = "Zyxwvu^Qwertina"
PATIENT_ID = "PID-778899-SECRET"
ACCESSION = "ACC4711"
DRAFT_FINDINGS = "Small left pleural effusion. Heart size is normal. No pneumothorax."
DRAFT_IMPRESSION = "Small left pleural effusion."
#: Longest message of the test settings.
MAX_MESSAGE_CHARS = 200
SOURCE_AE = "ORTHANC"


def api_settings(folder: Path, bundle: Path, **sections: Any) -> Settings:
    """Settings of a test node: storage in `folder`, the tiny bundle, two API users."""
    values: dict[str, Any] = {
        "storage": {"folder": folder, "min_free_bytes": 0},
        "inference": {"bundle": bundle, "device": "cpu"},
        "api": {
            "enabled": True,
            "port": 0,
            "max_message_chars": MAX_MESSAGE_CHARS,
            "users": {
                "jane": {
                    "token": JANE_TOKEN,
                    "display_name": "Doe^Jane",
                    "organization": "General Hospital",
                },
                # Configured by hash, as in production; may not sign.
                "bob": {
                    "token_sha256": _sha256(BOB_TOKEN),
                    "display_name": "Roe^Bob",
                    "organization": "General Hospital",
                    "may_sign": False,
                },
            },
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return load_settings(None, **values)


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def auth(token: str = JANE_TOKEN) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SeededStudy:
    """A study with one image in the spool and a drafted report (version 1)."""

    study_uid: str
    image: Dataset
    image_path: Path
    draft: Dataset


def seed_drafted_study(
    settings: Settings, db: Database, model: Any, source: Path, *, instances: int = 1
) -> SeededStudy:
    """Do what the node and the draft job do: spool the image, record it, store the draft.

    The image is a copy of `source` with new UIDs and the test patient; the draft SR is built
    from it with the model's finding probabilities (presence by the bundle's thresholds).
    """
    image = pydicom.dcmread(source)
    image.StudyInstanceUID = generate_uid()
    image.SeriesInstanceUID = generate_uid()
    image.SOPInstanceUID = generate_uid()
    image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
    image.PatientName = PATIENT_NAME
    image.PatientID = PATIENT_ID
    image.AccessionNumber = ACCESSION
    spool = Spool(settings.storage.spool_dir)
    relative = spool.relative_path(
        str(image.StudyInstanceUID), str(image.SeriesInstanceUID), str(image.SOPInstanceUID)
    )
    buffer = io.BytesIO()
    image.save_as(buffer, enforce_file_format=True)
    path = spool.write(relative, buffer.getvalue())
    db.record_instance(
        InstanceRecord(
            sop_instance_uid=str(image.SOPInstanceUID),
            study_instance_uid=str(image.StudyInstanceUID),
            series_instance_uid=str(image.SeriesInstanceUID),
            sop_class_uid=str(image.SOPClassUID),
            modality=str(image.Modality),
            body_part="CHEST",
            view_position="PA",
            accession_number=ACCESSION,
            patient_key=patient_key(PATIENT_ID, None),
            path=relative.as_posix(),
            size_bytes=path.stat().st_size,
            transfer_syntax_uid=str(image.file_meta.TransferSyntaxUID),
            calling_ae=SOURCE_AE,
            received_at=_now(),
        )
    )
    analysis = model.analyse([path])
    pathology = any(f.positive and f.label not in ("No Finding", "Support Devices")
                    for f in analysis.findings)
    records = []
    for finding in analysis.findings:
        present = finding.positive and not (finding.label == "No Finding" and pathology)
        records.append(
            FindingRecord(
                label=finding.label,
                presence="present" if present else "absent",
                probability=finding.probability,
                threshold=finding.threshold,
            )
        )
    report = Report(
        findings_text=DRAFT_FINDINGS,
        impression_text=DRAFT_IMPRESSION,
        indication="Cough and fever.",
        findings=tuple(
            Finding(r.label, Presence(r.presence), r.probability) for r in records
        ),
        language="en",
    )
    header = copy.deepcopy(image)
    del header.PixelData
    draft = build_draft_sr([header], report, AlgorithmInfo(model.name, model.version))
    store_report_version(
        db,
        settings.storage.reports_dir,
        draft,
        kind=ReportKind.DRAFT,
        findings_text=report.findings_text,
        impression_text=report.impression_text,
        findings=records,
        based_on=None,
        indication=report.indication,
        model_name=model.name,
        model_version=model.version,
    )
    return SeededStudy(str(image.StudyInstanceUID), image, path, draft)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def state_counts(db: Database) -> dict[str, int]:
    """Rows of the dialog and report state (the audit log is counted separately)."""
    counts = {}
    with db.session() as session:
        for name, model in (
            ("messages", DialogMessage),
            ("proposals", Proposal),
            ("versions", ReportVersion),
            ("outbox", OutboxItem),
        ):
            counts[name] = int(session.scalar(select(func.count()).select_from(model)) or 0)
        counts["open_proposals"] = int(
            session.scalar(
                select(func.count()).select_from(Proposal).where(Proposal.status == "open")
            )
            or 0
        )
    return counts


def audit_rows(db: Database) -> list[AuditEvent]:
    """Every audit event, oldest first."""
    with db.session() as session:
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        for row in rows:
            session.expunge(row)
        return rows


# --------------------------------------------------------------------------- validators
_TOOL_PACKAGES = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk"}


def validate_sr_file(path: Path) -> str:
    """Run dciodvfy and dsrdump on an SR file; returns dsrdump's output.

    Raises ``AssertionError`` naming the output when either reports an error, and
    ``RuntimeError`` naming the package when a tool is missing.
    """
    tools = {}
    for name, package in _TOOL_PACKAGES.items():
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} is not installed; apt-get install {package}")
        tools[name] = found
    dciodvfy = subprocess.run(
        [tools["dciodvfy"], str(path)], capture_output=True, text=True, errors="replace",
        timeout=60,
    )
    output = dciodvfy.stdout + dciodvfy.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert dciodvfy.returncode == 0 and not errors, output
    dsrdump = subprocess.run(
        [tools["dsrdump"], "+Pc", str(path)], capture_output=True, text=True, errors="replace",
        timeout=60,
    )
    dump = dsrdump.stdout + dsrdump.stderr
    assert dsrdump.returncode == 0, dump
    assert not [line for line in dump.splitlines() if line.startswith(("E:", "F:"))], dump
    return dump


# --------------------------------------------------------------------------- Orthanc
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_bind_shim(folder: Path) -> Path:
    """Compile tests/node/bind_loopback.c (wildcard bind() -> 127.0.0.1) into `folder`."""
    source = Path(__file__).parents[1] / "node" / "bind_loopback.c"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError(
            "a C compiler is needed for the loopback bind() shim; apt-get install gcc"
        )
    library = folder / "bind_loopback.so"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True, text=True, timeout=60,
    )
    if built.returncode != 0:
        raise RuntimeError(f"cannot build the bind() shim: {built.stderr}")
    return library


@dataclass
class Orthanc:
    """An Orthanc started by a test: the PACS that receives the SRs."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def upload(self, dataset: Dataset) -> None:
        """Store a data set through the REST API (the study's images come from the PACS)."""
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        stored = httpx.post(f"{self.url}/instances", content=buffer.getvalue(), timeout=30)
        stored.raise_for_status()

    def srs_of_study(self, study_uid: str) -> list[Dataset]:
        """The SR instances Orthanc holds in a study, oldest content first."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
            timeout=30,
        )
        found.raise_for_status()
        datasets = []
        for instance_id in found.json():
            data = httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=30)
            data.raise_for_status()
            datasets.append(pydicom.dcmread(io.BytesIO(data.content)))
        return sorted(datasets, key=lambda ds: (str(ds.ContentDate), str(ds.ContentTime)))

    def wait_for_srs(self, study_uid: str, count: int, timeout: float = 30.0) -> list[Dataset]:
        """Poll until the study holds `count` SRs (delivery runs in a background thread)."""
        deadline = time.monotonic() + timeout
        while True:
            srs = self.srs_of_study(study_uid)
            if len(srs) >= count or time.monotonic() > deadline:
                return srs
            time.sleep(0.1)  # polling interval, not a synchronisation delay

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """Series of the study: Orthanc's MainDicomTags per series."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=30,
        )
        found.raise_for_status()
        return [series["MainDicomTags"] for series in found.json()]


def start_orthanc(folder: Path, shim: Path) -> Orthanc:
    """Start Orthanc on two free loopback ports (bind() shim, Nagle off); waits for REST."""
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(executable).is_file():
        raise RuntimeError("Orthanc is not installed; apt-get install orthanc")
    http_port, dicom_port = free_port(), free_port()
    storage = folder / "db"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "dicom-node-api-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    env = dict(os.environ, TCP_NODELAY="1", LD_PRELOAD=str(shim))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [executable, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    orthanc = Orthanc(process, http_port, dicom_port)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with code {process.returncode}: "
                f"{(folder / 'orthanc.log').read_text(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(f"{orthanc.url}/system", timeout=1).status_code == 200:
                return orthanc
        except httpx.TransportError:
            pass  # not listening yet: poll again until the deadline
        if time.monotonic() > deadline:
            stop_orthanc(orthanc)
            raise RuntimeError("Orthanc did not answer on its REST port within 30 s")
        time.sleep(0.05)  # polling interval, not a synchronisation delay


def stop_orthanc(orthanc: Orthanc) -> None:
    """Stop Orthanc (SIGTERM, then SIGKILL after 15 s)."""
    if orthanc.process.poll() is None:
        orthanc.process.terminate()
        try:
            orthanc.process.wait(15)
        except subprocess.TimeoutExpired:
            orthanc.process.kill()
            orthanc.process.wait()


def predecessor_uids(sr: Dataset) -> list[str]:
    """SOP Instance UIDs named by an SR's Predecessor Documents Sequence."""
    uids: list[str] = []
    for study in sr.get("PredecessorDocumentsSequence", []):
        for series in study.ReferencedSeriesSequence:
            for item in series.ReferencedSOPSequence:
                uids.append(str(item.ReferencedSOPInstanceUID))
    return uids


def all_text(records: Sequence[Any]) -> str:
    """Every logged message and argument, as one string."""
    return "\n".join(record.getMessage() for record in records)


@dataclass
class ApiUnderTest:
    """The app with a drafted study."""

    client: TestClient
    settings: Settings
    db: Database
    service: DialogService
    study: SeededStudy

    def path(self, suffix: str = "", study_uid: str | None = None) -> str:
        return f"/api/studies/{study_uid or self.study.study_uid}{suffix}"
