"""The node's database: one engine per process, sessions, and recording received instances.

:class:`Database` wraps a SQLAlchemy engine created once (the SCP's handlers, the assembly loop
and the status command share it; nothing creates an engine per request). SQLite files run in
WAL mode with foreign keys on and a busy timeout, so the SCP's association threads can write
while readers read; PostgreSQL is used through psycopg 3. A SQLite file holds report text and
patient keys, so it is created readable by its owner only (:func:`private_sqlite_file`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Select,
    Table,
    Update,
    bindparam,
    case,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dicom_node._privacy import uid_digest
from dicom_node.errors import DatabaseError, NodeError
from dicom_node.store.models import Base, Instance, Study

logger = logging.getLogger(__name__)

_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)

#: Alembic's script location of the node's migrations.
MIGRATIONS = "dicom_node.store:migrations"
#: The revision that is the schema releases before migrations created.
LEGACY_REVISION = "0001"
#: Key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x44_4E_4D_47  # "DNMG"
#: SQLAlchemy backends the node supports.
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
#: Milliseconds a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class InstanceRecord:
    """What the database keeps of one received instance.

    Parameters
    ----------
    sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid
        The instance's identifying UIDs.
    modality, body_part, view_position
        Modality (0008,0060), Body Part Examined (0018,0015) and View Position (0018,5101),
        upper-cased, or ``None`` when absent or empty.
    accession_number
        Accession Number (0008,0050), or ``None``.
    patient_key
        Pseudonymous patient key (see ``dicom_node._privacy.patient_key``), or ``None``.
    path
        File path relative to the spool folder.
    size_bytes
        Size of the stored file.
    transfer_syntax_uid
        Transfer syntax the instance was received (and stored) in.
    calling_ae
        AE title of the peer that sent it.
    received_at
        Timezone-aware arrival time.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    accession_number: str | None
    patient_key: str | None
    path: str
    size_bytes: int
    transfer_syntax_uid: str
    calling_ae: str
    received_at: datetime


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: a row committed before C-STORE success survives a power cut, like the
        # fsynced spool file it points at.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


#: Mode of SQLite files the node creates: read and write for the owner only.
PRIVATE_FILE_MODE = 0o600
#: Files SQLite keeps next to a database in WAL mode.
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite file `path` with mode 0600, or narrow an existing one to 0600.

    SQLite creates a new database file 0644 (less the umask), and its ``-wal`` and ``-shm``
    files with the database file's mode; so the file is created here first, empty (SQLite
    takes an empty file as an empty database), and its companions follow it. Existing files
    of this user with group or other bits are narrowed to 0600, companions included; files
    of another user are left as they are (opening them may still work, or fail in SQLite).

    Parameters
    ----------
    path
        The database file.

    Raises
    ------
    OSError
        When the file cannot be created or its mode changed.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass  # narrowed below when it is ours
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in _SQLITE_COMPANIONS)):
        try:
            info = candidate.stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and info.st_uid == os.geteuid():
            candidate.chmod(mode & 0o700)


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"database.url is not a valid SQLAlchemy URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise DatabaseError(
            f"database.url: backend {backend!r} is not supported "
            f"(use one of {', '.join(SUPPORTED_BACKENDS)})"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        # The node depends on psycopg 3, not on SQLAlchemy's default psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def dialect_insert(backend: str) -> Any:
    """The ``insert`` construct of a backend (``"sqlite"`` or ``"postgresql"``), for upserts."""
    return sqlite.insert if backend == "sqlite" else postgresql.insert


