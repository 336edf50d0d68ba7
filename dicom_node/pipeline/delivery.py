"""SR delivery: the outbox (a folder and the ``outbox`` table) and C-STORE to the PACS.

1. :func:`enqueue_sr` writes an SR atomically into the outbox folder (temp file, fsync,
   rename; the spool's writer) as ``<sha256 of the SOP Instance UID>.dcm``, then inserts one
   ``outbox`` row per PACS destination (state ``pending``, due now). Enqueueing the same SR
   again adds only destinations it does not have yet.
2. :func:`deliver_due` claims the due rows (``pending`` with ``next_attempt_at`` passed)
   by setting them ``sending`` in one statement, so concurrent delivery workers never send a
   row twice, and sends them by C-STORE: one association per destination, proposing each
   SR's SOP class with explicit and implicit VR little endian, over TLS when the
   destination has ``tls = true``. :func:`deliver_items` does the same for given row ids
   (a Celery task takes identifiers).
3. Each row ends the attempt as

   * ``sent``: the PACS answered success or a warning (``0000``, ``0001``, ``Bxxx``);
   * ``pending`` again, ``attempts`` + 1, ``next_attempt_at`` = now + backoff: a transient
     failure, i.e. connection refused or timed out, association rejected or aborted, no
     response, or status out of resources (``A7xx``/``A8xx``) or processing failure
     (``0110``). The wait doubles from ``delivery.retry_base_s`` up to
     ``delivery.retry_max_s``; transient failures are retried until the SR is delivered;
   * ``failed``: a permanent failure, i.e. the PACS refused the data (``A9xx``, ``Cxxx``),
     the SOP class (``0122``, or no accepted presentation context) or the sender
     (``0124``); or the destination is no longer configured, or the file is gone. These are
     not retried; ``last_error`` says why.

   Errors record status codes, AE titles and addresses only, never patient data, and not the
   peer's Error Comment (free text).
4. The SR file stays in the outbox until every row of it is ``sent``; then it is deleted
   (the PACS holds the SR from then on).

While a sender works on its claimed rows, a heartbeat refreshes their ``updated_at`` every
``delivery.claim_timeout_s`` / 4 seconds; a ``sending`` row not refreshed for
``delivery.claim_timeout_s`` belongs to a sender that died and is ``pending`` again
(:func:`release_claims`). Delivery is therefore **at least once**: a sender killed after
the PACS stored an SR but before the row was marked ``sent`` leaves the SR to be sent
again, and the PACS receives the same SOP instance twice (PACS keep one copy, or answer a
warning).

:func:`delivery_state` summarises the outbox for ``dicom_node status``.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import and_, func, or_, select, update

from dicom_node._privacy import uid_digest
from dicom_node.dicom.files import encode_dicom_file
from dicom_node.dicom.scu import DeliveryOutcome, StoreAttempt, associate, send_one
from dicom_node.dicom.tls import client_context
from dicom_node.errors import NodeError, OutboxError, SpoolError
from dicom_node.latency import DELIVERY_SECONDS
from dicom_node.pipeline.heartbeat import Heartbeat, heartbeat_interval
from dicom_node.settings import DeliverySettings, Settings
from dicom_node.store import Database, OutboxItem, OutboxState, Study
from dicom_node.store.spool import PATH_DIGEST_CHARS, Spool

logger = logging.getLogger(__name__)

#: Suffix of outbox files.
OUTBOX_SUFFIX = ".dcm"


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one attempt to send one outbox row."""

    outbox_id: int
    destination: str
    outcome: DeliveryOutcome
    attempts: int
    error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class DeliveryReport:
    """What one :func:`deliver_due` / :func:`deliver_items` pass did."""

    results: tuple[DeliveryResult, ...] = ()

    def count(self, outcome: DeliveryOutcome) -> int:
        """How many rows ended the pass with `outcome`."""
        return sum(1 for result in self.results if result.outcome is outcome)

    @property
    def next_attempt_at(self) -> datetime | None:
        """The earliest retry scheduled by this pass (a Celery task's countdown)."""
        times = [r.next_attempt_at for r in self.results if r.next_attempt_at is not None]
        return min(times) if times else None


