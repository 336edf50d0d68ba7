"""The running node (``dicom_node serve``): every long-lived part, started and stopped together.

:class:`NodeService` builds, in one process:

* the **database** engine and the **spool**;
* the **DICOM server** (C-ECHO/C-STORE SCP, optionally TLS);
* the **scheduler** thread: every ``node.assembly_interval_s`` it assembles complete studies
  into job rows (:mod:`~dicom_node.pipeline.assembly`) and hands queued jobs and due SR
  deliveries to the Celery queue (:class:`~dicom_node.jobqueue.Dispatcher`);
* the **worklist poller** thread, when ``[ris]`` is set
  (:func:`~dicom_node.dicom.worklist.run_worklist_poller`);
* the **embedded worker** (with no broker configured): a Celery worker in this process on a
  persistent SQLite transport, which drafts the reports and delivers the SRs. With a
  broker, workers run elsewhere (``dicom_node worker``);
* the **model warm-up** (with the embedded worker, or the dialog API unless a Redis broker
  sends its turns to the workers' ``dialog`` queue): builds the demo model
  on a first run, then loads and self-tests the bundle in the background
  (:class:`~dicom_node.models.readiness.ModelWarmup`). Draft jobs are handed to the embedded
  worker only once the model is ready; until then studies are received and queued;
* the **operations HTTP server**: ``/healthz`` and ``/metrics`` on ``node.http_port``;
  ``/healthz`` also reports every background thread (``"threads"``: the scheduler, the
  worklist poller, the dialog API's server) that is no longer running;
* the **dialog API and reader page** on ``api.port``, when ``api.enabled``
  (:mod:`dicom_node.api`).

Everything the node must not lose is in the database before it is acknowledged, so a node
stopped at any moment resumes where it was. With the embedded worker, the jobs and SR
deliveries a stopped node left half done are taken back at start
(:meth:`~dicom_node.jobqueue.Dispatcher.requeue_abandoned`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import describe_exception
from dicom_node.api import ApiServer
from dicom_node.api.http_server import BackgroundHttpServer
from dicom_node.dicom.scp import StoreSCP
from dicom_node.dicom.tls import server_context
from dicom_node.dicom.worklist import run_worklist_poller
from dicom_node.errors import ServiceError
from dicom_node.jobqueue import Dispatcher, EmbeddedWorker, configure_app, is_embedded
from dicom_node.jobqueue import context as queue_context
from dicom_node.jobqueue.app import dialog_on_workers
from dicom_node.models.readiness import (
    READINESS,
    ModelWarmup,
    health_problem,
    needs_demo_build,
)
from dicom_node.ops import metrics
from dicom_node.ops.health import HealthCheck, create_ops_app, database_check, recent_jobs_check
from dicom_node.pipeline.assembly import AssemblyResult, assemble
from dicom_node.settings import Settings
from dicom_node.store import Database
from dicom_node.store.spool import Spool

logger = logging.getLogger(__name__)

#: Seconds :meth:`NodeService.stop` waits for each background thread.
STOP_TIMEOUT_S = 10.0


class NodeService:
    """The node: SCP, scheduler, worklist poller, embedded worker and HTTP endpoints.

    Parameters
    ----------
    settings
        The node's settings.
    database
        A database to use instead of opening ``settings.database_url`` (tests, embedding).
    worker
        Run the embedded worker: ``None`` (default) = when no broker is configured.
    http
        Serve ``/healthz`` and ``/metrics`` on ``node.http_port``, and the dialog API on
        ``api.port`` when ``api.enabled``.
    """

    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        worker: bool | None = None,
        http: bool = True,
    ) -> None:
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
        self.celery = configure_app(settings)
        queue_context.set_settings(settings, self.db)
        run_worker = is_embedded(settings) if worker is None else worker
        self.worker = EmbeddedWorker(self.celery, settings) if run_worker else None
        # The model this process drafts or talks with is made ready in the background;
        # with a Redis broker the workers answer the dialog, and serve loads no model (it
        # only builds the demo bundle on a first run, for the workers).
        api_model = http and settings.api.enabled
        self.warmup: ModelWarmup | None = None
        if self.worker is not None or (api_model and not dialog_on_workers(settings)):
            self.warmup = ModelWarmup(settings, queue_context.load_model)
        elif api_model and needs_demo_build(settings):
            self.warmup = ModelWarmup(settings, None)
        self.dispatcher = Dispatcher(
            settings,
            self.db,
            self.celery,
            jobs_allowed=(lambda: READINESS.ready) if self.worker is not None else None,
        )
        self.http: BackgroundHttpServer | None = None
        self.api: ApiServer | None = None
        self._want_http = http
        self._collector: metrics.DatabaseCollector | None = None
        self._stopping = threading.Event()
        #: The node's own background threads, by role ("scheduler", "worklist poller").
        self._threads: dict[str, threading.Thread] = {}
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ passes
    def assemble_once(self, now: datetime | None = None) -> AssemblyResult:
        """Run one assembly pass now (also done by the scheduler)."""
        return assemble(
            self.db, self.settings.node.stable_seconds, now or datetime.now(UTC)
        )

    def _assemble_quietly(self) -> None:
        try:
            self.assemble_once()
        except SQLAlchemyError as exc:
            logger.warning("assembly pass failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ health
    def health_checks(self) -> dict[str, HealthCheck]:
        """The checks of ``/healthz``."""

        def scp() -> str | None:
            if not self.scp.is_alive():
                return "the DICOM server is not running"
            return None

        def spool() -> str | None:
            if self.spool.has_room(0):
                return None
            return f"less than {self.settings.storage.min_free_bytes} bytes free in the spool"

        def worker() -> str | None:
            if self.worker is None or self.worker.is_alive():
                return None
            return "the embedded worker is not running"

        def threads() -> str | None:
            if self._stopping.is_set():
                return None
            dead = [role for role, alive in self._thread_liveness().items() if not alive]
            return f"not running: {', '.join(dead)}" if dead else None

        def broker() -> str | None:
            try:
                with self.celery.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1, timeout=2)
            except Exception as exc:  # noqa: BLE001 - any failure means unreachable
                return f"broker unreachable ({type(exc).__name__})"
            return None

        checks = {
            "database": database_check(self.db),
            "dicom": scp,
            "spool": spool,
            "broker": broker,
            "worker": worker,
            "threads": threads,
            "jobs": recent_jobs_check(self.db, self.settings.worker.unhealthy_after_failures),
        }
        if self.warmup is not None:
            checks["model"] = lambda: health_problem(READINESS.status())
        return checks

    def _thread_liveness(self) -> dict[str, bool]:
        """Whether each background thread runs, by role (the embedded worker has its own
        check)."""
        alive = {role: thread.is_alive() for role, thread in self._threads.items()}
        if self.api is not None:
            alive["dialog API server"] = self.api.is_alive()
        return alive

    # ------------------------------------------------------------------ life cycle
    def _thread(self, role: str, name: str, target: Callable[..., object], *args: object) -> None:
        """Start a daemon thread; its end, unless the node is stopping, is logged."""

        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - logged here, shown by /healthz
                logger.critical(
                    "the %s thread stopped: %s", role, describe_exception(exc), exc_info=True
                )
                return
            if not self._stopping.is_set():
                logger.critical("the %s thread ended", role)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads[role] = thread

    def start(self) -> tuple[str, int]:
        """Create tables and folders, then start every part (see the module docstring).

        Returns
        -------
        tuple of (str, int)
            The address and port the SCP listens on.

        Raises
        ------
        DatabaseError
            When the database cannot be reached or its tables created.
        ServiceError
            When a server cannot listen, the model cannot be loaded, or the node runs.
        """
        if self.address is not None:
            raise ServiceError("the node is already running")
        self.db.create_all()
        self.spool.remove_temporary_files()
        for folder in (self.settings.storage.outbox_dir, self.settings.storage.reports_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceError(f"cannot create the folder {folder}: {exc}") from exc
        # Studies that became complete while the node was down are queued right away.
        self.assemble_once()
        self._stopping.clear()
        if self.worker is not None and is_embedded(self.settings):
            # This process is the only worker: what it left running or sending when it
            # stopped has no other owner and is taken back now, not after the timeouts.
            self.dispatcher.requeue_abandoned()
        try:
            if self.worker is not None:
                self.worker.start()
            if self._want_http:
                self._collector = metrics.register_database(self.db)
                self.http = BackgroundHttpServer(
                    create_ops_app(
                        self.health_checks(),
                        (lambda: READINESS.status().to_json()) if self.warmup else None,
                    ),
                    self.settings.node.bind_address,
                    self.settings.node.http_port,
                    "operations",
                )
                self.http.start()
                if self.settings.api.enabled:
                    self.api = ApiServer(self.settings, database=self.db)
                    self.api.start()
            self.address = self.scp.start()
        except Exception:
            self._stop_parts()
            raise
        if self.warmup is not None:
            self.warmup.start()
        self._thread(
            "scheduler",
            "dicom-node-scheduler",
            self.dispatcher.run,
            self._stopping,
            self.settings.node.assembly_interval_s,
            self._assemble_quietly,
        )
        if self.settings.ris is not None:
            self._thread(
                "worklist poller",
                "dicom-node-worklist",
                run_worklist_poller,
                self.settings,
                self.db,
                self._stopping,
            )
        return self.address

    def _stop_parts(self) -> None:
        self._stopping.set()
        if self.warmup is not None:
            self.warmup.stop()
        for thread in self._threads.values():
            thread.join(STOP_TIMEOUT_S)
        self._threads.clear()
        if self.api is not None:
            self.api.stop()  # waits for running dialog turns and their deliveries
            self.api = None
        if self.worker is not None:
            self.worker.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self._collector is not None:
            metrics.unregister(self._collector)
            self._collector = None

    def stop(self) -> None:
        """Stop the SCP (open associations end), the threads and the worker; close the database."""
        self.scp.stop()
        self._stop_parts()
        self.address = None
        if self._owns_db:
            self.db.dispose()

    def __enter__(self) -> NodeService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["NodeService"]
