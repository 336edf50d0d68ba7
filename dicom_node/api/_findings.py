"""Coded findings of a revised report.

The SR codes each CheXpert finding with its presence; when the text changes, the codes must
follow it. The rule:

* **Rewrites, summaries and plain-language versions** keep the current codes: they reword
  the report and must not change what it states.
* **Corrections and direct edits** re-read the new text with the project's rule-based
  CheXpert labeler (:func:`training.evaluation.labeler.label_report`): a finding the text
  mentions takes the presence the text states (positive -> present, negative -> absent,
  hedged -> uncertain); a finding it does not mention keeps its current code.
* An edit may set codes explicitly (``{"Pleural Effusion": "absent"}``); those win.
* "No Finding" is then made consistent: absent when any other finding except Support
  Devices is present or uncertain; otherwise present if the text says so, else unchanged.

The model's probability and the bundle's threshold stay with each finding: they record
what the model said, while the presence is the reader's decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sr_templates import CHEXPERT_LABELS, Presence

from ..reports import FindingRecord
from ..store.dialog import MessageKind
from .errors import InvalidInputError

#: The label that means "no abnormality".
NO_FINDING = "No Finding"
#: Labels that do not contradict "No Finding" (as in CheXpert).
_COMPATIBLE_WITH_NO_FINDING = frozenset({NO_FINDING, "Support Devices"})
_LABELER_PRESENCE = {1.0: Presence.PRESENT, 0.0: Presence.ABSENT, -1.0: Presence.UNCERTAIN}


def _text_presence(text: str) -> dict[str, Presence]:
    # Imported on first use: the labeler lives in the training package.
    from training.evaluation.labeler import label_report

    labels = label_report(text)
    return {
        label: _LABELER_PRESENCE[value]
        for label, value in labels.items()
        if value is not None and value in _LABELER_PRESENCE
    }


def revised_findings(
    current: Sequence[FindingRecord],
    kind: MessageKind | None,
    findings_text: str,
    impression_text: str,
    overrides: Mapping[str, str] | None = None,
) -> list[FindingRecord]:
    """The coded findings of a revised report (see the module docstring for the rule).

    Parameters
    ----------
    current
        The current version's coded findings.
    kind
        The request's kind; ``None`` for a direct edit.
    findings_text, impression_text
        The revised texts.
    overrides
        Label -> presence set by the reader (edits only).

    Returns
    -------
    list of FindingRecord
        The findings in the current order; labels only in `overrides` are appended.

    Raises
    ------
    InvalidInputError
        For an unknown label or presence in `overrides`.
    """
    records = {record.label: record for record in current}
    order = [record.label for record in current]
    if kind in (MessageKind.REWRITE, MessageKind.SUMMARY, MessageKind.EASY_LANGUAGE):
        return list(current)
    stated = _text_presence(f"{findings_text}\n{impression_text}")
    text_says_normal = stated.pop(NO_FINDING, None) is Presence.PRESENT
    for label, presence in stated.items():
        if label in records:
            records[label] = dataclasses.replace(records[label], presence=presence.value)
    for label, value in (overrides or {}).items():
        if label not in CHEXPERT_LABELS:
            raise InvalidInputError(f"unknown finding label {label!r}")
        try:
            presence = Presence(value)
        except ValueError as exc:
            raise InvalidInputError(
                f"presence of {label!r} must be present, absent or uncertain"
            ) from exc
        if label in records:
            records[label] = dataclasses.replace(records[label], presence=presence.value)
        else:
            records[label] = FindingRecord(label=label, presence=presence.value)
            order.append(label)
    explicit_no_finding = overrides is not None and NO_FINDING in overrides
    if NO_FINDING in records and not explicit_no_finding:
        abnormal = any(
            record.presence in (Presence.PRESENT.value, Presence.UNCERTAIN.value)
            for label, record in records.items()
            if label not in _COMPATIBLE_WITH_NO_FINDING
        )
        if abnormal:
            presence = Presence.ABSENT
        elif text_says_normal:
            presence = Presence.PRESENT
        else:
            presence = Presence(records[NO_FINDING].presence)
        records[NO_FINDING] = dataclasses.replace(records[NO_FINDING], presence=presence.value)
    return [records[label] for label in order]


def prompt_findings(
    current: Sequence[FindingRecord], kind: MessageKind | None, message: str
) -> tuple[str, ...]:
    """Positive findings the model's prompt lists for a dialog turn.

    The current version's findings coded present (they follow the reader's accepted
    corrections, unlike the classifier's predictions); for a correction, with the findings
    the message asserts or denies applied
    (:func:`training.instruct.stated_findings.apply_stated_findings`), so that the
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
    from training.instruct.stated_findings import apply_stated_findings

    return apply_stated_findings(ordered, message)


__all__ = ["NO_FINDING", "prompt_findings", "revised_findings"]
