"""The RIS modality worklist: C-FIND queries, the ``worklist_entries`` table, study matching.

The node is a Modality Worklist SCU (pynetdicom, ``ModalityWorklistInformationFind``) of the
RIS configured in ``[ris]``:

* :func:`refresh_worklist` pulls the worklist: one C-FIND per scheduled modality
  (``ris.modalities``), restricted to ``ris.station_ae_title`` when set and to procedure
  steps scheduled from ``ris.lookback_days`` days ago to today (the node's local date). The
  entries are stored (updated when already known), and entries the RIS has not returned for
  ``ris.retention_days`` days are deleted. :func:`run_worklist_poller` repeats it every
  ``ris.poll_interval_s`` seconds until told to stop.
* :func:`lookup_on_demand` asks the RIS about one accession number the node does not know
  (no date, modality or station restriction: the study is already here).
* :func:`match_worklist` finds the entry of a study: by Accession Number first, then by
  Study Instance UID. An entry that contradicts the study (another Study Instance UID for
  the same accession number, another accession number for the same study, or another
  patient) is never matched: reporting against the wrong order is a patient-safety issue.
  :func:`resolve_worklist` combines both for the worker: match, else ask the RIS, else none.

The clinical indication
-----------------------
An entry's indication is the first of these attributes that is present and not empty (the
rule of issue 5, in this order):

1. Reason for the Requested Procedure (0040,1002);
2. Requested Procedure Description (0032,1060);
3. Admitting Diagnoses Description (0008,1080) (several values are joined with ``"; "``).

Which one it came from is stored as :class:`~dicom_node.store.IndicationSource`.

Privacy
-------
Patient Name and Patient ID are requested (a RIS may need them as return keys) and the ID
becomes the pseudonymous patient key used to refuse a match with another patient's study;
neither is stored nor logged, nor are accession numbers. pynetdicom logs the identifiers of
C-FIND requests and responses at INFO level; :func:`_hide_identifiers` turns that off before
every query. Requesting and Referring Physician's Name are requested but not kept.

Failures raise :class:`~dicom_node.errors.RisUnavailableError` (the RIS cannot be reached,
rejected or aborted the association, or did not answer in time) or
:class:`~dicom_node.errors.WorklistQueryError` (a failure status), both
:class:`~dicom_node.errors.WorklistError`; :func:`resolve_worklist` and
:func:`run_worklist_poller` catch them, so a RIS outage never stops the node.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import patient_key, uid_digest
from dicom_node.dicom.dimse import FIND_PENDING_STATUSES, FindStatus
from dicom_node.dicom.files import raw_text
from dicom_node.dicom.tls import client_context
from dicom_node.errors import NodeError, RisUnavailableError, WorklistError, WorklistQueryError
from dicom_node.settings import RisSettings, Settings
from dicom_node.store import Database, IndicationSource, Study, WorklistEntry
from sr_templates import WorklistInfo

logger = logging.getLogger(__name__)

#: Transfer syntaxes proposed for the worklist C-FIND.
FIND_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: DICOM DA format.
DICOM_DATE_FORMAT = "%Y%m%d"
#: The indication rule: attributes in order of preference, with the source recorded.
INDICATION_ATTRIBUTES: tuple[tuple[str, IndicationSource], ...] = (
    ("ReasonForTheRequestedProcedure", IndicationSource.REASON_FOR_REQUESTED_PROCEDURE),
    ("RequestedProcedureDescription", IndicationSource.REQUESTED_PROCEDURE_DESCRIPTION),
    ("AdmittingDiagnosesDescription", IndicationSource.ADMITTING_DIAGNOSES_DESCRIPTION),
)
#: Separator of the values of a multi-valued indication attribute.
MULTI_VALUE_SEPARATOR = "; "
#: Characters that make a C-FIND value a wildcard or a list; never sent in an accession.
QUERY_SPECIAL_CHARACTERS = frozenset("*?\\")
#: Return keys of the query at the top level of the identifier (empty = universal).
RETURN_KEYS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
    "ReasonForTheRequestedProcedure",
    "AdmittingDiagnosesDescription",
    "RequestingPhysician",
    "ReferringPhysicianName",
)


#: Requested Procedure Priority (0040,1003) values PS3.3 defines; others are not stored.
PRIORITIES = frozenset({"STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"})


class MatchedBy(StrEnum):
    """How a worklist entry was matched to a study."""

    ACCESSION_NUMBER = "accession_number"
    STUDY_INSTANCE_UID = "study_instance_uid"


@dataclass(frozen=True)
class StudyKeys:
    """What matching needs of a study (a :class:`~dicom_node.store.Study` works as well).

    Parameters
    ----------
    study_instance_uid
        Study Instance UID of the images.
    accession_number
        Accession Number of the images, if any.
    patient_key
        Pseudonymous patient key of the images (``_privacy.patient_key``), if known.
    """

    study_instance_uid: str
    accession_number: str | None = None
    patient_key: str | None = None


@dataclass(frozen=True)
class WorklistItem:
    """One worklist entry, as parsed from a C-FIND response or read from the database.

    Parameters
    ----------
    accession_number, study_instance_uid
        The order's identifiers; at least one is set.
    patient_key
        Pseudonymous key of the patient (never the Patient ID itself).
    requested_procedure_id, requested_procedure_description
        Requested Procedure ID (0040,1001) and Description (0032,1060).
    indication, indication_source
        The clinical indication and the attribute it came from (see the module docstring).
    modality, scheduled_date
        Modality and Scheduled Procedure Step Start Date of the first procedure step.
    fetched_at
        When the RIS returned the entry.
    priority
        Requested Procedure Priority (0040,1003): one of :data:`PRIORITIES`, or ``None``.
    """

    accession_number: str | None
    study_instance_uid: str | None
    patient_key: str | None
    requested_procedure_id: str | None
    requested_procedure_description: str | None
    indication: str | None
    indication_source: IndicationSource | None
    modality: str | None
    scheduled_date: str | None
    fetched_at: datetime
    priority: str | None = None

    @property
    def entry_key(self) -> str:
        """SHA-256 of accession number and Study Instance UID: the row key of the entry."""
        text = f"{self.accession_number or ''}\\{self.study_instance_uid or ''}"
        return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()

    def worklist_info(self) -> WorklistInfo | None:
        """The entry as the SR writer's :class:`sr_templates.WorklistInfo`.

        Returns
        -------
        WorklistInfo or None
            ``None`` when the entry has no accession number, or one DICOM does not allow
            (the SR's Referenced Request Sequence needs it). A requested procedure ID or
            description that does not fit its VR is left out, not fatal.
        """
        if not self.accession_number:
            return None
        procedure = (self.requested_procedure_id or "", self.requested_procedure_description or "")
        for procedure_id, description in (procedure, ("", "")):
            try:
                return WorklistInfo(
                    accession_number=self.accession_number,
                    study_instance_uid=self.study_instance_uid,
                    requested_procedure_id=procedure_id,
                    requested_procedure_description=description,
                )
            except ValueError as exc:
                # The message names the field, never its value.
                logger.warning("worklist entry field not usable in the SR: %s", exc)
        return None

    @classmethod
    def from_entry(cls, entry: WorklistEntry) -> WorklistItem:
        """The item of a database row."""
        return cls(
            accession_number=entry.accession_number,
            study_instance_uid=entry.study_instance_uid,
            patient_key=entry.patient_key,
            requested_procedure_id=entry.requested_procedure_id,
            requested_procedure_description=entry.requested_procedure_description,
            indication=entry.indication,
            indication_source=entry.indication_source,
            modality=entry.modality,
            scheduled_date=entry.scheduled_date,
            fetched_at=entry.fetched_at,
            priority=entry.priority,
        )


@dataclass(frozen=True)
class WorklistMatch:
    """The worklist entry of a study and how it was found."""

    item: WorklistItem
    matched_by: MatchedBy

    @property
    def indication(self) -> str | None:
        """The clinical indication for the prompt and the SR (``Report.indication``)."""
        return self.item.indication

    def worklist_info(self) -> WorklistInfo | None:
        """The entry for :func:`sr_templates.build_draft_sr` (see
        :meth:`WorklistItem.worklist_info`)."""
        return self.item.worklist_info()


@dataclass(frozen=True)
class RefreshResult:
    """What one :func:`refresh_worklist` pass did."""

    #: C-FIND requests sent.
    queries: int
    #: Entries the RIS returned (items without accession number and Study UID not counted).
    received: int
    #: Entries deleted after ``ris.retention_days``.
    pruned: int


# --------------------------------------------------------------------------- parsing
def _text(ds: Dataset, keyword: str) -> str | None:
    """An attribute as stripped text; several values joined; ``None`` when absent or empty."""
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        parts = [str(part).strip() for part in value]
        text = MULTI_VALUE_SEPARATOR.join(part for part in parts if part)
    else:
        text = str(value).strip()
    return text or None


def choose_indication(ds: Dataset) -> tuple[str | None, IndicationSource | None]:
    """Apply the indication rule to a worklist identifier.

    Parameters
    ----------
    ds
        A C-FIND response identifier.

    Returns
    -------
    tuple of (str or None, IndicationSource or None)
        The first present, non-empty value of Reason for the Requested Procedure, Requested
        Procedure Description and Admitting Diagnoses Description, and which it was.
    """
    for keyword, source in INDICATION_ATTRIBUTES:
        text = _text(ds, keyword)
        if text:
            return text, source
    return None, None


def parse_identifier(ds: Dataset, fetched_at: datetime) -> WorklistItem | None:
    """Turn a Modality Worklist C-FIND response identifier into a :class:`WorklistItem`.

    Parameters
    ----------
    ds
        The identifier.
    fetched_at
        When it was received (timezone-aware).

    Returns
    -------
    WorklistItem or None
        ``None`` when the identifier has neither an accession number nor a Study Instance
        UID (nothing could match it).
    """
    accession = raw_text(ds, "AccessionNumber")
    study_uid = _text(ds, "StudyInstanceUID")
    if not accession and not study_uid:
        return None
    indication, source = choose_indication(ds)
    priority = (_text(ds, "RequestedProcedurePriority") or "").upper()
    modality = scheduled = None
    steps = ds.get("ScheduledProcedureStepSequence")
    if steps:
        modality = _text(steps[0], "Modality")
        scheduled = _text(steps[0], "ScheduledProcedureStepStartDate")
    return WorklistItem(
        accession_number=accession,
        study_instance_uid=study_uid,
        patient_key=patient_key(raw_text(ds, "PatientID"), raw_text(ds, "IssuerOfPatientID")),
        requested_procedure_id=_text(ds, "RequestedProcedureID"),
        requested_procedure_description=_text(ds, "RequestedProcedureDescription"),
        indication=indication,
        indication_source=source,
        modality=modality.upper() if modality else None,
        scheduled_date=scheduled[:8] if scheduled else None,
        fetched_at=fetched_at,
        priority=priority if priority in PRIORITIES else None,
    )


# --------------------------------------------------------------------------- C-FIND
def build_query(
    *,
    accession_number: str | None = None,
    modality: str | None = None,
    station_ae_title: str | None = None,
    date_range: tuple[date, date] | None = None,
) -> Dataset:
    """The Modality Worklist C-FIND identifier: matching keys set, return keys empty.

    Parameters
    ----------
    accession_number
        Match this accession number only.
    modality, station_ae_title
        Match procedure steps of this modality / scheduled on this station.
    date_range
        Match procedure steps scheduled between these dates (inclusive).
    """
    query = Dataset()
    for keyword in RETURN_KEYS:
        setattr(query, keyword, "")
    if accession_number is not None:
        query.AccessionNumber = accession_number
    step = Dataset()
    step.Modality = modality or ""
    step.ScheduledStationAETitle = station_ae_title or ""
    if date_range is None:
        step.ScheduledProcedureStepStartDate = ""
    else:
        first, last = (day.strftime(DICOM_DATE_FORMAT) for day in date_range)
        step.ScheduledProcedureStepStartDate = first if first == last else f"{first}-{last}"
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepID = ""
    step.ScheduledProcedureStepDescription = ""
    query.ScheduledProcedureStepSequence = [step]
    return query


def _hide_identifiers() -> None:
    """Keep pynetdicom from logging C-FIND identifiers (names, IDs) at INFO level."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def _associate(settings: Settings, ris: RisSettings) -> Association:
    ae = AE(ae_title=settings.node.ae_title)
    ae.connection_timeout = ris.timeout_s
    ae.acse_timeout = ris.timeout_s
    ae.dimse_timeout = ris.timeout_s
    ae.network_timeout = ris.timeout_s
    ae.add_requested_context(ModalityWorklistInformationFind, list(FIND_TRANSFER_SYNTAXES))
    tls_args = None
    if ris.tls:
        try:
            tls_args = (client_context(settings.tls), ris.host)
        except NodeError as exc:
            raise WorklistError(f"ris.tls: {exc}") from exc
    assoc = ae.associate(ris.host, ris.port, ae_title=ris.ae_title, tls_args=tls_args)
    where = f"the RIS {ris.ae_title} at {ris.host}:{ris.port}"
    if assoc.is_rejected:
        raise RisUnavailableError(f"{where} rejected the association")
    if not assoc.is_established:
        raise RisUnavailableError(
            f"{where} cannot be reached (connection refused or timed out, or aborted)"
        )
    return assoc


def query_worklist(settings: Settings, query: Dataset) -> list[Dataset]:
    """Send one Modality Worklist C-FIND to the RIS and return the matching identifiers.

    Parameters
    ----------
    settings
        The node's settings (``[ris]``, ``node.ae_title`` as calling AE, ``[tls]``).
    query
        The identifier (see :func:`build_query`).

    Returns
    -------
    list of pydicom.dataset.Dataset
        The identifiers of the pending responses.

    Raises
    ------
    WorklistError
        When ``[ris]`` is not configured or its TLS files cannot be loaded.
    RisUnavailableError
        When the RIS cannot be reached, rejects or aborts the association, or does not
        answer within ``ris.timeout_s``.
    WorklistQueryError
        When the RIS answers with a failure or cancel status, or does not support the
        Modality Worklist find service.
    """
    ris = settings.ris
    if ris is None:
        raise WorklistError("no RIS is configured ([ris] is missing)")
    _hide_identifiers()
    assoc = _associate(settings, ris)
    found: list[Dataset] = []
    try:
        if not any(
            context.abstract_syntax == ModalityWorklistInformationFind
            for context in assoc.accepted_contexts
        ):
            raise WorklistQueryError(
                f"the RIS {ris.ae_title} does not accept Modality Worklist queries", None
            )
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if "Status" not in status:
                raise RisUnavailableError(
                    f"the RIS {ris.ae_title} did not answer the worklist query "
                    f"within {ris.timeout_s:g} s (or aborted)"
                )
            code = int(status.Status)
            if code in FIND_PENDING_STATUSES:
                if identifier is not None:
                    found.append(identifier)
                continue
            if code == FindStatus.SUCCESS:
                break
            raise WorklistQueryError(
                f"the RIS {ris.ae_title} answered the worklist query with status "
                f"0x{code:04X} ({_status_name(code)})",
                code,
            )
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def _status_name(code: int) -> str:
    try:
        return FindStatus(code).name
    except ValueError:
        return "failure"


# --------------------------------------------------------------------------- database

def store_items(db: Database, items: Iterable[WorklistItem]) -> int:
    """Insert or update worklist entries (one row per accession number and Study UID).

    Parameters
    ----------
    db
        The node's database.
    items
        Parsed entries; ``fetched_at`` of each becomes the row's last-seen time.

    Returns
    -------
    int
        How many entries were written.
    """
    rows = {}
    for item in items:
        rows[item.entry_key] = {
            "entry_key": item.entry_key,
            "accession_number": item.accession_number,
            "study_instance_uid": item.study_instance_uid,
            "patient_key": item.patient_key,
            "requested_procedure_id": item.requested_procedure_id,
            "requested_procedure_description": item.requested_procedure_description,
            "indication": item.indication,
            "indication_source": item.indication_source,
            "modality": item.modality,
            "scheduled_date": item.scheduled_date,
            "priority": item.priority,
            "created_at": item.fetched_at,
            "fetched_at": item.fetched_at,
        }
    if not rows:
        return 0
    insert = db.insert
    updated = (
        "patient_key",
        "requested_procedure_id",
        "requested_procedure_description",
        "indication",
        "indication_source",
        "modality",
        "scheduled_date",
        "priority",
        "fetched_at",
    )
    with db.session() as session:
        for values in rows.values():
            statement = insert(WorklistEntry).values(**values)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=["entry_key"],
                    set_={key: getattr(statement.excluded, key) for key in updated},
                )
            )
    return len(rows)


