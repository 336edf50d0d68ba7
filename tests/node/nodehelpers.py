"""Helpers shared by the node tests: test data sets, raw files and the running node."""

from __future__ import annotations

import copy
import struct
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select

from dicom_node.dicom.scp import StoreSCP
from dicom_node.settings import Settings, load_settings
from dicom_node.store import Database, Instance, InstanceRecord
from dicom_node.store.spool import Spool

#: The DICOM peers' AE title in the tests.
SCU_AE = "STORESCU"
#: A fixed arrival time for database tests.
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def new_instance(source: Dataset, **changes: Any) -> Dataset:
    """A copy of `source` as a new SOP instance, with attributes changed by keyword.

    A change to ``None`` removes the attribute.
    """
    ds = copy.deepcopy(source)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its file meta information (the data set as sent)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM file"
    # (0002,0000) UL group length: tag (4) + VR (2) + length (2) + value (4) at offset 132.
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


#: Tag of Data Set Trailing Padding (FFFC,FFFC) as encoded in little endian.
TRAILING_PADDING_TAG = b"\xfc\xff\xfc\xff"


def sent_dataset_bytes(path: Path) -> bytes:
    """The data set of a file as DCMTK's storescu sends it: without trailing padding.

    storescu drops Data Set Trailing Padding (FFFC,FFFC), the last element when present
    (RG1_UNCR.dcm has one); every other byte goes over the wire unchanged.
    """
    data = dataset_bytes(path)
    cut = data.rfind(TRAILING_PADDING_TAG)
    return data[:cut] if cut >= 0 and pydicom.dcmread(path).get((0xFFFC, 0xFFFC)) else data


def raw_dicom_file(path: Path, sop_class_uid: str, sop_instance_uid: str, body: bytes) -> Path:
    """Write a file with valid file meta information and an arbitrary data set `body`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue() + body)
    return path


@dataclass
class RunningNode:
    """A node started by :func:`start_node`."""

    host: str
    port: int
    settings: Settings
    spool: Spool
    db: Database
    scp: StoreSCP

    @property
    def ae_title(self) -> str:
        return self.settings.node.ae_title

    def spool_files(self) -> list[Path]:
        return sorted(self.spool.root.rglob("*.dcm"))


def instance_rows(node: RunningNode) -> list[Instance]:
    """The node's instance rows."""
    with node.db.session() as session:
        return list(session.scalars(select(Instance)))


def node_settings(folder: Path, **overrides: Any) -> Settings:
    """Settings of a test node: 127.0.0.1, port 0, storage in `folder`, no free-space floor."""
    sections: dict[str, Any] = {
        "node": {"port": 0, "http_port": 0, "bind_address": "127.0.0.1", "stable_seconds": 0.0},
        "storage": {"folder": folder, "min_free_bytes": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return load_settings(None, **sections)


def stop_node(node: RunningNode) -> None:
    """Stop a node before the test ends (restart tests); teardown tolerates it."""
    node.scp.stop()
    node.db.dispose()


def record(sop: str, study: str = "1.2.3", at: datetime = T0, **changes: object) -> InstanceRecord:
    """An instance record of a chest PA CR."""
    base = InstanceRecord(
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        accession_number=None,
        patient_key="k" * 64,
        path=f"{sop}.dcm",
        size_bytes=100,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae="ORTHANC",
        received_at=at,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run_storescu(
    dcmtk: dict[str, str],
    env: dict[str, str],
    node: RunningNode | tuple[str, int, str],
    *files: Path,
    calling_ae: str = SCU_AE,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu: one association for all files, only the contexts they need (-R).

    `node` is a :class:`RunningNode` or ``(host, port, called AE title)``.
    """
    host, port, called = (
        (node.host, node.port, node.ae_title) if isinstance(node, RunningNode) else node
    )
    return subprocess.run(
        [dcmtk["storescu"], "-R", *extra, "-aet", calling_ae, "-aec", called,
         host, str(port), *map(str, files)],
        capture_output=True, text=True, timeout=60, env=env,
    )


def make_draft_sr(header: Dataset) -> Dataset:
    """A draft SR of the chest CR `header`: a normal report, every finding coded absent."""
    from sr_templates import AlgorithmInfo, Finding, Presence, Report, build_draft_sr
    from sr_templates.codes import CHEXPERT_LABELS

    report = Report(
        findings_text="No focal consolidation. No pleural effusion.",
        impression_text="No acute cardiopulmonary abnormality.",
        findings=tuple(
            Finding(label=label, presence=Presence.ABSENT, probability=0.01)
            for label in CHEXPERT_LABELS
        ),
        language="en",
        indication="Cough",
    )
    return build_draft_sr([header], report, AlgorithmInfo(name="cxr-vlm", version="test"))

