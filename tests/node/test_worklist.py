"""The RIS worklist client against a real RIS: DCMTK's wlmscpfs with items made by dump2dcm.

wlmscpfs listens on 0.0.0.0 and has no option to change it; it runs with the loopback bind()
shim (``loopback_preload``), so it is reachable on 127.0.0.1 only. Each test starts its own
wlmscpfs on a free port, in single-process mode, and the fixture terminates it. ``-dfr``
keeps items without a Requested Procedure Description (wlmscpfs ignores them as incomplete
by default), as real RIS entries with an admitting diagnosis only need it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nodehelpers import node_settings
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from support.peers import free_port, stop_process, wait_for_port

from dicom_node._privacy import patient_key
from dicom_node.dicom.dimse import FindStatus
from dicom_node.dicom.worklist import (
    MatchedBy,
    StudyKeys,
    WorklistItem,
    choose_indication,
    lookup_on_demand,
    match_worklist,
    refresh_worklist,
    resolve_worklist,
    store_items,
)
from dicom_node.errors import RisUnavailableError, WorklistError, WorklistQueryError
from dicom_node.settings import Settings
from dicom_node.store import Database, IndicationSource, WorklistEntry
from sr_templates import WorklistInfo

pytestmark = pytest.mark.network

RIS_AE = "RIS"
STATION = "CXRROOM1"
NOW = datetime.now(UTC)
TODAY = NOW.astimezone().date()


@dataclass(frozen=True)
class Order:
    """One worklist item of the test RIS (patient data included: it must never leak)."""

    accession: str
    patient_name: str
    patient_id: str
    reason: str | None = None
    procedure: str | None = None
    admitting: str | None = None
    modality: str = "CR"
    days_ago: int = 0
    study_uid: str = ""

    def dump(self) -> str:
        """The item in dump2dcm's text format."""
        lines = [
            f"(0008,0050) SH [{self.accession}]",
            "(0008,0090) PN [Referring^Doctor]",
            f"(0010,0010) PN [{self.patient_name}]",
            f"(0010,0020) LO [{self.patient_id}]",
            f"(0020,000d) UI [{self.study_uid}]",
            "(0032,1032) PN [Requesting^Doctor]",
            "(0040,0100) SQ",
            "(fffe,e000) -",
            f"(0008,0060) CS [{self.modality}]",
            f"(0040,0001) AE [{STATION}]",
            f"(0040,0002) DA [{(TODAY - timedelta(days=self.days_ago)).strftime('%Y%m%d')}]",
            "(0040,0003) TM [080000]",
            "(0040,0007) LO [Chest radiograph]",
            f"(0040,0009) SH [SPS{self.accession}]",
            "(fffe,e00d) -",
            "(fffe,e0dd) -",
            f"(0040,1001) SH [RP{self.accession}]",
        ]
        for tag, value in (
            ("(0008,1080) LO", self.admitting),
            ("(0032,1060) LO", self.procedure),
            ("(0040,1002) LO", self.reason),
        ):
            if value is not None:
                lines.append(f"{tag} [{value}]")
        return "\n".join(lines) + "\n"


def order(accession: str, **fields: Any) -> Order:
    return Order(
        accession=accession,
        patient_name=f"Testpatient^{accession}",
        patient_id=f"PID-{accession}",
        study_uid=str(generate_uid()),
        **fields,
    )


#: Reason for the requested procedure present: it wins.
WITH_REASON = order(
    "ACC1001",
    reason="Fever and productive cough",
    procedure="XR CHEST PA",
    admitting="Pneumonia",
)
#: Only a requested procedure description.
WITH_PROCEDURE = order("ACC1002", procedure="XR CHEST PA AND LATERAL")
#: Only admitting diagnoses.
WITH_ADMITTING = order("ACC1003", admitting="Congestive heart failure", modality="DX")
#: Another modality: not polled.
CT_ORDER = order("ACC1004", reason="Head trauma", modality="CT")
#: Scheduled 30 days ago, outside the polling window: found on demand only.
OLD_ORDER = order("ACC1005", reason="Follow-up of effusion", days_ago=30)
ORDERS = (WITH_REASON, WITH_PROCEDURE, WITH_ADMITTING, CT_ORDER, OLD_ORDER)


