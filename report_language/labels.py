"""The CheXpert observation labels and the values a label takes (CheXpert's 1, 0, -1, blank)."""

from __future__ import annotations

from typing import Final

#: The 14 CheXpert observations, in the order of the classifier's outputs.
CHEXPERT_LABELS: Final[tuple[str, ...]] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: Label that is true when none of the others is; never listed as a "finding" in prompts.
NO_FINDING: Final[str] = "No Finding"

#: Labels that may be present together with "No Finding": CheXpert defines "No Finding" as
#: the absence of every pathology, and support devices are not a pathology.
COMPATIBLE_WITH_NO_FINDING: Final[frozenset[str]] = frozenset({NO_FINDING, "Support Devices"})

#: Label values, as in the CheXpert CSVs: stated, denied, hedged (blank is ``None``).
POSITIVE: Final[float] = 1.0
NEGATIVE: Final[float] = 0.0
UNCERTAIN: Final[float] = -1.0

__all__ = [
    "CHEXPERT_LABELS",
    "COMPATIBLE_WITH_NO_FINDING",
    "NEGATIVE",
    "NO_FINDING",
    "POSITIVE",
    "UNCERTAIN",
]
