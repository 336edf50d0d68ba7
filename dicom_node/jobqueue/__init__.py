"""The job queue: the Celery app, its tasks, the dispatcher and the workers.

See :mod:`.app` for queues and reliability options, :mod:`.tasks` for the tasks,
:mod:`.dispatch` for how database rows become messages, :mod:`.batching` for the jobs a
draft task takes along, :mod:`.dialog` for dialog turns on the workers, and :mod:`.worker`
for the embedded and standalone workers.
"""

from dicom_node.jobqueue.app import (
    DELIVERY_QUEUE,
    DIALOG_QUEUE,
    GPU_QUEUE,
    TRAINING_QUEUE,
    app,
    broker_url,
    is_embedded,
)
from dicom_node.jobqueue.configure import configure_app
from dicom_node.jobqueue.dispatch import Dispatcher, DispatchResult, Requeued
from dicom_node.jobqueue.worker import EmbeddedWorker, probe_model, run_worker

__all__ = [
    "DELIVERY_QUEUE",
    "DIALOG_QUEUE",
    "GPU_QUEUE",
    "TRAINING_QUEUE",
    "DispatchResult",
    "Dispatcher",
    "EmbeddedWorker",
    "Requeued",
    "app",
    "broker_url",
    "configure_app",
    "is_embedded",
    "probe_model",
    "run_worker",
]
