"""The ``dicom_node.retrain(run_id)`` task (queue ``training``): a thin wrapper around
:func:`dicom_node.retrain.runs.run_retrain`, where the run's orchestration lives."""

from __future__ import annotations

from typing import Any

from celery import Task

from dicom_node.jobqueue import context
from dicom_node.jobqueue.app import RETRAIN_TASK, app
from dicom_node.retrain.runs import run_retrain


@app.task(  # type: ignore[untyped-decorator]
    name=RETRAIN_TASK,
    bind=True,
    acks_late=False,
    # The outcome is in the retrain_runs row; no result store is needed.
    ignore_result=True,
)
def retrain(self: Task, run_id: int) -> dict[str, Any]:
    """Run a retrain run (see :func:`run_retrain`)."""
    info = run_retrain(context.settings(), context.database(), run_id)
    return {
        "run_id": run_id,
        "state": info.state.value,
        "candidate_version": info.candidate_version,
        "error": info.error,
    }


__all__ = ["retrain"]
