"""The findings a dialog turn's prompt lists.

How a version's findings are coded is :mod:`dicom_node.pipeline.finding_codes`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicom_node.pipeline.reports import FindingRecord
from dicom_node.store.dialog import MessageKind
from report_language.labels import CHEXPERT_LABELS, NO_FINDING
from sr_templates import Presence


def prompt_findings(
    current: Sequence[FindingRecord], kind: MessageKind | None, message: str
) -> tuple[str, ...]:
    """Positive findings the model's prompt lists for a dialog turn.

    The current version's findings coded present (they follow the reader's accepted
    corrections, unlike the classifier's predictions); for a correction, with the findings
    the message asserts or denies applied
    (:func:`report_language.stated_findings.apply_stated_findings`), so that the
    radiologist's word overrides the classifier.

    Parameters
    ----------
    current
        The current version's coded findings.
    kind
        The message's kind.
    message
        The reader's message.
    """
    present = [
        record.label
        for record in current
        if record.presence == Presence.PRESENT.value and record.label != NO_FINDING
    ]
    ordered = tuple(label for label in CHEXPERT_LABELS if label in present)
    if kind is not MessageKind.CORRECTION:
        return ordered
    # Imported on first use: the instruction reader lives in the training package.
    from report_language.stated_findings import apply_stated_findings

    return apply_stated_findings(ordered, message)


__all__ = ["prompt_findings"]
