"""The coded findings of a report version: its text, read by one labeler, and the reader's choices.

Every version of a report, the model's draft included, codes all 14 CheXpert findings, and each
code comes from one of two sources only:

* **the text**: the version's final findings and impression texts, read by the rule-based
  CheXpert labeler that the evaluation uses (:func:`report_language.labeler.label_report`):
  positive -> present, negative -> absent, hedged -> uncertain, not mentioned -> not assessed;
* **the reader**: an explicit choice, made with a presence control, stated in a correction
  ("There is no effusion." sets Pleural Effusion absent) or confirmed at sign-off. A choice is
  recorded as the reader's and stays with the report until the reader changes it.

Nothing is carried over from the model's draft: a rewrite, a summary or a plain-language
version is read again like any other text. The model's probability and the bundle's threshold
stay with each label, as the model's, and never decide a presence.

"No Finding", unless the reader chose it, is absent while any other finding except Support
Devices is present or uncertain, and otherwise what the text says (the labeler reads a report
that states nothing abnormal as "No Finding").

Where the text states a finding one way and the code says another (a reader's choice against
the text, or a choice kept from an earlier text), the finding *disagrees*; sign-off is refused
until the reader confirms the code or lets it follow the text (:func:`disagreements`). A
derived "No Finding" never disagrees (see :func:`disagrees`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from dicom_node.errors import NodeError
from dicom_node.pipeline.reports import FindingRecord, FindingSource
from report_language.labels import CHEXPERT_LABELS, COMPATIBLE_WITH_NO_FINDING, NO_FINDING
from sr_templates import Presence

_LABELER_PRESENCE = {1.0: Presence.PRESENT, 0.0: Presence.ABSENT, -1.0: Presence.UNCERTAIN}
_ABNORMAL = frozenset({Presence.PRESENT.value, Presence.UNCERTAIN.value})


class FindingChoiceError(NodeError):
    """A reader's finding choice names an unknown label or presence (the message says which)."""


def text_presence(findings_text: str, impression_text: str) -> dict[str, str]:
    """What the labeler reads in a report's text: label -> presence, for mentioned labels.

    Parameters
    ----------
    findings_text, impression_text
        The report's two sections.

    Returns
    -------
    dict of str to str
        ``present``, ``absent`` or ``uncertain`` for each label the text mentions.
    """
    # Imported on first use: the labeler lives in the training package (issue 19 gives
    # report language its own home).
    from report_language.labeler import label_report

    labels = label_report(f"{findings_text}\n{impression_text}")
    return {
        label: _LABELER_PRESENCE[value].value
        for label, value in labels.items()
        if value is not None and value in _LABELER_PRESENCE
    }


def check_choices(choices: Mapping[str, str]) -> dict[str, str]:
    """Validate a reader's choices (label -> presence) and return them normalised.

    Raises
    ------
    FindingChoiceError
        For an unknown label or presence.
    """
    checked: dict[str, str] = {}
    for label, value in choices.items():
        if label not in CHEXPERT_LABELS:
            raise FindingChoiceError(f"unknown finding label {label!r}")
        try:
            checked[label] = Presence(value).value
        except ValueError as exc:
            allowed = ", ".join(p.value for p in Presence)
            raise FindingChoiceError(
                f"presence of {label!r} must be one of {allowed}; got {value!r}"
            ) from exc
    return checked


