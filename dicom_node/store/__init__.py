"""Persistence of the node: the database engine and the ORM models.

:class:`Database` owns the one SQLAlchemy engine of a process; the models describe the tables
``studies``, ``instances``, ``jobs``, ``outbox``, ``report_versions`` and
``worklist_entries``; :mod:`.dialog` adds the amend dialog's ``dialog_messages``,
``proposals`` and ``audit_events``.
"""

from dicom_node.store.database import SUPPORTED_BACKENDS, Database, InstanceRecord
from dicom_node.store.dialog import (
    AuditEvent,
    AuditOutcome,
    DialogMessage,
    MessageKind,
    MessageRole,
    Proposal,
    ProposalStatus,
)
from dicom_node.store.models import (
    Base,
    IndicationSource,
    Instance,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    ReportKind,
    ReportVersion,
    Study,
    WorklistEntry,
)
from dicom_node.store.registry import ModelSource, ModelVersion, RetrainRun, RetrainState

__all__ = [
    "SUPPORTED_BACKENDS",
    "AuditEvent",
    "AuditOutcome",
    "DialogMessage",
    "MessageKind",
    "MessageRole",
    "Proposal",
    "ProposalStatus",
    "Base",
    "Database",
    "IndicationSource",
    "Instance",
    "InstanceRecord",
    "Job",
    "JobState",
    "OutboxItem",
    "OutboxState",
    "ReportKind",
    "ModelSource",
    "ModelVersion",
    "ReportVersion",
    "RetrainRun",
    "RetrainState",
    "Study",
    "WorklistEntry",
]
