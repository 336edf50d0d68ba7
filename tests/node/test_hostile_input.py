"""Hostile and broken input at the node's door (issue 17): every case gets an answer that
says why, nothing hangs, and the node keeps serving afterwards.

Each test sends real DICOM over the network (pynetdicom and DCMTK peers on loopback) to a
running SCP and checks the status the peer sees, what the node kept, and a C-ECHO after it.
"""

from __future__ import annotations

import copy
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from nodehelpers import SCU_AE, RunningNode, instance_rows, new_instance
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.dicom.dimse import StoreStatus

pytestmark = pytest.mark.network


def _echo_from(node: RunningNode, address: str) -> bool:
    """A C-ECHO from ``address`` (a loopback address of this host)."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    ae.network_timeout = 10
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title,
                         bind_address=(address, 0))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _idle_socket(node: RunningNode, address: str) -> socket.socket:
    sock = socket.create_connection((node.host, node.port), timeout=5,
                                    source_address=(address, 0))
    return sock


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_sockets_of_one_host_neither_block_the_port_nor_outlive_the_timeout(
    start_node: Callable[..., RunningNode],
) -> None:
    node = start_node(node={"max_associations": 4, "max_connections_per_peer": 3,
                            "first_pdu_timeout": 1.5, "acse_timeout": 30})
    idle = [_idle_socket(node, "127.0.0.2") for _ in range(12)]
    try:
        # the host gets its three connections; every further one is closed at once
        refused = [sock for sock in idle[3:] if _closed_by_peer(sock, 2.0)]
        assert len(refused) == 9
        # while the three are open, another host's C-ECHO gets an association
        assert _echo_from(node, "127.0.0.1")
        started = time.monotonic()
        assert all(_closed_by_peer(sock, 5.0) for sock in idle[:3])
        assert time.monotonic() - started < 4.0  # first_pdu_timeout, not acse_timeout
        # once they are gone, the host may connect again
        assert _echo_from(node, "127.0.0.2")
    finally:
        for sock in idle:
            sock.close()


def test_a_peer_that_reconnects_idly_cannot_starve_other_peers(
    start_node: Callable[..., RunningNode],
) -> None:
    node = start_node(node={"max_associations": 2, "max_connections_per_peer": 2,
                            "first_pdu_timeout": 1.0})
    opened: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 3.0
        echoes = 0
        while time.monotonic() < deadline:  # keep two idle sockets open all the time
            opened = [s for s in opened if not _closed_by_peer(s, 0.01)]
            while len(opened) < 4:
                opened.append(_idle_socket(node, "127.0.0.3"))
            echoes += _echo_from(node, "127.0.0.1")
        assert echoes >= 3
    finally:
        for sock in opened:
            sock.close()




# --------------------------------------------------------------------------- at the door
def _raw_file(tmp_path: Path, ds: Dataset, name: str, syntax: str = ExplicitVRLittleEndian,
              **raw_values: str) -> Path:
    """``ds`` written as it is, with the given attributes set to raw text no validation
    would let through (the file a broken modality or a hostile peer sends)."""
    ds = copy.deepcopy(ds)
    for keyword, text in raw_values.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None, keyword
        value = text.encode("ascii") + (b" " if len(text) % 2 else b"")
        ds.add(RawDataElement(pydicom.tag.Tag(tag), pydicom.datadict.dictionary_VR(tag),
                              len(value), value, 0, False, True))
    ds.file_meta.TransferSyntaxUID = syntax
    target = tmp_path / f"{name}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values it writes as they are
        ds.save_as(target, enforce_file_format=True)
    return target


@pytest.mark.parametrize(
    ("case", "raw_values", "says"),
    [
        ("frames", {"NumberOfFrames": "abc"}, "NumberOfFrames is not a positive integer"),
        ("slope", {"RescaleSlope": "abc"}, "RescaleSlope is not a decimal number"),
        ("window", {"WindowCenter": "x1y2"}, "WindowCenter is not a decimal number"),
        ("birth-date", {"PatientBirthDate": "1940-03-05"},
         "PatientBirthDate is not a DICOM date"),
        ("study-time", {"StudyTime": "25h"}, "StudyTime is not a DICOM time"),
    ],
)
def test_header_values_the_node_cannot_use_are_refused_with_the_attribute_named(
    start_node: Callable[..., RunningNode], scu_store: Callable[..., int],
    echo_ok: Callable[[RunningNode], bool], cr_header: Dataset, tmp_path: Path,
    case: str, raw_values: dict[str, str], says: str, caplog: pytest.LogCaptureFixture,
) -> None:
    node = start_node()
    bad = _raw_file(tmp_path, new_instance(cr_header), case, **raw_values)
    status, comment = _store_with_comment(node, bad)
    assert status == StoreStatus.UNUSABLE_IMAGE
    assert says in comment
    for value in raw_values.values():
        assert value not in comment and value not in caplog.text
    assert node.spool_files() == [] and instance_rows(node) == []
    assert echo_ok(node)


def test_pixel_data_shorter_than_its_header_claims_is_refused(
    start_node: Callable[..., RunningNode], echo_ok: Callable[[RunningNode], bool],
    cr_header: Dataset, tmp_path: Path,
) -> None:
    node = start_node()
    short = new_instance(cr_header)
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    status, comment = _store_with_comment(node, _raw_file(tmp_path, short, "short"))
    assert status == StoreStatus.UNUSABLE_IMAGE
    assert comment == "Pixel Data 1024 bytes, header needs 2048"
    assert instance_rows(node) == [] and echo_ok(node)


def test_a_small_jpeg2000_that_claims_65535_squared_pixels_is_refused_before_decoding(
    start_node: Callable[..., RunningNode], echo_ok: Callable[[RunningNode], bool],
    rg1_j2kr: Path, tmp_path: Path,
) -> None:
    node = start_node()
    claim = pydicom.dcmread(rg1_j2kr)
    claim.SOPInstanceUID = generate_uid()
    claim.file_meta.MediaStorageSOPInstanceUID = claim.SOPInstanceUID
    claim.Rows = claim.Columns = 65535
    path = tmp_path / "claim.dcm"
    claim.save_as(path)
    status, comment = _store_with_comment(node, path)
    assert status == StoreStatus.TOO_LARGE
    assert comment == "pixel data 8589672450 bytes > limit 134217728"
    assert instance_rows(node) == [] and echo_ok(node)


def test_a_deflate_bomb_is_refused_without_inflating_it_whole(
    start_node: Callable[..., RunningNode], echo_ok: Callable[[RunningNode], bool],
    cr_header: Dataset, tmp_path: Path,
) -> None:
    node = start_node(node={"max_instance_bytes": 4 * 2**20})
    bomb = new_instance(cr_header)
    bomb.Rows, bomb.Columns = 2048, 2048  # 8 MiB of zeros: about 8 KB deflated
    bomb.PixelData = bytes(2048 * 2048 * 2)
    bomb["PixelData"].VR = "OW"
    path = _raw_file(tmp_path, bomb, "bomb", syntax=DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 64 * 1024
    status, comment = _store_with_comment(node, path)
    assert status == StoreStatus.TOO_LARGE
    assert comment == "data set larger than limit 4194304 bytes"
    assert instance_rows(node) == [] and echo_ok(node)


def test_a_c_store_over_the_verification_context_is_refused(
    start_node: Callable[..., RunningNode], cr_header: Dataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = start_node()
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        (verification,) = assoc.accepted_contexts
        monkeypatch.setattr(assoc, "_get_valid_context", lambda *a, **k: verification)
        status = assoc.send_c_store(new_instance(cr_header))
    finally:
        assoc.release()
    assert int(status.Status) == StoreStatus.SOP_CLASS_NOT_SUPPORTED
    assert str(status.ErrorComment) == "C-STORE over the context of 1.2.840.10008.1.1"
    assert instance_rows(node) == []


def _store_with_comment(node: RunningNode, path: Path) -> tuple[int, str]:
    """Send a file as its bytes (undecoded); the status and its Error Comment."""
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def test_a_corrected_resend_replaces_the_stored_copy_and_supersedes_the_job(
    start_node: Callable[..., RunningNode], scu_store: Callable[..., int],
    cr_header: Dataset,
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from dicom_node.pipeline.assembly import assemble
    from dicom_node.store import Job

    node = start_node()
    first = new_instance(cr_header, WindowCenter="100", WindowWidth="50")  # a bad window
    assert scu_store(node, first) == StoreStatus.SUCCESS
    (job_id,) = assemble(node.db, 0.0, datetime.now(UTC) + timedelta(seconds=1)).jobs_created
    same = copy.deepcopy(first)
    assert scu_store(node, same) == StoreStatus.SUCCESS  # the same bytes: nothing changes
    assert assemble(node.db, 0.0, datetime.now(UTC) + timedelta(seconds=1)).jobs_created == []
    corrected = copy.deepcopy(first)
    corrected.WindowCenter, corrected.WindowWidth = "2048", "4096"
    assert scu_store(node, corrected) == StoreStatus.SUCCESS
    (path,) = node.spool_files()
    assert pydicom.dcmread(path).WindowCenter == 2048  # the corrected copy is kept
    (row,) = instance_rows(node)
    (newer,) = assemble(node.db, 0.0, datetime.now(UTC) + timedelta(seconds=1)).jobs_created
    assert newer > job_id
    with node.db.session() as session:
        assert len(session.scalars(select(Job)).all()) == 2


def test_the_same_instance_uid_in_another_study_is_refused(
    start_node: Callable[..., RunningNode], cr_header: Dataset, tmp_path: Path,
) -> None:
    node = start_node()
    first = new_instance(cr_header)
    path = tmp_path / "first.dcm"
    first.save_as(path)
    assert _store_with_comment(node, path)[0] == StoreStatus.SUCCESS
    moved = copy.deepcopy(first)
    moved.StudyInstanceUID = generate_uid()
    moved.save_as(path)
    status, comment = _store_with_comment(node, path)
    assert status == StoreStatus.INVALID_IDENTIFIER
    assert comment == "SOPInstanceUID already stored in another study"