def prune_worklist(db: Database, before: datetime) -> int:
    """Delete entries the RIS has not returned since `before`; returns how many."""
    with db.session() as session:
        result = session.execute(delete(WorklistEntry).where(WorklistEntry.fetched_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------- public API
def _lookback(ris: RisSettings, now: datetime) -> tuple[date, date]:
    # The RIS schedules in local dates: the node's local date is the best guess of its own.
    today = now.astimezone().date()
    return today - timedelta(days=ris.lookback_days), today


def refresh_worklist(
    settings: Settings, db: Database, now: datetime | None = None
) -> RefreshResult:
    """Pull the worklist from the RIS into ``worklist_entries`` (one polling pass).

    One C-FIND per modality in ``ris.modalities`` (a single one for any modality when the
    list is empty), for procedure steps scheduled from ``ris.lookback_days`` days before
    today to today, on ``ris.station_ae_title`` when set. Entries of each answered query are
    stored before the next query; entries not returned for ``ris.retention_days`` are then
    deleted.

    Parameters
    ----------
    settings
        The node's settings; ``[ris]`` must be set.
    db
        The node's database.
    now
        The current time (timezone-aware); defaults to now.

    Returns
    -------
    RefreshResult
        Counts of queries, received entries and pruned entries.

    Raises
    ------
    WorklistError
        :class:`RisUnavailableError` or :class:`WorklistQueryError` when a query fails
        (entries of the queries answered before are kept).
    """
    ris = settings.ris
    if ris is None:
        raise WorklistError("no RIS is configured ([ris] is missing)")
    now = now or datetime.now(UTC)
    date_range = _lookback(ris, now)
    modalities: Sequence[str | None] = ris.modalities or [None]
    received = 0
    for modality in modalities:
        query = build_query(
            modality=modality, station_ae_title=ris.station_ae_title, date_range=date_range
        )
        items = _parse_all(query_worklist(settings, query), now)
        store_items(db, items)
        received += len(items)
    pruned = prune_worklist(db, now - timedelta(days=ris.retention_days))
    logger.info(
        "worklist refreshed from %s: %d entr%s in %d quer%s, %d expired",
        ris.ae_title,
        received,
        "y" if received == 1 else "ies",
        len(modalities),
        "y" if len(modalities) == 1 else "ies",
        pruned,
    )
    return RefreshResult(queries=len(modalities), received=received, pruned=pruned)


def _parse_all(identifiers: Iterable[Dataset], now: datetime) -> list[WorklistItem]:
    items = []
    skipped = 0
    for identifier in identifiers:
        try:
            item = parse_identifier(identifier, now)
        # Decoding data from a peer: pydicom raises many exception types on corrupt values.
        except Exception as exc:  # noqa: BLE001
            logger.warning("skipped an undecodable worklist entry: %s", type(exc).__name__)
            continue
        if item is None:
            skipped += 1
        else:
            items.append(item)
    if skipped:
        logger.info("skipped %d worklist entr(ies) without accession number or study UID", skipped)
    return items


def lookup_on_demand(
    settings: Settings,
    db: Database,
    accession_number: str,
    now: datetime | None = None,
    *,
    force: bool = False,
) -> list[WorklistItem]:
    """Ask the RIS about one accession number the node has no entry for.

    Parameters
    ----------
    settings
        The node's settings; ``[ris]`` must be set.
    db
        The node's database; the entries found are stored.
    accession_number
        The accession number of a received study.
    now
        The current time (timezone-aware); defaults to now.
    force
        Query even when entries with this accession number are already stored.

    Returns
    -------
    list of WorklistItem
        The entries with this accession number: the stored ones when known (and not
        `force`), else those the RIS returned (possibly none).

    Raises
    ------
    ValueError
        For an empty accession number.
    WorklistError
        :class:`RisUnavailableError` or :class:`WorklistQueryError` when the query fails.
    """
    accession = accession_number.strip()
    if not accession:
        raise ValueError("accession_number must not be empty")
    if not force:
        with db.session() as session:
            known = session.scalars(
                select(WorklistEntry).where(WorklistEntry.accession_number == accession)
            ).all()
            if known:
                return [WorklistItem.from_entry(entry) for entry in known]
    if QUERY_SPECIAL_CHARACTERS & set(accession):
        # '*' and '?' are wildcards and '\' separates a list: the RIS would return others'
        # orders. Such an accession number cannot be looked up safely.
        logger.warning("accession number with C-FIND wildcard characters not looked up")
        return []
    now = now or datetime.now(UTC)
    items = _parse_all(
        query_worklist(settings, build_query(accession_number=accession)), now
    )
    # A RIS may match loosely (case, padding): keep exact matches only.
    items = [item for item in items if item.accession_number == accession]
    store_items(db, items)
    logger.info("on-demand worklist lookup: %d entr(ies) found", len(items))
    return items


def _keys(study: Study | StudyKeys) -> StudyKeys:
    if isinstance(study, StudyKeys):
        return study
    return StudyKeys(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        patient_key=study.patient_key,
    )


def _other_patient(entry: WorklistEntry, keys: StudyKeys) -> bool:
    return bool(entry.patient_key and keys.patient_key and entry.patient_key != keys.patient_key)


def match_worklist(db: Database, study: Study | StudyKeys) -> WorklistMatch | None:
    """Find the worklist entry of a study: by Accession Number, then by Study Instance UID.

    An entry is never matched when it contradicts the study: by accession number, an entry
    naming another Study Instance UID; by Study Instance UID, an entry with another
    accession number; either way, an entry of another patient (both patient keys known and
    different). Among several candidates the one with the same Study Instance UID, then the
    most recently fetched, wins.

    Parameters
    ----------
    db
        The node's database.
    study
        The study (its database row, or :class:`StudyKeys`).

    Returns
    -------
    WorklistMatch or None
        The entry and how it was matched, or ``None``.
    """
    keys = _keys(study)
    accession = (keys.accession_number or "").strip() or None
    uid = keys.study_instance_uid
    with db.session() as session:
        if accession:
            by_accession = session.scalars(
                select(WorklistEntry).where(WorklistEntry.accession_number == accession)
            ).all()
            ranked = sorted(
                by_accession,
                key=lambda entry: (entry.study_instance_uid != uid, -entry.fetched_at.timestamp()),
            )
            for entry in ranked:
                if entry.study_instance_uid and entry.study_instance_uid != uid:
                    _log_conflict("another study", uid)
                elif _other_patient(entry, keys):
                    _log_conflict("another patient", uid)
                else:
                    return WorklistMatch(WorklistItem.from_entry(entry), MatchedBy.ACCESSION_NUMBER)
        by_uid = session.scalars(
            select(WorklistEntry)
            .where(WorklistEntry.study_instance_uid == uid)
            .order_by(WorklistEntry.fetched_at.desc())
        ).all()
        for entry in by_uid:
            if accession and entry.accession_number and entry.accession_number != accession:
                _log_conflict("another accession number", uid)
            elif _other_patient(entry, keys):
                _log_conflict("another patient", uid)
            else:
                return WorklistMatch(WorklistItem.from_entry(entry), MatchedBy.STUDY_INSTANCE_UID)
    return None


def _log_conflict(what: str, study_uid: str) -> None:
    logger.warning(
        "worklist entry for study %s not used: it names %s", uid_digest(study_uid), what
    )


def resolve_worklist(
    settings: Settings, db: Database, study: Study | StudyKeys, now: datetime | None = None
) -> WorklistMatch | None:
    """The worklist entry of a study, asking the RIS when the accession number is unknown.

    This is what the report worker calls: it never raises for RIS or database trouble; the
    report is then drafted without indication and order reference.

    Parameters
    ----------
    settings
        The node's settings (the RIS is asked only when ``[ris]`` is set).
    db
        The node's database.
    study
        The study (its database row, or :class:`StudyKeys`).
    now
        The current time (timezone-aware); defaults to now.

    Returns
    -------
    WorklistMatch or None
        The matching entry, or ``None``.
    """
    keys = _keys(study)
    try:
        match = match_worklist(db, keys)
        if match is not None or settings.ris is None or not keys.accession_number:
            return match
        with db.session() as session:
            known = session.scalar(
                select(WorklistEntry.id).where(
                    WorklistEntry.accession_number == keys.accession_number.strip()
                )
            )
        if known is not None:
            # Known accession number, but the entry contradicts the study: asking again
            # would not change the answer.
            return None
        lookup_on_demand(settings, db, keys.accession_number, now, force=True)
        return match_worklist(db, keys)
    except WorklistError as exc:
        logger.warning(
            "no worklist entry for study %s: %s", uid_digest(keys.study_instance_uid), exc
        )
    except SQLAlchemyError as exc:
        logger.error("cannot read the worklist entries: %s", type(exc).__name__)
    return None


def run_worklist_poller(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Refresh the worklist every ``ris.poll_interval_s`` seconds until `stop` is set.

    Meant for a thread of ``dicom_node serve`` (or a periodic task); failures are logged
    and the next pass tries again.

    Parameters
    ----------
    settings
        The node's settings; returns at once when ``[ris]`` is not set.
    db
        The node's database.
    stop
        Set it to end the loop.
    """
    ris = settings.ris
    if ris is None:
        return
    while not stop.is_set():
        try:
            refresh_worklist(settings, db)
        except WorklistError as exc:
            logger.warning("worklist refresh failed: %s", exc)
        except SQLAlchemyError as exc:
            logger.error("cannot store the worklist: %s", type(exc).__name__)
        stop.wait(ris.poll_interval_s)


__all__ = [
    "DICOM_DATE_FORMAT",
    "FIND_TRANSFER_SYNTAXES",
    "INDICATION_ATTRIBUTES",
    "PRIORITIES",
    "RETURN_KEYS",
    "MatchedBy",
    "RefreshResult",
    "StudyKeys",
    "WorklistItem",
    "WorklistMatch",
    "build_query",
    "choose_indication",
    "lookup_on_demand",
    "match_worklist",
    "parse_identifier",
    "prune_worklist",
    "query_worklist",
    "refresh_worklist",
    "resolve_worklist",
    "run_worklist_poller",
    "store_items",
]
