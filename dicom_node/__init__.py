"""The DICOM node: receives chest radiographs from the PACS, drafts reports, returns SRs.

It composes :mod:`inference` (the model), :mod:`sr_templates` (the structured reports),
:mod:`report_language` (what a report says) and, for retraining, :mod:`training`. Its rooms,
imported on demand so that importing the package stays cheap (docs/architecture.md walks a
study through them):

* :mod:`dicom_node.dicom`: DIMSE and DICOM files (SCP, SCU, worklist, TLS);
* :mod:`dicom_node.store`: the database and the spool;
* :mod:`dicom_node.pipeline`: assembly, drafting, report versions, delivery;
* :mod:`dicom_node.jobqueue`: the Celery app, dispatch, tasks and workers;
* :mod:`dicom_node.models`: the model registry, cache and warm-up;
* :mod:`dicom_node.retrain`: learning data from signed reports;
* :mod:`dicom_node.api`: the dialog API and the reader page;
* :mod:`dicom_node.ops`: the service, health, metrics, status and logging;
* :mod:`dicom_node.cli`: the ``dicom_node`` command.
"""

from dicom_node.errors import (
    DatabaseError,
    DiskFullError,
    NodeError,
    OutboxError,
    RisUnavailableError,
    ServiceError,
    SettingsError,
    SpoolError,
    StudyInputError,
    WorklistError,
    WorklistQueryError,
)
from dicom_node.settings import (
    BrokerSettings,
    CallingAESettings,
    DatabaseSettings,
    DeliverySettings,
    InferenceSettings,
    NodeSettings,
    PacsDestination,
    RisSettings,
    Settings,
    StorageSettings,
    TlsSettings,
    WorkerSettings,
    load_settings,
)

__all__ = [
    "BrokerSettings",
    "CallingAESettings",
    "DatabaseError",
    "DatabaseSettings",
    "DeliverySettings",
    "DiskFullError",
    "InferenceSettings",
    "NodeError",
    "NodeSettings",
    "OutboxError",
    "PacsDestination",
    "RisSettings",
    "RisUnavailableError",
    "ServiceError",
    "Settings",
    "SettingsError",
    "SpoolError",
    "StorageSettings",
    "StudyInputError",
    "TlsSettings",
    "WorkerSettings",
    "WorklistError",
    "WorklistQueryError",
    "load_settings",
]