class Database:
    """The node's database: an engine, a session factory and the instance ledger.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///path/node.db`` (the folder is created), ``sqlite://``
        (in memory, one shared connection; tests only) or
        ``postgresql+psycopg://user@host/db`` (plain ``postgresql://`` uses psycopg 3 too).
    echo
        Log every SQL statement (debugging).

    Raises
    ------
    DatabaseError
        For a URL that is not SQLite or PostgreSQL, or a SQLite folder that cannot be made.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = _parse_url(url)
        self._url = parsed
        kwargs: dict[str, Any] = {"echo": echo}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                kwargs.update(
                    poolclass=StaticPool, connect_args={"check_same_thread": False}
                )
            else:
                file = Path(database).expanduser()
                try:
                    file.parent.mkdir(parents=True, exist_ok=True)
                    private_sqlite_file(file)
                except OSError as exc:
                    raise DatabaseError(
                        f"cannot create the SQLite database {database}: {exc}"
                    ) from exc
        else:
            kwargs.update(pool_pre_ping=True)
        self._engine: Engine = create_engine(parsed, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._ledger = _LedgerStatements.build(parsed.get_backend_name())

    # ------------------------------------------------------------------ plumbing
    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (one per :class:`Database`)."""
        return self._engine

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    @property
    def insert(self) -> Any:
        """The backend's own ``insert`` construct (``sqlite.insert`` or ``postgresql.insert``),
        whose ``on_conflict_do_nothing``/``on_conflict_do_update`` make upserts."""
        return dialect_insert(self.backend)

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    def create_all(self) -> None:
        """Create the schema, or upgrade an existing one, to this release (Alembic ``head``).

        A database made by a release before migrations (tables, no ``alembic_version``) is
        first stamped with revision ``0001``, the schema those releases created. On
        PostgreSQL a transaction-level advisory lock keeps two processes starting at once
        (``serve`` and a worker) from migrating together.

        Raises
        ------
        DatabaseError
            When the database cannot be reached or written, or a migration fails.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", MIGRATIONS)
        try:
            with self._engine.begin() as connection:
                if self.backend == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                    )
                tables = set(inspect(connection).get_table_names())
                config.attributes["connection"] = connection
                if "studies" in tables and "alembic_version" not in tables:
                    command.stamp(config, LEGACY_REVISION)
                    logger.info("database of an earlier release: stamped %s", LEGACY_REVISION)
                command.upgrade(config, "head")
        except (SQLAlchemyError, NodeError) as exc:
            raise DatabaseError(f"cannot create or upgrade the tables in {self.safe_url}: "
                                f"{exc}") from exc

    def drop_all(self) -> None:
        """Drop every table of the node, Alembic's version table included (throwaway test
        databases; the next :meth:`create_all` starts from nothing)."""
        Base.metadata.drop_all(self._engine)
        with self._engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on normal exit, rolled back on an error."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown)."""
        self._engine.dispose()

    # ------------------------------------------------------------------ instances
    # These two run once per C-STORE, so they use Core statements built once per Database
    # (see _LedgerStatements) on a connection: the ORM session's bookkeeping, and building
    # the statements anew for every instance, would cost more than the statements themselves.
    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID is recorded."""
        with self._engine.connect() as connection:
            found = connection.execute(
                self._ledger.find_instance, {"sop_instance_uid": sop_instance_uid}
            ).first()
        return found is not None

    def record_instance(self, record: InstanceRecord) -> bool:
        """Record a received instance and its study, in one transaction.

        Safe against concurrent associations: the study and the instance are inserted with
        ``ON CONFLICT DO NOTHING``, so two peers sending the same instance at once record it
        once. The study's ``last_received_at`` and ``instance_count`` change only for a new
        instance, so re-sent instances neither delay nor re-open a study.

        Parameters
        ----------
        record
            The instance.

        Returns
        -------
        bool
            ``True`` if the instance was new, ``False`` if it was already recorded.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database cannot be written (the caller turns it into a DIMSE status).
        """
        ledger = self._ledger
        study_key = {"study_instance_uid": record.study_instance_uid}
        with self._engine.begin() as connection:
            study_id = connection.execute(ledger.find_study, study_key).scalar()
            if study_id is None:
                connection.execute(
                    ledger.insert_study,
                    {
                        **study_key,
                        "accession_number": record.accession_number,
                        "patient_key": record.patient_key,
                        "first_received_at": record.received_at,
                        "last_received_at": record.received_at,
                        "instance_count": 0,
                    },
                )
                study_id = connection.execute(ledger.find_study, study_key).scalar_one()
            # RETURNING tells a new row from a conflict on every backend.
            instance_id = connection.execute(
                ledger.insert_instance,
                {
                    "sop_instance_uid": record.sop_instance_uid,
                    "study_id": study_id,
                    "series_instance_uid": record.series_instance_uid,
                    "sop_class_uid": record.sop_class_uid,
                    "modality": record.modality,
                    "body_part": record.body_part,
                    "view_position": record.view_position,
                    "path": record.path,
                    "size_bytes": record.size_bytes,
                    "transfer_syntax_uid": record.transfer_syntax_uid,
                    "calling_ae": record.calling_ae,
                    "received_at": record.received_at,
                },
            ).scalar_one_or_none()
            if instance_id is None:
                logger.info(
                    "instance %s of study %s already recorded",
                    uid_digest(record.sop_instance_uid),
                    uid_digest(record.study_instance_uid),
                )
                return False
            # Counted in this transaction, so assembly sees every committed instance even
            # when concurrent associations commit out of arrival order.
            connection.execute(
                ledger.count_instance,
                {
                    "p_study_id": study_id,
                    "p_received_at": record.received_at,
                    "p_accession_number": record.accession_number,
                },
            )
        return True

    def stored_instance(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """Spool path and Study Instance UID of a recorded instance, or None."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(_INSTANCES.c.path, _STUDIES.c.study_instance_uid)
                .join(_STUDIES, _STUDIES.c.id == _INSTANCES.c.study_id)
                .where(_INSTANCES.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def replace_instance(self, record: InstanceRecord) -> None:
        """Record a corrected copy of an instance already recorded in the same study.

        The row takes the new copy's attributes and arrival time, and the study is opened
        for assembly again (``last_received_at`` moves on, ``assembled_count`` is cleared),
        so a new job covers the corrected copy and supersedes the study's earlier job, as a
        new instance would.
        """
        with self._engine.begin() as connection:
            study_id = connection.execute(
                select(_INSTANCES.c.study_id).where(
                    _INSTANCES.c.sop_instance_uid == record.sop_instance_uid
                )
            ).scalar_one()
            connection.execute(
                update(_INSTANCES)
                .where(_INSTANCES.c.sop_instance_uid == record.sop_instance_uid)
                .values(
                    series_instance_uid=record.series_instance_uid,
                    modality=record.modality,
                    body_part=record.body_part,
                    view_position=record.view_position,
                    path=record.path,
                    size_bytes=record.size_bytes,
                    transfer_syntax_uid=record.transfer_syntax_uid,
                    calling_ae=record.calling_ae,
                    received_at=record.received_at,
                )
            )
            connection.execute(
                update(_STUDIES)
                .where(_STUDIES.c.id == study_id)
                .values(
                    last_received_at=case(
                        (_STUDIES.c.last_received_at < record.received_at, record.received_at),
                        else_=_STUDIES.c.last_received_at,
                    ),
                    assembled_count=None,
                )
            )


@dataclass(frozen=True)
class _LedgerStatements:
    """The statements of the per-instance path, built once per :class:`Database`.

    A statement object built once is compiled once: SQLAlchemy memoizes its cache key on the
    object, so executing it again with new parameters skips building and hashing the
    statement tree (about a third of the cost of recording an instance when rebuilt each
    time). Values are bound at execution; the ``p_`` names of ``count_instance`` keep its
    parameters apart from the columns it sets.
    """

    find_instance: Select[Any]
    find_study: Select[Any]
    insert_study: Any
    insert_instance: Any
    count_instance: Update

    @classmethod
    def build(cls, backend: str) -> _LedgerStatements:
        """The statements for ``"sqlite"`` or ``"postgresql"`` (their upsert dialects)."""
        insert = dialect_insert(backend)
        received_at = bindparam("p_received_at", type_=_STUDIES.c.last_received_at.type)
        return cls(
            find_instance=select(_INSTANCES.c.id).where(
                _INSTANCES.c.sop_instance_uid == bindparam("sop_instance_uid")
            ),
            find_study=select(_STUDIES.c.id).where(
                _STUDIES.c.study_instance_uid == bindparam("study_instance_uid")
            ),
            insert_study=insert(_STUDIES).on_conflict_do_nothing(
                index_elements=["study_instance_uid"]
            ),
            insert_instance=insert(_INSTANCES)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(_INSTANCES.c.id),
            count_instance=update(_STUDIES)
            .where(_STUDIES.c.id == bindparam("p_study_id"))
            .values(
                instance_count=_STUDIES.c.instance_count + 1,
                last_received_at=case(
                    (_STUDIES.c.last_received_at < received_at, received_at),
                    else_=_STUDIES.c.last_received_at,
                ),
                accession_number=func.coalesce(
                    _STUDIES.c.accession_number,
                    bindparam("p_accession_number", type_=_STUDIES.c.accession_number.type),
                ),
            ),
        )


__all__ = ["SUPPORTED_BACKENDS", "Database", "InstanceRecord"]