@dataclass
class DeliveryState:
    """Summary of the outbox for ``dicom_node status``."""

    #: Rows per state (every :class:`OutboxState`).
    counts: dict[str, int] = field(default_factory=dict)
    #: Pending rows whose next attempt is due.
    due: int = 0
    #: The earliest scheduled attempt of a pending row.
    next_attempt_at: datetime | None = None
    #: When the oldest undelivered (pending or sending) row was queued.
    oldest_undelivered_at: datetime | None = None
    #: The highest attempt count of an undelivered row.
    max_attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass(frozen=True)
class _Claimed:
    id: int
    destination: str
    sr_path: str
    sr_uid: str
    attempts: int


# --------------------------------------------------------------------------- helpers
def outbox_path(sop_instance_uid: str) -> Path:
    """File name of an SR in the outbox: the SHA-256 of its SOP Instance UID (no UID shown)."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return Path(digest[:PATH_DIGEST_CHARS] + OUTBOX_SUFFIX)


def retry_delay(attempts: int, delivery: DeliverySettings) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base * 2**(attempts-1), capped.

    Parameters
    ----------
    attempts
        Failed attempts so far (at least 1).
    delivery
        The ``[delivery]`` settings (``retry_base_s``, ``retry_max_s``).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    # Capped before the power, so a long outage cannot overflow the float.
    exponent = min(attempts - 1, 62)
    return float(min(delivery.retry_max_s, delivery.retry_base_s * 2.0**exponent))



def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = str(dataset.get(keyword, "") or "").strip()
    if not value:
        raise ValueError(f"the dataset has no {keyword}")
    return value


# --------------------------------------------------------------------------- enqueue
def enqueue_sr(
    db: Database,
    outbox_dir: Path,
    dataset: Dataset,
    destinations: Sequence[str],
    *,
    job_id: int | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Put an SR into the outbox for delivery to PACS destinations.

    The file is written atomically before the rows are inserted, so a row never points to a
    missing or half-written file.

    Parameters
    ----------
    db
        The node's database; the SR's study must be recorded there.
    outbox_dir
        The outbox folder (``settings.storage.outbox_dir``); created when missing.
    dataset
        The SR (e.g. a :class:`highdicom.sr.ComprehensiveSR`); any storage SOP instance with
        SOP Class, SOP Instance and Study Instance UIDs works.
    destinations
        Names of ``[pacs]`` destinations (``Settings.destinations_for(calling_ae)``).
    job_id
        The report job that produced the SR, if any.
    now
        The current time (timezone-aware); defaults to now.

    Returns
    -------
    list of int
        The ``outbox`` row ids of the SR, one per destination (existing rows included).
        Empty, and nothing written, when `destinations` is empty.

    Raises
    ------
    ValueError
        When the dataset lacks one of the UIDs.
    OutboxError
        When the study is not recorded or the file cannot be written.
    sqlalchemy.exc.SQLAlchemyError
        When the database cannot be written (the file then stays for a retry).
    """
    sr_uid = _required_uid(dataset, "SOPInstanceUID")
    _required_uid(dataset, "SOPClassUID")
    study_uid = _required_uid(dataset, "StudyInstanceUID")
    now = now or datetime.now(UTC)
    wanted = list(dict.fromkeys(name.strip() for name in destinations if name.strip()))
    if not wanted:
        logger.warning("SR %s has no PACS destination; not queued", uid_digest(sr_uid))
        return []
    with db.session() as session:
        study_id = session.scalar(
            select(Study.id).where(Study.study_instance_uid == study_uid)
        )
        existing = set(
            session.scalars(
                select(OutboxItem.destination).where(OutboxItem.sr_sop_instance_uid == sr_uid)
            )
        )
    if study_id is None:
        raise OutboxError(f"the study {uid_digest(study_uid)} of the SR is not recorded")
    new = [name for name in wanted if name not in existing]
    relative = outbox_path(sr_uid)
    if new:
        try:
            Spool(outbox_dir).write(relative, encode_dicom_file(dataset))
        except SpoolError as exc:
            raise OutboxError(f"cannot write the SR to the outbox: {exc}") from exc
        insert = db.insert
        with db.session() as session:
            for name in new:
                session.execute(
                    insert(OutboxItem)
                    .values(
                        job_id=job_id,
                        study_id=study_id,
                        sr_sop_instance_uid=sr_uid,
                        sr_path=relative.as_posix(),
                        destination=name,
                        state=OutboxState.PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["sr_sop_instance_uid", "destination"]
                    )
                )
        logger.info(
            "SR %s of study %s queued for %s",
            uid_digest(sr_uid),
            uid_digest(study_uid),
            ", ".join(new),
        )
    with db.session() as session:
        rows = session.execute(
            select(OutboxItem.id, OutboxItem.destination).where(
                OutboxItem.sr_sop_instance_uid == sr_uid, OutboxItem.destination.in_(wanted)
            )
        ).all()
    ids = {destination: row_id for row_id, destination in rows}
    return [ids[name] for name in wanted if name in ids]


