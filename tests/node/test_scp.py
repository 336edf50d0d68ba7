"""The C-STORE/C-ECHO SCP against real peers: DCMTK's echoscu/storescu and pynetdicom's SCU."""

from __future__ import annotations

import copy
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodehelpers import (
    SCU_AE,
    RunningNode,
    dataset_bytes,
    instance_rows,
    new_instance,
    raw_dicom_file,
    run_storescu,
    sent_dataset_bytes,
)
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_node.dicom.dimse import StoreStatus
from dicom_node.dicom.scp import file_meta_bytes
from dicom_node.store import Base, Study
from sr_templates import (
    CHEXPERT_LABELS,
    AlgorithmInfo,
    Finding,
    Presence,
    Report,
    build_draft_sr,
)

pytestmark = pytest.mark.network


def test_echo_with_dcmtk_echoscu(
    start_node: Callable[..., RunningNode], echo_ok: Callable[[RunningNode], bool]
) -> None:
    node = start_node()
    assert echo_ok(node)


def test_storescu_cr_lands_in_spool_and_database_byte_identical(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    rg1_uncr: Path,
) -> None:
    node = start_node()
    result = run_storescu(dcmtk, dcmtk_env, node, rg1_uncr)
    assert result.returncode == 0, result.stdout + result.stderr

    (stored,) = node.spool_files()
    assert dataset_bytes(stored) == sent_dataset_bytes(rg1_uncr)
    assert not list(node.spool.root.rglob(".tmp-*"))
    original = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    (row,) = instance_rows(node)
    assert row.sop_instance_uid == original.SOPInstanceUID
    assert node.spool.root / row.path == stored
    assert (row.modality, row.body_part, row.view_position) == ("CR", "CHEST", "PA")
    assert row.sop_class_uid == ComputedRadiographyImageStorage
    assert row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert row.calling_ae == SCU_AE
    assert row.size_bytes == stored.stat().st_size
    assert row.received_at.tzinfo is not None
    with node.db.session() as session:
        study = session.scalars(select(Study)).one()
        assert study.study_instance_uid == original.StudyInstanceUID
        assert study.instance_count == 1
        # Only a pseudonymous key of the patient is kept.
        assert study.patient_key and original.PatientID not in study.patient_key


def test_storescu_jpeg2000_is_stored_as_received(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    rg1_j2kr: Path,
) -> None:
    node = start_node()
    result = run_storescu(dcmtk, dcmtk_env, node, rg1_j2kr, extra=("-xv",))
    assert result.returncode == 0, result.stdout + result.stderr
    (stored,) = node.spool_files()
    (row,) = instance_rows(node)
    assert row.transfer_syntax_uid == JPEG2000Lossless
    # storescu re-encodes sequences of undefined length with explicit lengths, so the bytes
    # differ there; every element and the JPEG 2000 code stream arrive unchanged.
    received, original = pydicom.dcmread(stored), pydicom.dcmread(rg1_j2kr)
    assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert received.PixelData == original.PixelData
    assert received == original


def test_unknown_calling_ae_is_rejected(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    rg1_uncr: Path,
    echo_ok: Callable[[RunningNode], bool],
) -> None:
    node = start_node(calling_aes={SCU_AE: {}})
    echo = subprocess.run(
        [dcmtk["echoscu"], "-aet", "INTRUDER", "-aec", node.ae_title, node.host, str(node.port)],
        capture_output=True, text=True, timeout=30, env=dcmtk_env,
    )
    assert echo.returncode != 0
    assert "Calling AE Title Not Recognized" in echo.stdout + echo.stderr
    store = run_storescu(dcmtk, dcmtk_env, node, rg1_uncr, calling_ae="INTRUDER")
    assert store.returncode != 0
    assert node.spool_files() == [] and instance_rows(node) == []
    assert echo_ok(node), "the allowed AE must still get through"


