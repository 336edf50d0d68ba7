"""The study record every loader yields and every training stage consumes.

Labels follow CheXpert semantics: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain and
``None`` when the report does not mention the observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN


@dataclass(frozen=True)
class StudyRecord:
    """One study: its images, report sections and CheXpert labels.

    Parameters
    ----------
    subject_id
        Patient identifier used only for splitting (never logged).
    study_id
        Study identifier, unique within a dataset.
    images
        Image files of the study (PNG/JPEG or DICOM), frontal views first.
    views
        View position of each image (``"PA"``, ``"AP"``, ``"LATERAL"``, ...), same order.
    findings
        Findings section of the report.
    impression
        Impression section of the report (may be empty).
    indication
        Clinical indication, or ``None`` when unknown.
    labels
        CheXpert label per observation name: ``1.0``, ``0.0``, ``-1.0`` or ``None``.
    """

    subject_id: str
    study_id: str
    images: tuple[Path, ...]
    views: tuple[str, ...]
    findings: str
    impression: str
    indication: str | None
    labels: Mapping[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError(f"study {self.study_id!r} has no images")
        if len(self.views) != len(self.images):
            raise ValueError(
                f"study {self.study_id!r}: {len(self.images)} images but {len(self.views)} views"
            )
        unknown = set(self.labels) - set(CHEXPERT_LABELS)
        if unknown:
            raise ValueError(f"study {self.study_id!r}: unknown labels {sorted(unknown)}")
        for name, value in self.labels.items():
            if value not in (None, POSITIVE, NEGATIVE, UNCERTAIN):
                raise ValueError(f"study {self.study_id!r}: label {name!r} has value {value!r}")

    @property
    def report(self) -> str:
        """The report text the model learns to write: findings, then the impression."""
        if self.impression:
            return f"FINDINGS: {self.findings}\nIMPRESSION: {self.impression}"
        return f"FINDINGS: {self.findings}"

    def binary_targets(self) -> list[float]:
        """Targets for the findings classifier, in ``CHEXPERT_LABELS`` order.

        Uncertain and absent count as negative (the U-Zeros rule RaDialog evaluates with).
        """
        return [1.0 if self.labels.get(name) == POSITIVE else 0.0 for name in CHEXPERT_LABELS]

    def positive_findings(self) -> list[str]:
        """Names of the positive observations, excluding No Finding."""
        return [
            name
            for name in CHEXPERT_LABELS
            if name != NO_FINDING and self.labels.get(name) == POSITIVE
        ]