# --------------------------------------------------------------------------- claiming
def release_claims(
    db: Database, now: datetime, stale_before: datetime | None = None
) -> list[int]:
    """Make ``sending`` rows of senders that stopped ``pending`` again, due now.

    Parameters
    ----------
    db
        The node's database.
    now
        The current time (timezone-aware).
    stale_before
        Release the rows last refreshed before this time (their sender's heartbeat
        stopped); ``None`` = every ``sending`` row (``serve`` at start, when its embedded
        worker is the only sender).

    Returns
    -------
    list of int
        The released row ids. Each is logged as a WARNING: its SR may reach the PACS twice.
    """
    with db.session() as session:
        query = select(OutboxItem.id, OutboxItem.destination, OutboxItem.sr_sop_instance_uid)
        query = query.where(OutboxItem.state == OutboxState.SENDING)
        if stale_before is not None:
            query = query.where(OutboxItem.updated_at < stale_before)
        rows = session.execute(query.order_by(OutboxItem.id)).all()
        if not rows:
            return []
        released = set(
            session.scalars(
                update(OutboxItem)
                .where(
                    OutboxItem.id.in_([row[0] for row in rows]),
                    OutboxItem.state == OutboxState.SENDING,
                )
                .values(state=OutboxState.PENDING, next_attempt_at=now, updated_at=now)
                .returning(OutboxItem.id)
            )
        )
    for row_id, destination, sr_uid in rows:
        if row_id in released:
            logger.warning(
                "outbox entry %d (SR %s to %s) was left 'sending' by a sender that stopped; "
                "it is sent again (the PACS may receive it twice)",
                row_id,
                uid_digest(sr_uid),
                destination,
            )
    return sorted(released)


def _touch_claims(db: Database, ids: list[int], now: datetime) -> None:
    """The heartbeat of a delivery pass: refresh the rows it holds ``sending``."""
    with db.session() as session:
        session.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(ids), OutboxItem.state == OutboxState.SENDING)
            .values(updated_at=now)
        )