def code_findings(
    findings_text: str,
    impression_text: str,
    *,
    previous: Sequence[FindingRecord] = (),
    model: Sequence[FindingRecord] = (),
    choices: Mapping[str, str] | None = None,
    confirm: Iterable[str] = (),
    reader: str | None = None,
) -> list[FindingRecord]:
    """Code the 14 findings of a report version (see the module docstring for the rule).

    Parameters
    ----------
    findings_text, impression_text
        The version's final texts.
    previous
        The previous version's records: their reader choices carry over, and their model
        probabilities when `model` is empty.
    model
        Records carrying the model's probability and threshold per label (the draft's
        classifier output); only those two fields are used.
    choices
        The reader's new explicit choices, label -> presence; they replace earlier ones.
    confirm
        Labels whose code the reader confirms against a text that reads otherwise.
    reader
        Who makes the new choices and confirmations (display name, recorded with them).

    Returns
    -------
    list of FindingRecord
        One record per CheXpert label, in CheXpert order.

    Raises
    ------
    FindingChoiceError
        For an unknown label or presence in `choices` or `confirm`.
    """
    read = text_presence(findings_text, impression_text)
    new_choices = check_choices(choices or {})
    confirmed_labels = set(confirm)
    unknown = sorted(confirmed_labels - set(CHEXPERT_LABELS))
    if unknown:
        raise FindingChoiceError(f"unknown finding label(s) to confirm: {unknown}")
    by_label_previous = {record.label: record for record in previous}
    model_source = {record.label: record for record in (model or previous)}

    chosen: dict[str, tuple[str, bool, str | None]] = {}
    for label, record in by_label_previous.items():
        if record.source is FindingSource.READER:
            # A confirmation holds only for the text it was made against.
            still_confirmed = record.confirmed and record.text_presence == read.get(label)
            chosen[label] = (record.presence, still_confirmed, record.chosen_by)
    for label, presence in new_choices.items():
        chosen[label] = (presence, False, reader)

    records: dict[str, FindingRecord] = {}
    for label in CHEXPERT_LABELS:
        modelled = model_source.get(label)
        probability = modelled.probability if modelled is not None else None
        threshold = modelled.threshold if modelled is not None else None
        chosen_by = None
        if label in chosen:
            presence, confirmed, chosen_by = chosen[label]
            source = FindingSource.READER
        else:
            presence = read.get(label, Presence.NOT_ASSESSED.value)
            confirmed, source = False, FindingSource.TEXT
        records[label] = FindingRecord(
            label=label,
            presence=presence,
            probability=probability,
            threshold=threshold,
            source=source,
            text_presence=read.get(label),
            confirmed=confirmed,
            chosen_by=chosen_by,
        )
    no_finding = records[NO_FINDING]
    if no_finding.source is FindingSource.TEXT:
        abnormal = any(
            record.presence in _ABNORMAL
            for label, record in records.items()
            if label not in COMPATIBLE_WITH_NO_FINDING
        )
        if abnormal:
            records[NO_FINDING] = dataclasses.replace(no_finding, presence=Presence.ABSENT.value)
    for label in confirmed_labels:
        record = records[label]
        if record.text_presence is not None and record.presence != record.text_presence:
            # Confirming makes the code the confirming reader's, against this text.
            records[label] = dataclasses.replace(
                record, source=FindingSource.READER, confirmed=True,
                chosen_by=reader or record.chosen_by,
            )
    return [records[label] for label in CHEXPERT_LABELS]


def disagrees(record: FindingRecord) -> bool:
    """Whether a finding's code differs from what its text states, unconfirmed.

    A finding the text does not mention never disagrees: silence contradicts no code. Nor
    does a "No Finding" that follows the other codes: the labeler reads "No Finding" into
    any text that states nothing abnormal, so its reading is an inference, and the finding
    that makes it absent carries the disagreement if there is one.
    """
    if record.label == NO_FINDING and record.source is not FindingSource.READER:
        return False
    return (
        record.text_presence is not None
        and record.presence != record.text_presence
        and not record.confirmed
    )


def disagreements(records: Sequence[FindingRecord]) -> list[str]:
    """Labels whose code and text disagree (see :func:`disagrees`), in the records' order."""
    return [record.label for record in records if disagrees(record)]


def correction_choices(instruction: str) -> dict[str, str]:
    """The findings a correction states, as the reader's choices.

    "There is no effusion." -> ``{"Pleural Effusion": "absent"}``.
    """
    from report_language.stated_findings import stated_findings

    return {
        label: (Presence.PRESENT if positive else Presence.ABSENT).value
        for label, positive in stated_findings(instruction).items()
    }


__all__ = [
    "FindingChoiceError",
    "check_choices",
    "code_findings",
    "correction_choices",
    "disagreements",
    "disagrees",
    "text_presence",
]
