"""The DICOM node: receives chest radiographs from the PACS, drafts reports, returns SRs.

It composes :mod:`inference` (the model), :mod:`sr_templates` (the structured reports) and,
for retraining, :mod:`training`. The receiving side lives in submodules, imported on demand so
that importing the package stays cheap: :mod:`dicom_node.scp` (C-STORE/C-ECHO SCP),
:mod:`dicom_node.spool`, :mod:`dicom_node.store` (database), :mod:`dicom_node.assembly`
(study completion and routing), :mod:`dicom_node.worklist` (RIS modality worklist),
:mod:`dicom_node.delivery` (SR outbox and C-STORE to the PACS), :mod:`dicom_node.service`
(``dicom_node serve``) and :mod:`dicom_node.status`.
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