def _claim(
    settings: Settings, db: Database, now: datetime, ids: Iterable[int] | None
) -> list[_Claimed]:
    """Release stale claims, then mark due pending rows ``sending`` and return them."""
    delivery = settings.delivery
    release_claims(db, now, now - timedelta(seconds=delivery.claim_timeout_s))
    with db.session() as session:
        due = and_(
            OutboxItem.state == OutboxState.PENDING,
            or_(OutboxItem.next_attempt_at.is_(None), OutboxItem.next_attempt_at <= now),
        )
        candidates = select(OutboxItem.id).where(due)
        if ids is not None:
            candidates = candidates.where(OutboxItem.id.in_(list(ids)))
        chosen = list(
            session.scalars(
                candidates.order_by(OutboxItem.next_attempt_at, OutboxItem.id).limit(
                    delivery.batch_size
                )
            )
        )
        if not chosen:
            return []
        # One UPDATE with the state in its WHERE: a row another sender claimed meanwhile
        # is not returned here.
        claimed = session.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(chosen), due)
            .values(state=OutboxState.SENDING, updated_at=now)
            .returning(
                OutboxItem.id,
                OutboxItem.destination,
                OutboxItem.sr_path,
                OutboxItem.sr_sop_instance_uid,
                OutboxItem.attempts,
            )
        ).all()
    return sorted(
        (_Claimed(row[0], row[1], row[2], row[3], row[4]) for row in claimed),
        key=lambda item: item.id,
    )


# --------------------------------------------------------------------------- sending
def _load(outbox_dir: Path, claimed: _Claimed) -> Dataset | StoreAttempt:
    path = outbox_dir / claimed.sr_path
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        return StoreAttempt(DeliveryOutcome.FAILED, "the SR file is missing from the outbox")
    # An unreadable file will not become readable: a permanent failure.
    except Exception as exc:  # noqa: BLE001
        return StoreAttempt(
            DeliveryOutcome.FAILED, f"the SR file cannot be read ({type(exc).__name__})"
        )


def _send_to(
    settings: Settings,
    name: str,
    items: list[_Claimed],
    tls_cache: dict[str, ssl.SSLContext],
) -> dict[int, StoreAttempt]:
    """Send the claimed rows of one destination over one association."""
    attempts: dict[int, StoreAttempt] = {}
    dest = settings.pacs.get(name)
    if dest is None:
        return {
            item.id: StoreAttempt(DeliveryOutcome.FAILED, f"unknown PACS destination {name!r}")
            for item in items
        }
    outbox_dir = settings.storage.outbox_dir
    loaded: list[tuple[_Claimed, Dataset]] = []
    for item in items:
        result = _load(outbox_dir, item)
        if isinstance(result, StoreAttempt):
            attempts[item.id] = result
        else:
            loaded.append((item, result))
    if not loaded:
        return attempts
    tls = None
    if dest.tls:
        try:
            tls = tls_cache.get("client") or client_context(settings.tls)
            tls_cache["client"] = tls
        except NodeError as exc:
            for item, _ in loaded:
                attempts[item.id] = StoreAttempt(DeliveryOutcome.RETRY, f"TLS: {exc}")
            return attempts
    connected = associate(
        settings.node.ae_title, name, dest, (str(ds.SOPClassUID) for _, ds in loaded), tls,
        settings.delivery.timeout_s,
    )
    if isinstance(connected, StoreAttempt):
        for item, _ in loaded:
            attempts[item.id] = connected
        return attempts
    assoc = connected
    try:
        for item, dataset in loaded:
            if not assoc.is_established:
                attempts[item.id] = StoreAttempt(
                    DeliveryOutcome.RETRY, f"PACS {name} ended the association"
                )
                continue
            attempts[item.id] = send_one(assoc, dataset, name, settings.delivery.timeout_s)
    finally:
        if assoc.is_established:
            assoc.release()
    return attempts


