"""Persistence of the node: the database engine and the ORM models.

:class:`Database` owns the one SQLAlchemy engine of a process; the models describe the tables
``studies``, ``instances``, ``jobs`` and ``outbox``.
"""

from .database import SUPPORTED_BACKENDS, Database, InstanceRecord
from .models import Base, Instance, Job, JobState, OutboxItem, OutboxState, Study

__all__ = [
    "SUPPORTED_BACKENDS",
    "Base",
    "Database",
    "Instance",
    "InstanceRecord",
    "Job",
    "JobState",
    "OutboxItem",
    "OutboxState",
    "Study",
]