def test_malformed_data_sets_get_failure_statuses_and_the_node_keeps_serving(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    echo_ok: Callable[[RunningNode], bool],
    cr_header: Dataset,
    tmp_path: Path,
) -> None:
    node = start_node()
    sop_uid = generate_uid()
    # 1. A data set without SOP Instance UID (the file meta names one, so the SCU sends it).
    header = copy.deepcopy(cr_header)
    del header.SOPInstanceUID
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, header)
    missing_uid = raw_dicom_file(
        tmp_path / "missing.dcm", ComputedRadiographyImageStorage, sop_uid, buffer.getvalue()
    )
    assert scu_store(node, missing_uid, raw=True) == StoreStatus.INVALID_IDENTIFIER
    # 2. Bytes that do not decode: a sequence of undefined length that never ends.
    corrupt_body = (
        struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", 4) + b"1.2\x00"
    )
    corrupt = raw_dicom_file(
        tmp_path / "corrupt.dcm", ComputedRadiographyImageStorage, sop_uid, corrupt_body
    )
    assert scu_store(node, corrupt, raw=True) == StoreStatus.CANNOT_DECODE
    # 3. A SOP class that contradicts the request.
    wrong_class = new_instance(cr_header)
    wrong_class.SOPClassUID = CTImageStorage
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, wrong_class)
    mismatch = raw_dicom_file(
        tmp_path / "mismatch.dcm", ComputedRadiographyImageStorage,
        wrong_class.SOPInstanceUID, buffer.getvalue(),
    )
    assert scu_store(node, mismatch, raw=True) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS

    assert node.spool_files() == [] and instance_rows(node) == []
    assert echo_ok(node)
    assert scu_store(node, new_instance(cr_header)) == StoreStatus.SUCCESS


def test_a_data_set_corrupt_after_its_pixel_data_is_refused(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    cr_header: Dataset,
    tmp_path: Path,
) -> None:
    # The whole structure is parsed, not only the header: a sequence of undefined length
    # that never ends, after valid pixel data, is still refused.
    node = start_node()
    header = new_instance(cr_header)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, header)
    body = (
        buffer.getvalue()
        + struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", 8) + b"\x00" * 8
        + struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", 4) + b"1.2\x00"
    )
    corrupt = raw_dicom_file(
        tmp_path / "tail.dcm", ComputedRadiographyImageStorage, header.SOPInstanceUID, body
    )
    assert scu_store(node, corrupt, raw=True) == StoreStatus.CANNOT_DECODE
    assert node.spool_files() == [] and instance_rows(node) == []


@pytest.mark.parametrize("max_pdu", [None, 0], ids=["default", "unlimited"])
def test_the_scp_announces_a_large_max_pdu_and_stores_what_arrives_in_large_pdus(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    rg1_uncr: Path,
    max_pdu: int | None,
) -> None:
    node = start_node() if max_pdu is None else start_node(node={"max_pdu": max_pdu})
    announced = node.settings.node.max_pdu
    if max_pdu is None:
        # Fewer, larger PDUs: pynetdicom's cost per PDU dominates small ones.
        assert announced >= 1024 * 1024
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        assert assoc.acceptor.maximum_length == announced
    finally:
        assoc.release()
    # A 7 MB image: several PDUs of up to the announced size (DCMTK caps its own).
    result = run_storescu(dcmtk, dcmtk_env, node, rg1_uncr)
    assert result.returncode == 0, result.stdout + result.stderr
    (stored,) = node.spool_files()
    assert dataset_bytes(stored) == sent_dataset_bytes(rg1_uncr)


def test_an_implicit_vr_data_set_is_stored_as_sent_behind_standard_file_meta(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    cr_header: Dataset,
) -> None:
    node = start_node()
    ds = new_instance(cr_header)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.set_original_encoding(True, True)
    assert scu_store(node, ds) == StoreStatus.SUCCESS
    (stored,) = node.spool_files()
    # The data set's bytes are those pynetdicom's SCU put on the wire, unchanged.
    sent = encode(ds, True, True)
    assert sent is not None and dataset_bytes(stored) == sent
    meta = pydicom.filereader.read_file_meta_info(stored)
    assert meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    received = pydicom.dcmread(stored)
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert received.PatientID == ds.PatientID
    (row,) = instance_rows(node)
    assert row.transfer_syntax_uid == ImplicitVRLittleEndian
    assert row.size_bytes == stored.stat().st_size


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3", "1.2.34", generate_uid()])
@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, JPEGLosslessSV1])
def test_file_meta_bytes_equal_pynetdicoms_encoding(
    sop_instance_uid: str, transfer_syntax: str
) -> None:
    # Odd and even UID lengths: UIs are padded with NUL, the version name with a space.
    expected = encode_file_meta(
        create_file_meta(
            sop_class_uid=ComputedRadiographyImageStorage,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax,
        )
    )
    encoded = file_meta_bytes(ComputedRadiographyImageStorage, sop_instance_uid, transfer_syntax)
    assert encoded == b"\x00" * 128 + b"DICM" + expected