def _record(
    settings: Settings,
    db: Database,
    claimed: list[_Claimed],
    attempts: dict[int, StoreAttempt],
    now: datetime,
) -> list[DeliveryResult]:
    results = []
    with db.session() as session:
        for item in claimed:
            attempt = attempts[item.id]
            count = item.attempts + 1
            values: dict[str, Any] = {"attempts": count, "updated_at": now}
            next_at = None
            if attempt.outcome is DeliveryOutcome.SENT:
                values.update(
                    state=OutboxState.SENT, sent_at=now, next_attempt_at=None, last_error=None
                )
            elif attempt.outcome is DeliveryOutcome.RETRY:
                next_at = now + timedelta(seconds=retry_delay(count, settings.delivery))
                values.update(
                    state=OutboxState.PENDING, next_attempt_at=next_at, last_error=attempt.error
                )
            else:
                values.update(
                    state=OutboxState.FAILED, next_attempt_at=None, last_error=attempt.error
                )
            session.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item.id, OutboxItem.state == OutboxState.SENDING)
                .values(**values)
            )
            results.append(
                DeliveryResult(
                    outbox_id=item.id,
                    destination=item.destination,
                    outcome=attempt.outcome,
                    attempts=count,
                    error=attempt.error,
                    next_attempt_at=next_at,
                )
            )
            _log_result(item, attempt, count, next_at, now)
    return results


def _log_result(
    item: _Claimed, attempt: StoreAttempt, count: int, next_at: datetime | None, now: datetime
) -> None:
    sr = uid_digest(item.sr_uid)
    if attempt.outcome is DeliveryOutcome.SENT:
        logger.info("SR %s delivered to %s (attempt %d)", sr, item.destination, count)
    elif attempt.outcome is DeliveryOutcome.RETRY and next_at is not None:
        logger.warning(
            "SR %s not delivered to %s (attempt %d): %s; next attempt in %.0f s",
            sr,
            item.destination,
            count,
            attempt.error,
            (next_at - now).total_seconds(),
        )
    else:
        logger.error(
            "SR %s cannot be delivered to %s: %s; not retried",
            sr,
            item.destination,
            attempt.error,
        )


def _remove_delivered_files(
    settings: Settings, db: Database, claimed: list[_Claimed]
) -> None:
    """Delete the files whose every outbox row is sent."""
    paths = sorted({item.sr_path for item in claimed})
    with db.session() as session:
        undelivered = set(
            session.scalars(
                select(OutboxItem.sr_path).where(
                    OutboxItem.sr_path.in_(paths), OutboxItem.state != OutboxState.SENT
                )
            )
        )
    outbox = Spool(settings.storage.outbox_dir)
    for path in paths:
        if path not in undelivered:
            outbox.remove(Path(path))


def _send_all(
    settings: Settings,
    by_destination: dict[str, list[_Claimed]],
    attempts: dict[int, StoreAttempt],
    tls_cache: dict[str, ssl.SSLContext],
) -> None:
    """Send the claimed rows, destination by destination, recording each attempt."""
    for name, items in sorted(by_destination.items()):
        started = time.perf_counter()
        try:
            sent = _send_to(settings, name, items, tls_cache)
            attempts.update(sent)
            ok = all(a.outcome is DeliveryOutcome.SENT for a in sent.values())
            DELIVERY_SECONDS.labels("sent" if ok else "not_sent").observe(
                time.perf_counter() - started
            )
        # A bug here must not leave the rows 'sending' until the claim timeout.
        except Exception as exc:  # noqa: BLE001
            logger.exception("unexpected error while delivering to %s", name)
            for item in items:
                attempts[item.id] = StoreAttempt(
                    DeliveryOutcome.RETRY, f"internal error ({type(exc).__name__})"
                )


