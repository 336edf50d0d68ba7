"""The running node (``dicom_node serve``): database, spool, SCP and the assembly loop.

:class:`NodeService` builds every long-lived object once: the database engine, the spool,
the TLS context and the SCP. A background thread runs :func:`~dicom_node.assembly.assemble`
every ``node.assembly_interval_s`` seconds, turning complete studies into queued job rows.
The queue, the worker and SR delivery are added on top of these rows.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from .assembly import AssemblyResult, assemble
from .errors import ServiceError
from .scp import StoreSCP
from .settings import Settings
from .spool import Spool
from .store import Database
from .tls import server_context

logger = logging.getLogger(__name__)

#: Seconds :meth:`NodeService.stop` waits for the assembly thread.
STOP_TIMEOUT_S = 10.0


class NodeService:
    """The node's receiving side: SCP plus periodic study assembly.

    Parameters
    ----------
    settings
        The node's settings.
    database
        A database to use instead of opening ``settings.database_url`` (tests, embedding).
    """

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self.db = database or Database(settings.database_url)
        self._owns_db = database is None
        self.spool = Spool(settings.storage.spool_dir, settings.storage.min_free_bytes)
        ssl_context = server_context(settings.tls) if settings.tls.enabled else None
        self.scp = StoreSCP(
            settings.node,
            self.spool,
            self.db,
            calling_aes=list(settings.calling_aes),
            ssl_context=ssl_context,
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def assemble_once(self, now: datetime | None = None) -> AssemblyResult:
        """Run one assembly pass now (also done by the background loop)."""
        return assemble(
            self.db, self.settings.node.stable_seconds, now or datetime.now(UTC)
        )

    def _assembly_loop(self) -> None:
        interval = self.settings.node.assembly_interval_s
        while not self._stopping.wait(interval):
            try:
                self.assemble_once()
            except SQLAlchemyError as exc:
                # Transient (database restarting, locked): the next pass tries again.
                logger.warning("assembly pass failed: %s", type(exc).__name__)

    def start(self) -> tuple[str, int]:
        """Create the tables and folders, start the SCP and the assembly loop.

        Returns
        -------
        tuple of (str, int)
            The address and port the SCP listens on.

        Raises
        ------
        DatabaseError
            When the database cannot be reached or its tables created.
        ServiceError
            When the SCP cannot listen, or the node is already running.
        """
        if self._thread is not None:
            raise ServiceError("the node is already running")
        self.db.create_all()
        self.spool.remove_temporary_files()
        try:
            self.settings.storage.outbox_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(
                f"cannot create the outbox {self.settings.storage.outbox_dir}: {exc}"
            ) from exc
        # Studies that became complete while the node was down are queued right away.
        self.assemble_once()
        address = self.scp.start()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._assembly_loop, name="dicom-node-assembly", daemon=True
        )
        self._thread.start()
        return address

    def stop(self) -> None:
        """Stop the SCP (open associations end), then the assembly loop; close the database."""
        self.scp.stop()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
        if self._owns_db:
            self.db.dispose()

    def __enter__(self) -> NodeService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["NodeService"]
