"""Persistence of the node: the database engine and the ORM models.

:class:`Database` owns the one SQLAlchemy engine of a process; the models describe the tables
``studies``, ``instances``, ``jobs``, ``outbox`` and ``worklist_entries``.
"""

from .database import SUPPORTED_BACKENDS, Database, InstanceRecord
from .models import (
    Base,
    IndicationSource,
    Instance,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Study,
    WorklistEntry,
)

__all__ = [
    "SUPPORTED_BACKENDS",
    "Base",
    "Database",
    "IndicationSource",
    "Instance",
    "InstanceRecord",
    "Job",
    "JobState",
    "OutboxItem",
    "OutboxState",
    "Study",
    "WorklistEntry",
]
