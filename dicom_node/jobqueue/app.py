"""The node's Celery app: broker, queues, reliability options.

One module-level app carries the task definitions (:mod:`dicom_node.jobqueue.tasks`, which
import it); :func:`~dicom_node.jobqueue.configure.configure_app` registers them and points the
app at the configured broker before a worker starts or a task is sent. Queues:

``dialog``
    the reader's dialog turns (:mod:`~dicom_node.jobqueue.dialog`), with a Redis broker:
    a worker consuming ``dialog,gpu`` takes a waiting turn before the next draft batch
    (Redis' ``queue_order_strategy`` is ``priority``: queues are read in the order named);
``gpu``
    report drafting (:func:`~dicom_node.pipeline.drafting.draft_jobs`): workers on GPU hosts;
``delivery``
    SR C-STORE to the PACS (:func:`~dicom_node.pipeline.delivery.deliver_items`);
``training``
    retrain jobs (admin).

Reliability: ``acks_late`` with ``reject_on_worker_lost`` (a message is acknowledged after
its task ends, so a worker that dies mid-job leaves it for another), prefetch 1 (a long job
does not hold others hostage), hard and soft time limits, and retries with exponential
backoff on transient errors only (in :mod:`~dicom_node.jobqueue.tasks`). A worker that
dies mid-job is also found by the job's heartbeat (``worker.stale_job_s``), which does not
wait for the broker's visibility timeout.

Results: the node sends every message with ``ignore_result=True``, so no sender subscribes
to the result store (job outcomes are in the node's database). Workers still write results
to ``broker.result_backend`` when one is set; nothing in the node reads them.

The broker is ``broker.url`` (Redis in production). Without one, the app uses kombu's
SQLAlchemy transport on a SQLite file in the storage folder (:mod:`.transport`):
persistent, no server, and consumed by the worker that ``dicom_node serve`` runs in its own
process. The database's
job rows stay the source of truth either way: ``serve`` sends every queued job again when
its message was lost (see :mod:`~dicom_node.jobqueue.dispatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from dicom_node.jobqueue import transport
from dicom_node.settings import Settings

#: Name of the Celery app (task names are prefixed with it).
APP_NAME = "dicom_node"
#: Queue of dialog turns (before drafts: a worker reads its queues in this order).
DIALOG_QUEUE = "dialog"
#: Queue of report drafting.
GPU_QUEUE = "gpu"
#: Queue of SR delivery.
DELIVERY_QUEUE = "delivery"
#: Queue of retrain jobs.
TRAINING_QUEUE = "training"
#: Name of the retrain task (:mod:`dicom_node.jobqueue.training_tasks`).
RETRAIN_TASK = f"{APP_NAME}.retrain"
#: File name of the embedded broker's SQLite database, in ``storage.folder``.
EMBEDDED_BROKER_FILE = "broker.sqlite"
#: Seconds between two polls of the embedded transport when its queues are empty.
EMBEDDED_POLL_S = 0.1

app = Celery(APP_NAME)


def broker_url(settings: Settings) -> str:
    """The broker URL: ``broker.url``, or the embedded SQLite transport's."""
    if settings.broker.url:
        return settings.broker.url
    path = (settings.storage.folder / EMBEDDED_BROKER_FILE).resolve()
    return f"{transport.SCHEME}+sqlite:///{path}"


def is_embedded(settings: Settings) -> bool:
    """Whether the queue is the embedded one (no broker configured)."""
    return not settings.broker.url


#: The queues in the order a worker reads them (the first non-empty one gives the next task).
QUEUE_PRIORITY = (DIALOG_QUEUE, GPU_QUEUE, DELIVERY_QUEUE, TRAINING_QUEUE)


def by_priority(queues: Sequence[str]) -> list[str]:
    """`queues` in the order a worker should read them (:data:`QUEUE_PRIORITY`)."""
    rank = {name: index for index, name in enumerate(QUEUE_PRIORITY)}
    return sorted(dict.fromkeys(queues), key=lambda name: rank.get(name, len(rank)))


def dialog_on_workers(settings: Settings) -> bool:
    """Whether dialog turns run on the workers: with a Redis broker, whose pub/sub carries
    the answer's text back to ``serve`` (:mod:`~dicom_node.jobqueue.dialog`). Otherwise
    ``serve`` answers them with its own model."""
    return (settings.broker.url or "").startswith(("redis://", "rediss://"))


def result_backend(settings: Settings) -> str | None:
    """Where task results go: ``broker.result_backend``, else Redis when the broker is."""
    if settings.broker.result_backend:
        return settings.broker.result_backend
    url = settings.broker.url or ""
    return url if url.startswith(("redis://", "rediss://")) else None


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration these settings describe."""
    worker = settings.worker
    backend = result_backend(settings)
    return {
        "broker_url": broker_url(settings),
        "result_backend": backend,
        "task_ignore_result": backend is None,
        "result_expires": 24 * 3600,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": worker.time_limit_s,
        "task_soft_time_limit": worker.soft_time_limit_s,
        "task_default_queue": GPU_QUEUE,
        "task_routes": {
            f"{APP_NAME}.dialog_turn": {"queue": DIALOG_QUEUE},
            f"{APP_NAME}.draft_report": {"queue": GPU_QUEUE},
            f"{APP_NAME}.deliver": {"queue": DELIVERY_QUEUE},
            f"{APP_NAME}.retrain": {"queue": TRAINING_QUEUE},
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A Redis message not acknowledged within this time goes to another worker; longer
        # than the longest job, or long jobs would run twice.
        "broker_transport_options": (
            {
                "visibility_timeout": int(worker.time_limit_s * 2),
                # Read a worker's queues in the order given (dialog first), not in turn.
                "queue_order_strategy": "priority",
            }
            if not is_embedded(settings)
            else {"polling_interval": EMBEDDED_POLL_S}
        ),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


def _drop_pooled_connections() -> None:
    """Forget broker connections pooled for an earlier configuration of the app.

    Celery builds its connection and producer pools once, on first use; a second
    configuration in the same process (another node, e.g. in tests) would keep publishing to
    the first broker. Celery has no public call for this, hence the private attributes.
    """
    pool = app._pool
    if pool is not None:
        pool.force_close_all()
        app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


__all__ = [
    "APP_NAME",
    "DELIVERY_QUEUE",
    "DIALOG_QUEUE",
    "EMBEDDED_BROKER_FILE",
    "GPU_QUEUE",
    "QUEUE_PRIORITY",
    "TRAINING_QUEUE",
    "app",
    "broker_url",
    "by_priority",
    "celery_config",
    "dialog_on_workers",
    "is_embedded",
    "result_backend",
]
