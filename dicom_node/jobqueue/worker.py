"""Celery workers: the embedded one inside ``serve``, and ``dicom_node worker`` on other hosts.

``dicom_node worker`` uses Celery's prefork pool by default: the parent process supervises
child processes and enforces the task time limits (soft: the task is told; hard: the child
is killed and replaced), and each child loads the model once, right after it is forked (an
ONNX Runtime session or a CUDA context must not cross a ``fork``). A GPU host runs one child
per GPU (``--concurrency 1``). ``--pool threads`` runs the tasks in threads of one process
with one model instead; Celery does not enforce time limits there.

Queues are read in priority order (:data:`~dicom_node.jobqueue.app.QUEUE_PRIORITY`): a worker
consuming ``dialog,gpu`` takes a waiting dialog turn before the next draft batch. With
``--pool threads --concurrency 2`` one process with one model runs a dialog turn beside a
running draft batch: the model has no global lock (:meth:`inference.llm.LanguageModel.adapter`).

The embedded worker of ``serve`` runs in a thread of the node's process (thread pool, one
model). Its jobs are bounded by the model's ``max_new_tokens`` rather than by time limits.
A job whose worker died is found by its heartbeat within ``worker.stale_job_s`` and sent
again (:mod:`~dicom_node.jobqueue.dispatch`); with the embedded worker, the only one, a
restarted ``serve`` takes back the jobs it left running at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

from celery import Celery

from dicom_node.errors import ServiceError
from dicom_node.jobqueue import context
from dicom_node.jobqueue.app import DELIVERY_QUEUE, DIALOG_QUEUE, GPU_QUEUE, by_priority
from dicom_node.settings import Settings

logger = logging.getLogger(__name__)

#: The queues whose tasks run the model.
MODEL_QUEUES = (DIALOG_QUEUE, GPU_QUEUE)
#: Seconds :meth:`EmbeddedWorker.stop` waits for the worker thread.
STOP_TIMEOUT_S = 30.0


def preload_model(queues: Sequence[str]) -> None:
    """Load (and self-test) the model now when `queues` include ``gpu`` or ``dialog``.

    A model that cannot be loaded or fails its self-test is logged in one line and left
    unloaded: the jobs that reach this process wait (``queued``, retried with backoff)
    instead of failing one by one.
    """
    if set(MODEL_QUEUES) & set(queues):
        from dicom_node.models.readiness import ModelNotReadyError

        started = time.perf_counter()
        try:
            model = context.model()
        except ModelNotReadyError as exc:
            logger.error("worker has no usable model; report jobs wait: %s", exc)
            return
        logger.info(
            "worker ready with model %s %s (%.1f s)",
            model.name,
            model.version,
            time.perf_counter() - started,
        )


def _probe_in_child(settings: Settings) -> tuple[str | None, str]:
    """Load and self-test the model in a fresh process; ``(failed check or None, detail)``."""
    from dicom_node.models.readiness import ModelNotReadyError
    from inference.selftest import SelfTestError

    context.set_settings(settings)
    try:
        loaded = context.model()
    except ModelNotReadyError as exc:
        cause = exc.__cause__
        return (cause.check if isinstance(cause, SelfTestError) else "load"), str(exc)
    return None, f"{loaded.name} {loaded.version}, loaded and self-tested"


def probe_model(settings: Settings) -> bool:
    """Self-test the model before a prefork worker starts; records the outcome in
    :data:`~dicom_node.models.readiness.READINESS` (for ``/healthz``) and logs it in one line.

    The model is loaded in a spawned process, which exits afterwards: the pool's children
    are forked from a parent that never touched torch or ONNX Runtime, and load their own.
    Returns whether the model passed.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dicom_node.models.readiness import READINESS, ModelPhase

    READINESS.set(ModelPhase.LOADING, "loading and self-testing the model")
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            check, detail = pool.submit(_probe_in_child, settings).result()
    except Exception as exc:  # noqa: BLE001 - the probe process itself died
        check, detail = "load", f"the self-test process failed ({type(exc).__name__})"
    if check is not None:
        logger.error("model self-test failed (%s); report jobs wait: %s", check, detail)
        READINESS.set(ModelPhase.FAILED, detail, check)
        return False
    logger.info("model self-test passed: %s", detail)
    READINESS.set(ModelPhase.READY, detail)
    return True


class EmbeddedWorker:
    """A Celery worker in a thread of the current process (the embedded default).

    Parameters
    ----------
    app
        The configured Celery app.
    settings
        The node's settings (``worker.concurrency``).
    queues
        Queues to consume (default ``gpu`` and ``delivery``).
    """

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        queues: Sequence[str] = (GPU_QUEUE, DELIVERY_QUEUE),
    ) -> None:
        self.app = app
        self.settings = settings
        self.queues = list(queues)
        self._controller: object | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Start consuming in a background thread.

        The model is made ready by ``serve``'s warm-up
        (:class:`~dicom_node.models.readiness.ModelWarmup`), not here: the node listens at
        once, and a job that arrives early waits for the model.
        """
        if self._thread is not None:
            raise ServiceError("the embedded worker is already running")
        # One slot per drafting job plus one, so a delivery never waits behind a draft.
        concurrency = self.settings.worker.concurrency + (DELIVERY_QUEUE in self.queues)
        controller = self.app.WorkController(
            pool_cls="threads",
            concurrency=concurrency,
            queues=self.queues,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname=f"embedded@{self.settings.node.ae_title.strip()}",
            loglevel=self.settings.log_level,
        )
        self._controller = controller

        def run() -> None:
            try:
                controller.start()
            except BaseException as exc:  # reported by is_alive / healthz
                self._failure = exc
                logger.exception("the embedded worker stopped")

        self._thread = threading.Thread(target=run, name="dicom-node-worker", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop consuming; a running job finishes first (up to :data:`STOP_TIMEOUT_S`)."""
        if self._controller is not None:
            self._controller.stop(in_sighandler=False)  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("the embedded worker did not stop within %.0f s", STOP_TIMEOUT_S)
        self._thread = None
        self._controller = None


def run_worker(
    app: Celery,
    settings: Settings,
    queues: Sequence[str],
    concurrency: int,
    *,
    pool: Literal["prefork", "threads"] = "prefork",
    hostname: str | None = None,
) -> None:
    """Run a standalone worker in the foreground until it is stopped (``dicom_node worker``).

    Parameters
    ----------
    app
        The configured Celery app (broker from ``broker.url``).
    settings
        The node's settings.
    queues
        Queues to consume.
    concurrency
        Tasks run at a time (child processes, or threads).
    pool
        ``prefork`` (time limits enforced, one model per child) or ``threads``.
    hostname
        Celery node name (default ``<queues>@<host>``).
    """
    if pool == "prefork":
        from celery.signals import worker_process_init

        def load_in_child(**_: object) -> None:
            preload_model(queues)

        worker_process_init.connect(load_in_child, weak=False)
    else:
        preload_model(queues)
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        # Read in priority order: a waiting dialog turn before the next draft batch.
        f"--queues={','.join(by_priority(queues))}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


__all__ = ["MODEL_QUEUES", "EmbeddedWorker", "preload_model", "probe_model", "run_worker"]