@dataclass
class RunningRis:
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def start_ris(
    tmp_path: Path, dcmtk: dict[str, str], loopback_preload: dict[str, str]
) -> Iterator[Callable[..., RunningRis]]:
    """Factory: ``start_ris(orders, lockfile=True, extra=())`` starts wlmscpfs; all stop after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        orders: tuple[Order, ...] = ORDERS, lockfile: bool = True, extra: tuple[str, ...] = ()
    ) -> RunningRis:
        root = tmp_path / f"wlmdb{len(started)}"
        folder = root / RIS_AE
        folder.mkdir(parents=True)
        if lockfile:
            (folder / "lockfile").touch()
        for item in orders:
            dump = tmp_path / f"{item.accession}.dump"
            dump.write_text(item.dump())
            made = subprocess.run(
                [dcmtk["dump2dcm"], "-g", str(dump), str(folder / f"{item.accession}.wl")],
                capture_output=True, text=True, timeout=30,
            )
            assert made.returncode == 0, made.stderr
        port = free_port()
        process = subprocess.Popen(
            [dcmtk["wlmscpfs"], "-s", "-dfr", "-dfp", str(root), *extra, str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=loopback_preload,
        )
        started.append(process)
        wait_for_port(port, process)
        return RunningRis(port, process)

    yield start
    for process in started:
        stop_process(process)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_all()
    yield database
    database.dispose()


def ris_settings(tmp_path: Path, port: int, **ris: Any) -> Settings:
    return node_settings(
        tmp_path / "node",
        ris={
            "ae_title": RIS_AE, "host": "127.0.0.1", "port": port, "lookback_days": 2,
            "timeout_s": 5, "station_ae_title": STATION, **ris,
        },
    )


def entries(db: Database) -> dict[str, WorklistEntry]:
    with db.session() as session:
        return {
            str(entry.accession_number): entry
            for entry in session.scalars(select(WorklistEntry))
        }


def test_refresh_applies_the_indication_rule_and_studies_match_by_accession_or_uid(
    start_ris: Callable[..., RunningRis],
    db: Database,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ris = start_ris()
    settings = ris_settings(tmp_path, ris.port)
    caplog.set_level(logging.DEBUG)

    result = refresh_worklist(settings, db, NOW)

    assert (result.queries, result.received, result.pruned) == (2, 3, 0)
    rows = entries(db)
    assert set(rows) == {"ACC1001", "ACC1002", "ACC1003"}
    expected = {
        "ACC1001": ("Fever and productive cough", IndicationSource.REASON_FOR_REQUESTED_PROCEDURE),
        "ACC1002": ("XR CHEST PA AND LATERAL", IndicationSource.REQUESTED_PROCEDURE_DESCRIPTION),
        "ACC1003": ("Congestive heart failure", IndicationSource.ADMITTING_DIAGNOSES_DESCRIPTION),
    }
    for accession, (indication, source) in expected.items():
        assert (rows[accession].indication, rows[accession].indication_source) == (
            indication,
            source,
        )
    first = rows["ACC1001"]
    assert first.study_instance_uid == WITH_REASON.study_uid
    assert first.requested_procedure_description == "XR CHEST PA"
    assert first.modality == "CR" and first.fetched_at == NOW
    assert first.patient_key == patient_key(WITH_REASON.patient_id, None)

    # By accession number (the study's UID agrees).
    by_accession = match_worklist(
        db, StudyKeys(WITH_REASON.study_uid, "ACC1001", patient_key("PID-ACC1001", None))
    )
    assert by_accession is not None and by_accession.matched_by is MatchedBy.ACCESSION_NUMBER
    assert by_accession.indication == "Fever and productive cough"
    assert by_accession.worklist_info() == WorklistInfo(
        accession_number="ACC1001",
        requested_procedure_id="RPACC1001",
        requested_procedure_description="XR CHEST PA",
        study_instance_uid=WITH_REASON.study_uid,
    )
    # By Study Instance UID when the images carry no accession number.
    by_uid = match_worklist(db, StudyKeys(WITH_ADMITTING.study_uid))
    assert by_uid is not None and by_uid.matched_by is MatchedBy.STUDY_INSTANCE_UID
    assert by_uid.item.accession_number == "ACC1003"
    assert match_worklist(db, StudyKeys(str(generate_uid()), "UNKNOWN")) is None

    # Neither patient names, patient IDs nor accession numbers reach any log.
    secrets = [o.patient_name for o in ORDERS] + [o.patient_id for o in ORDERS]
    secrets += ["Testpatient", "ACC100", "Requesting^Doctor", "Referring^Doctor"]
    assert caplog.records, "pynetdicom and the node logged nothing at DEBUG"
    leaked = [secret for secret in secrets if secret in caplog.text]
    assert leaked == []


def test_unknown_accession_is_looked_up_on_demand(
    start_ris: Callable[..., RunningRis], db: Database, tmp_path: Path
) -> None:
    ris = start_ris()
    settings = ris_settings(tmp_path, ris.port)
    refresh_worklist(settings, db, NOW)
    study = StudyKeys(OLD_ORDER.study_uid, "ACC1005", patient_key("PID-ACC1005", None))
    assert match_worklist(db, study) is None, "outside the polling window"

    match = resolve_worklist(settings, db, study, NOW)

    assert match is not None and match.matched_by is MatchedBy.ACCESSION_NUMBER
    assert match.indication == "Follow-up of effusion"
    # Known now: answered from the database, even with the RIS gone.
    stop_process(ris.process)
    (known,) = lookup_on_demand(settings, db, "ACC1005", NOW)
    assert known.study_instance_uid == OLD_ORDER.study_uid
    assert resolve_worklist(settings, db, study, NOW) == match


def test_ris_down_raises_a_named_error_and_resolve_survives(
    db: Database, tmp_path: Path
) -> None:
    settings = ris_settings(tmp_path, free_port())

    with pytest.raises(RisUnavailableError, match="cannot be reached"):
        refresh_worklist(settings, db, NOW)
    with pytest.raises(RisUnavailableError):
        lookup_on_demand(settings, db, "ACC1001", NOW)
    assert resolve_worklist(settings, db, StudyKeys("1.2.3", "ACC1001"), NOW) is None


def test_failure_status_and_rejected_association_are_named_errors(
    start_ris: Callable[..., RunningRis], db: Database, tmp_path: Path
) -> None:
    # Without its lockfile wlmscpfs answers every query with 0xA700 (PEERS.md).
    no_lock = start_ris(lockfile=False)
    with pytest.raises(WorklistQueryError, match="0xA700") as failed:
        refresh_worklist(ris_settings(tmp_path, no_lock.port), db, NOW)
    assert failed.value.status == FindStatus.OUT_OF_RESOURCES

    refusing = start_ris(extra=("--refuse",))
    # wlmscpfs --refuse sends A-ASSOCIATE-RJ and closes the socket at once; pynetdicom reads
    # the reject or only sees the close (about 1 run in 4), so either message is correct.
    with pytest.raises(
        RisUnavailableError,
        match=r"the RIS RIS at 127\.0\.0\.1:\d+ (rejected the association|cannot be reached)",
    ):
        refresh_worklist(ris_settings(tmp_path, refusing.port), db, NOW)
    assert entries(db) == {}


def item(accession: str | None, study_uid: str | None, key: str | None = None) -> WorklistItem:
    return WorklistItem(
        accession_number=accession, study_instance_uid=study_uid, patient_key=key,
        requested_procedure_id=None, requested_procedure_description=None,
        indication="Dyspnoea", indication_source=IndicationSource.REASON_FOR_REQUESTED_PROCEDURE,
        modality="CR", scheduled_date=None, fetched_at=NOW,
    )


def test_entries_that_contradict_the_study_are_never_matched(database: Database) -> None:
    db = database  # SQLite and PostgreSQL
    study_uid, other_uid = str(generate_uid()), str(generate_uid())
    store_items(db, [
        item("ACC2001", other_uid),                 # same accession, another study
        item("ACC2002", None, key="a" * 64),        # same accession, another patient
        item("ACC2099", study_uid),                 # same study, another accession
    ])
    assert match_worklist(db, StudyKeys(study_uid, "ACC2001")) is None
    assert match_worklist(db, StudyKeys(study_uid, "ACC2002", "b" * 64)) is None
    assert match_worklist(db, StudyKeys(study_uid, "ACC2003")) is None
    # Without the contradiction they match.
    assert match_worklist(db, StudyKeys(other_uid, "ACC2001")) is not None
    assert match_worklist(db, StudyKeys(study_uid, "ACC2002", "a" * 64)) is not None
    assert match_worklist(db, StudyKeys(study_uid)) is not None
    # Storing an entry again updates it in place.
    store_items(db, [item("ACC2001", other_uid)])
    assert len(entries(db)) == 3


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"ReasonForTheRequestedProcedure": "Cough", "RequestedProcedureDescription": "XR",
          "AdmittingDiagnosesDescription": "COPD"}, ("Cough", "reason")),
        ({"ReasonForTheRequestedProcedure": "  ", "RequestedProcedureDescription": "XR"},
         ("XR", "procedure")),
        ({"AdmittingDiagnosesDescription": ["COPD", "Asthma"]}, ("COPD; Asthma", "admitting")),
        ({}, (None, None)),
    ],
)
def test_indication_rule(values: dict[str, Any], expected: tuple[str | None, str | None]) -> None:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    text, source = choose_indication(ds)
    assert (text, source.value if source else None) == expected


def test_no_ris_configured_is_a_worklist_error(db: Database, tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node")
    with pytest.raises(WorklistError, match=r"\[ris\]"):
        refresh_worklist(settings, db, NOW)
    assert resolve_worklist(settings, db, StudyKeys("1.2.3", "ACC1")) is None
