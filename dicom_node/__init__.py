"""The DICOM node: receives chest radiographs from the PACS, drafts reports, returns SRs.

It composes :mod:`inference` (the model), :mod:`sr_templates` (the structured reports) and,
for retraining, :mod:`training`.
"""

from .errors import NodeError, SettingsError, StudyInputError
from .settings import InferenceSettings, Settings, load_settings

__all__ = [
    "InferenceSettings",
    "NodeError",
    "Settings",
    "SettingsError",
    "StudyInputError",
    "load_settings",
]