def deliver_items(
    settings: Settings,
    db: Database,
    outbox_ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> DeliveryReport:
    """Send the due outbox rows among `outbox_ids` (every due row when ``None``).

    Rows that are not pending, or whose next attempt is not due yet, are left alone (and
    not in the report). Each row is claimed before sending, so several workers may run
    this at once.

    Parameters
    ----------
    settings
        The node's settings (``[pacs]``, ``[delivery]``, ``storage.outbox``, ``[tls]``).
    db
        The node's database.
    outbox_ids
        Row ids to consider (a Celery task's argument); ``None`` = all due rows, at most
        ``delivery.batch_size``.
    now
        The current time (timezone-aware); defaults to now. Decides what is due and when
        the next attempts are scheduled.

    Returns
    -------
    DeliveryReport
        One result per row attempted.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        Only when the database cannot be read or written; network and PACS failures are
        recorded on the rows instead.
    OutboxError
        When the outbox folder cannot be created.
    """
    now = now or datetime.now(UTC)
    claimed = _claim(settings, db, now, outbox_ids)
    if not claimed:
        return DeliveryReport()
    by_destination: dict[str, list[_Claimed]] = defaultdict(list)
    for item in claimed:
        by_destination[item.destination].append(item)
    attempts: dict[int, StoreAttempt] = {}
    tls_cache: dict[str, ssl.SSLContext] = {}
    ids = [item.id for item in claimed]
    heartbeat = Heartbeat(
        partial(_touch_claims, db, ids),
        heartbeat_interval(settings.delivery.claim_timeout_s),
        f"{len(ids)} outbox entr(ies)",
    )
    try:
        with heartbeat:
            _send_all(settings, by_destination, attempts, tls_cache)
    finally:
        for item in claimed:
            attempts.setdefault(
                item.id, StoreAttempt(DeliveryOutcome.RETRY, "delivery was interrupted")
            )
        results = _record(settings, db, claimed, attempts, now)
    try:
        _remove_delivered_files(settings, db, claimed)
    except SpoolError as exc:
        raise OutboxError(str(exc)) from exc
    return DeliveryReport(tuple(results))


def deliver_due(
    settings: Settings, db: Database, now: datetime | None = None
) -> DeliveryReport:
    """Send every due outbox row (at most ``delivery.batch_size``): one delivery pass.

    See :func:`deliver_items`; a periodic loop or the Celery ``delivery`` queue calls this.
    """
    return deliver_items(settings, db, None, now)


def delivery_state(db: Database, now: datetime | None = None) -> DeliveryState:
    """Summarise the outbox: rows per state, due rows, next attempt, oldest undelivered row.

    Parameters
    ----------
    db
        The node's database.
    now
        The current time (timezone-aware); defaults to now.
    """
    now = now or datetime.now(UTC)
    undelivered = OutboxItem.state.in_([OutboxState.PENDING, OutboxState.SENDING])
    with db.session() as session:
        counts = {
            state: count
            for state, count in session.execute(
                select(OutboxItem.state, func.count()).group_by(OutboxItem.state)
            )
        }
        due = session.scalar(
            select(func.count())
            .select_from(OutboxItem)
            .where(
                OutboxItem.state == OutboxState.PENDING,
                or_(OutboxItem.next_attempt_at.is_(None), OutboxItem.next_attempt_at <= now),
            )
        )
        next_at = session.scalar(
            select(func.min(OutboxItem.next_attempt_at)).where(
                OutboxItem.state == OutboxState.PENDING
            )
        )
        oldest, most = session.execute(
            select(func.min(OutboxItem.created_at), func.max(OutboxItem.attempts)).where(
                undelivered
            )
        ).one()
    return DeliveryState(
        counts={state.value: int(counts.get(state, 0)) for state in OutboxState},
        due=int(due or 0),
        next_attempt_at=_aware(next_at),
        oldest_undelivered_at=_aware(oldest),
        max_attempts=int(most or 0),
    )


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates (min/max) bypass the column type, so SQLite gives naive UTC (or text).
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


__all__ = [
    "OUTBOX_SUFFIX",
    "DeliveryOutcome",
    "DeliveryReport",
    "DeliveryResult",
    "DeliveryState",
    "deliver_due",
    "deliver_items",
    "delivery_state",
    "enqueue_sr",
    "outbox_path",
    "release_claims",
    "retry_delay",
]