def test_unsupported_sop_class_is_not_accepted(start_node: Callable[..., RunningNode]) -> None:
    node = start_node()
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    try:
        accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
        assert CTImageStorage not in accepted
        if assoc.is_established:
            with pytest.raises(ValueError, match="presentation context"):
                assoc.send_c_store(pydicom.dcmread(str(get_testdata_file("CT_small.dcm"))))
    finally:
        if assoc.is_established:
            assoc.release()
    assert node.spool_files() == []


def test_duplicate_instance_is_acknowledged_but_stored_once(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    rg1_uncr: Path,
    scu_store: Callable[..., int],
) -> None:
    node = start_node()
    first = run_storescu(dcmtk, dcmtk_env, node, rg1_uncr, rg1_uncr)
    assert first.returncode == 0, first.stdout + first.stderr
    assert scu_store(node, rg1_uncr) == StoreStatus.SUCCESS
    assert len(node.spool_files()) == 1
    assert len(instance_rows(node)) == 1
    with node.db.session() as session:
        assert session.scalar(select(func.sum(Study.instance_count))) == 1


def test_full_disk_refuses_with_out_of_resources_and_writes_nothing(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    echo_ok: Callable[[RunningNode], bool],
    cr_header: Dataset,
) -> None:
    node = start_node(storage={"min_free_bytes": 2**62})
    assert scu_store(node, new_instance(cr_header)) == StoreStatus.OUT_OF_RESOURCES
    assert list(node.spool.root.rglob("*")) == []
    assert instance_rows(node) == []
    assert echo_ok(node)


def _draft_sr(source: Dataset) -> Dataset:
    report = Report(
        findings_text="No focal consolidation. No pleural effusion.",
        impression_text="No acute cardiopulmonary abnormality.",
        findings=tuple(
            Finding(label=label, presence=Presence.ABSENT, probability=0.01)
            for label in CHEXPERT_LABELS
        ),
        language="en",
    )
    return build_draft_sr([source], report, AlgorithmInfo(name="cxr-vlm", version="test"))


def test_own_sr_is_acknowledged_but_ignored_while_foreign_srs_are_stored(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    cr_header: Dataset,
) -> None:
    node = start_node()
    own = _draft_sr(cr_header)
    assert scu_store(node, own) == StoreStatus.SUCCESS
    assert node.spool_files() == [] and instance_rows(node) == []

    foreign = pydicom.dcmread(str(get_testdata_file("test-SR.dcm")))
    assert scu_store(node, foreign) == StoreStatus.SUCCESS
    (row,) = instance_rows(node)
    assert row.sop_instance_uid == foreign.SOPInstanceUID and row.modality == "SR"


def test_tls_association(
    start_node: Callable[..., RunningNode],
    dcmtk: dict[str, str],
    dcmtk_env: dict[str, str],
    tmp_path: Path,
) -> None:
    from dicom_node.dicom.tls import server_context
    from dicom_node.settings import TlsSettings

    openssl = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        capture_output=True, text=True, timeout=60,
    )
    assert openssl.returncode == 0, openssl.stderr
    tls = TlsSettings(enabled=True, cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    node = start_node(ssl_context=server_context(tls))
    base = [dcmtk["echoscu"], "-to", "10", "-aet", SCU_AE, "-aec", node.ae_title]
    address = [node.host, str(node.port)]
    secure = subprocess.run(
        [*base, "+tla", "+cf", str(tmp_path / "cert.pem"), *address],
        capture_output=True, text=True, timeout=30, env=dcmtk_env,
    )
    assert secure.returncode == 0, secure.stdout + secure.stderr
    plain = subprocess.run(
        [*base, *address], capture_output=True, text=True, timeout=30, env=dcmtk_env
    )
    assert plain.returncode != 0


def test_a_database_failure_answers_processing_failure_and_leaves_no_file(
    start_node: Callable[..., RunningNode],
    scu_store: Callable[..., int],
    echo_ok: Callable[[RunningNode], bool],
    cr_header: Dataset,
) -> None:
    node = start_node()
    # Every table but ``instances`` (the duplicate check still reads it), dependents first.
    with node.db.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "instances":
                table.drop(connection)
    # The instance is written to the spool, then recording it fails: the file goes again.
    assert scu_store(node, new_instance(cr_header)) == StoreStatus.PROCESSING_FAILURE
    assert node.spool_files() == []
    assert echo_ok(node)
