"""SR delivery against real storage SCPs: pynetdicom in-process and DCMTK's storescp.

The PACS of most tests is a pynetdicom storage SCP on 127.0.0.1 whose answer statuses the
test chooses; DCMTK's storescp (kept on loopback by the bind() shim) is the second
destination of the multi-destination test. Times passed as ``now`` drive the backoff; the
sends themselves are real.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from nodehelpers import T0, make_draft_sr, node_settings, record
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from support.peers import free_port, stop_process, wait_for_port
from typer.testing import CliRunner

from dicom_node.dicom.dimse import StoreResponseStatus
from dicom_node.pipeline.delivery import (
    DeliveryOutcome,
    deliver_due,
    deliver_items,
    delivery_state,
    enqueue_sr,
    outbox_path,
    retry_delay,
)
from dicom_node.settings import DeliverySettings, Settings
from dicom_node.store import Database, OutboxItem, OutboxState

pytestmark = pytest.mark.network

PACS_AE = "PACS"


@dataclass
class Pacs:
    """A pynetdicom storage SCP answering with the statuses in `answers`, then success."""

    answers: list[int] = field(default_factory=list)
    ae_title: str = PACS_AE
    require_called_ae: bool = False
    ssl_context: ssl.SSLContext | None = None
    received: list[Dataset] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    server: ThreadedAssociationServer | None = None

    def handle_store(self, event: Event) -> int:
        self.requests += 1
        status = self.answers.pop(0) if self.answers else StoreResponseStatus.SUCCESS
        if status == StoreResponseStatus.SUCCESS:
            self.received.append(event.dataset)
        return int(status)

    def start(self) -> int:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_ae
        ae.add_supported_context(
            ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, ssl_context=self.ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store)],
        )
        self.port = int(self.server.server_address[1])
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def start_pacs() -> Iterator[Callable[..., Pacs]]:
    """Factory: ``start_pacs(**Pacs fields)`` starts a storage SCP; every one stops after."""
    started: list[Pacs] = []

    def start(**fields: Any) -> Pacs:
        pacs = Pacs(**fields)
        pacs.start()
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


def settings_for(folder: Path, ports: dict[str, int], **sections: Any) -> Settings:
    pacs = {
        name: {"ae_title": PACS_AE, "host": "127.0.0.1", "port": port}
        for name, port in ports.items()
    }
    return node_settings(
        folder, pacs=pacs, delivery={"timeout_s": 5, **sections.pop("delivery", {})}, **sections
    )


@pytest.fixture
def node_folder(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def db(node_folder: Path) -> Iterator[Database]:
    database = Database(node_settings(node_folder).database_url)
    database.create_all()
    yield database
    database.dispose()


@pytest.fixture
def draft_sr(cr_header: Dataset, db: Database) -> Dataset:
    """A draft SR of the chest CR, whose study the node has recorded."""
    sr = make_draft_sr(cr_header)
    db.record_instance(record(str(cr_header.SOPInstanceUID), study=str(sr.StudyInstanceUID)))
    return sr


def rows(db: Database) -> list[OutboxItem]:
    with db.session() as session:
        return list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def test_pacs_down_keeps_the_sr_pending_until_it_is_back(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pacs = start_pacs()
    pacs.stop()  # down: nothing listens on its port
    settings = settings_for(node_folder, {"main": pacs.port})
    outbox = settings.storage.outbox_dir
    (row_id,) = enqueue_sr(db, outbox, draft_sr, ["main"], now=T0)
    sr_file = outbox / outbox_path(str(draft_sr.SOPInstanceUID))
    assert pydicom.dcmread(sr_file).SOPInstanceUID == draft_sr.SOPInstanceUID

    (failed,) = deliver_due(settings, db, T0).results
    assert failed.outcome is DeliveryOutcome.RETRY and failed.outbox_id == row_id
    (row,) = rows(db)
    assert (row.state, row.attempts) == (OutboxState.PENDING, 1)
    assert row.next_attempt_at == T0 + timedelta(seconds=5)
    assert row.last_error is not None and "cannot be reached" in row.last_error
    assert sr_file.exists()
    assert deliver_due(settings, db, T0 + timedelta(seconds=4)).results == (), "not due yet"

    pacs.start()  # back, on the same port
    (sent,) = deliver_due(settings, db, T0 + timedelta(seconds=5)).results

    assert sent.outcome is DeliveryOutcome.SENT
    (received,) = pacs.received
    assert received.SOPInstanceUID == draft_sr.SOPInstanceUID
    assert received.SOPClassUID == ComprehensiveSRStorage
    (row,) = rows(db)
    assert (row.state, row.attempts, row.last_error) == (OutboxState.SENT, 2, None)
    assert not sr_file.exists(), "a delivered SR leaves the outbox"
    state = delivery_state(db, T0 + timedelta(seconds=5))
    assert state.counts == {"pending": 0, "sending": 0, "sent": 1, "failed": 0}
    assert state.oldest_undelivered_at is None

    # dicom_node status shows the outbox and the delivery summary.
    from dicom_node.cli import app

    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    result = CliRunner().invoke(
        app, ["status", "--json"],
        env={"DICOM_NODE_STORAGE__FOLDER": str(node_folder)},
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["delivery"]["counts"]["sent"] == 1
    assert payload["outbox"][0]["state"] == "sent"


@pytest.mark.parametrize(
    "status",
    [StoreResponseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, StoreResponseStatus.CANNOT_UNDERSTAND],
)
def test_refused_data_is_failed_and_not_retried(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path,
    status: StoreResponseStatus,
) -> None:
    pacs = start_pacs(answers=[status])
    settings = settings_for(node_folder, {"main": pacs.port})
    enqueue_sr(db, settings.storage.outbox_dir, draft_sr, ["main"], now=T0)

    (result,) = deliver_due(settings, db, T0).results

    assert result.outcome is DeliveryOutcome.FAILED and result.next_attempt_at is None
    (row,) = rows(db)
    assert row.state is OutboxState.FAILED and row.next_attempt_at is None
    assert row.last_error is not None and f"0x{int(status):04X}" in row.last_error
    assert deliver_due(settings, db, T0 + timedelta(days=1)).results == ()
    assert pacs.requests == 1 and pacs.received == []
    assert (settings.storage.outbox_dir / row.sr_path).exists(), "kept for the operator"


def test_out_of_resources_backs_off_exponentially_until_stored(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path
) -> None:
    full = StoreResponseStatus.OUT_OF_RESOURCES
    pacs = start_pacs(answers=[full, full])
    settings = settings_for(node_folder, {"main": pacs.port})
    (row_id,) = enqueue_sr(db, settings.storage.outbox_dir, draft_sr, ["main"], now=T0)

    first = deliver_items(settings, db, [row_id], T0)
    assert first.next_attempt_at == T0 + timedelta(seconds=5)
    second_at = T0 + timedelta(seconds=5)
    second = deliver_items(settings, db, [row_id], second_at)
    assert second.next_attempt_at == second_at + timedelta(seconds=10)
    assert second.count(DeliveryOutcome.RETRY) == 1
    assert "0xA700" in str(rows(db)[0].last_error)
    third = deliver_items(settings, db, [row_id], second_at + timedelta(seconds=10))

    assert third.count(DeliveryOutcome.SENT) == 1 and len(pacs.received) == 1
    assert rows(db)[0].attempts == 3


def test_a_rejected_association_is_retried(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path
) -> None:
    pacs = start_pacs(ae_title="OTHERPACS", require_called_ae=True)
    settings = settings_for(node_folder, {"main": pacs.port})
    enqueue_sr(db, settings.storage.outbox_dir, draft_sr, ["main"], now=T0)

    (result,) = deliver_due(settings, db, T0).results

    assert result.outcome is DeliveryOutcome.RETRY
    assert result.error is not None and "rejected the association" in result.error


def test_two_destinations_and_dcmtk_storescp(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path,
    dcmtk: dict[str, str], loopback_preload: dict[str, str], tmp_path: Path,
) -> None:
    pacs = start_pacs()
    archive_port = free_port()
    settings = settings_for(node_folder, {"main": pacs.port, "archive": archive_port})
    outbox = settings.storage.outbox_dir
    ids = enqueue_sr(db, outbox, draft_sr, ["main", "archive"], now=T0)
    assert enqueue_sr(db, outbox, draft_sr, ["archive", "main"], now=T0) == ids[::-1]
    sr_file = outbox / outbox_path(str(draft_sr.SOPInstanceUID))

    first = deliver_due(settings, db, T0)
    assert {(r.destination, r.outcome) for r in first.results} == {
        ("main", DeliveryOutcome.SENT), ("archive", DeliveryOutcome.RETRY),
    }
    assert sr_file.exists(), "kept until every destination has it"

    received = tmp_path / "storescp"
    received.mkdir()
    storescp = subprocess.Popen(
        [dcmtk["storescp"], "-aet", PACS_AE, "-od", str(received), "-fe", ".dcm",
         str(archive_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=loopback_preload,
    )
    try:
        wait_for_port(archive_port, storescp)
        (second,) = deliver_due(settings, db, T0 + timedelta(seconds=5)).results
    finally:
        stop_process(storescp)

    assert (second.destination, second.outcome) == ("archive", DeliveryOutcome.SENT)
    (stored,) = received.glob("*.dcm")
    assert pydicom.dcmread(stored).SOPInstanceUID == draft_sr.SOPInstanceUID
    assert not sr_file.exists()
    assert [row.state for row in rows(db)] == [OutboxState.SENT, OutboxState.SENT]


def test_tls_destination(
    start_pacs: Callable[..., Pacs], db: Database, draft_sr: Dataset, node_folder: Path,
    tmp_path: Path,
) -> None:
    from dicom_node.dicom.tls import server_context
    from dicom_node.settings import TlsSettings

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    pacs = start_pacs(
        ssl_context=server_context(TlsSettings(enabled=True, cert=cert, key=key))
    )
    settings = node_settings(
        node_folder,
        pacs={"secure": {"ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs.port,
                         "tls": True}},
        tls={"cert": cert, "key": key, "ca": cert},
    )
    enqueue_sr(db, settings.storage.outbox_dir, draft_sr, ["secure"], now=T0)

    (result,) = deliver_due(settings, db, T0).results

    assert result.outcome is DeliveryOutcome.SENT, result.error
    assert len(pacs.received) == 1


def test_unknown_destination_and_missing_file_fail_permanently(
    db: Database, draft_sr: Dataset, node_folder: Path
) -> None:
    settings = settings_for(node_folder, {})
    outbox = settings.storage.outbox_dir
    (gone,) = enqueue_sr(db, outbox, draft_sr, ["removed"], now=T0)

    (result,) = deliver_due(settings, db, T0).results

    assert result.outcome is DeliveryOutcome.FAILED
    assert result.error == "unknown PACS destination 'removed'"
    assert rows(db)[0].id == gone
    assert enqueue_sr(db, outbox, draft_sr, [], now=T0) == []


def test_outbox_claims_and_stale_claims_on_both_databases(
    database: Database, cr_header: Dataset, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path / "node", {"main": free_port()})
    database.record_instance(record("1.2.3.1", study=str(cr_header.StudyInstanceUID)))
    sr = make_draft_sr(cr_header)
    (row_id,) = enqueue_sr(database, settings.storage.outbox_dir, sr, ["main"], now=T0)
    assert delivery_state(database, T0).due == 1

    # A sender that died while sending: its claim expires after delivery.claim_timeout_s.
    with database.session() as session:
        row = session.get_one(OutboxItem, row_id)
        row.state, row.updated_at = OutboxState.SENDING, T0
    timeout = settings.delivery.claim_timeout_s
    assert deliver_due(settings, database, T0 + timedelta(seconds=timeout - 1)).results == ()
    late = T0 + timedelta(seconds=timeout + 1)
    (result,) = deliver_due(settings, database, late).results

    assert result.outcome is DeliveryOutcome.RETRY  # nothing listens on the PACS port
    state = delivery_state(database, late)
    assert state.counts["pending"] == 1 and state.due == 0 and state.max_attempts == 1
    assert state.next_attempt_at == late + timedelta(seconds=5)
    assert state.oldest_undelivered_at == T0
    assert json.loads(json.dumps(state.to_json()))["next_attempt_at"].startswith("2025-03-01")


def test_retry_delay_doubles_up_to_the_maximum() -> None:
    delivery = DeliverySettings(retry_base_s=5, retry_max_s=600)
    delays = [retry_delay(attempt, delivery) for attempt in range(1, 10)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert retry_delay(10_000, delivery) == 600
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(0, delivery)
