"""The CheXpert observation labels predicted by the findings classifier."""

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
