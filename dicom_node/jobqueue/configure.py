"""Setting the job queue up for a process: the tasks registered, the broker configured.

Kept apart from :mod:`.app`: the task modules import the app to declare their tasks, and this
module imports both, so no module of the queue imports one that imports it back.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.jobqueue import context, tasks, training_tasks  # noqa: F401  (importing them registers the tasks)
from dicom_node.jobqueue.app import _drop_pooled_connections, app, celery_config
from dicom_node.settings import Settings


def configure_app(settings: Settings) -> Celery:
    """Point the app at the settings' broker (call before sending tasks or starting workers).

    Also records the settings for the tasks of this process
    (:func:`dicom_node.jobqueue.context.set_settings`).
    """
    _drop_pooled_connections()
    app.conf.update(celery_config(settings))
    tasks.draft_report.max_retries = settings.worker.max_retries
    tasks.draft_report.retry_backoff_max = int(settings.worker.retry_backoff_max_s)
    context.set_settings(settings)
    return app


__all__ = ["configure_app"]
