"""Report-generation targets with the listed findings stated first.

Reference reports state their observations in any order, often negatives first ("No
pneumothorax. No focal consolidation. ... Moderate cardiomegaly."). A small LLM trained on
them learns the style long before it learns to state every finding its prompt lists: in the
2026-11-24 demo build it wrote the findings it was given with a macro F1 of 0.66, opening
most reports with a run of negatives and leaving positives out (docs/demo_model.md).

``findings_first`` reorders the findings section of a training target so that the sentences
stating a listed finding come first, in the order the prompt lists them, followed by the
other sentences in their original order (pertinent positives first, as many radiologists
write). Which sentence states which finding is read by the rule-based labeler. The text of
every sentence and the impression stay as written, so the labels of the target do not
change; only the order the model learns to write in does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Final, Literal

from report_language.labeler import label_report
from report_language.labels import POSITIVE
from report_language.sections import format_report, parse_report
from training.records import StudyRecord

TargetOrder = Literal["as_written", "findings_first"]

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")
_NUMBERED: Final = re.compile(r"^\d+\.$")


def split_report_sentences(text: str) -> list[str]:
    """Sentences of a section, keeping their text; "1." list numbers stay with their item."""
    pieces = [piece for piece in _SENTENCE_END.split(text.strip()) if piece]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _NUMBERED.match(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def findings_first(findings: str, listed: Sequence[str]) -> str:
    """The findings section with the sentences stating ``listed`` findings first.

    Parameters
    ----------
    findings
        The findings section's text.
    listed
        The positive findings the prompt lists, in its order.

    Returns
    -------
    str
        The same sentences, reordered: each sentence that states a listed finding positively
        goes to the position of the first such finding in ``listed`` (ties keep their order),
        the others follow in their original order.

    Examples
    --------
    >>> findings_first("No pneumothorax. Small left effusion. Mild cardiomegaly.",
    ...                ["Cardiomegaly", "Pleural Effusion"])
    'Mild cardiomegaly. Small left effusion. No pneumothorax.'
    """
    rank = {label: index for index, label in enumerate(listed)}
    keyed: list[tuple[int, int, str]] = []
    for position, sentence in enumerate(split_report_sentences(findings)):
        stated = [
            rank[label]
            for label, value in label_report(sentence).items()
            if value == POSITIVE and label in rank
        ]
        keyed.append((min(stated) if stated else len(rank), position, sentence))
    return " ".join(sentence for _, _, sentence in sorted(keyed))


def reorder_report(report: str, listed: Sequence[str]) -> str:
    """Report text with the findings sentences stating ``listed`` first (impression kept)."""
    sections = parse_report(report)
    return format_report(findings_first(sections.findings, listed), sections.impression)


def order_report(record: StudyRecord, listed: Sequence[str], order: TargetOrder) -> str:
    """The record's report target (:attr:`StudyRecord.report`) in the requested order.

    Parameters
    ----------
    record
        The study.
    listed
        The positive findings the prompt lists.
    order
        ``as_written`` keeps the report; ``findings_first`` applies :func:`findings_first`
        to the findings section.
    """
    if order == "findings_first":
        record = dataclasses.replace(record, findings=findings_first(record.findings, listed))
    return record.report


__all__ = [
    "TargetOrder",
    "findings_first",
    "order_report",
    "reorder_report",
    "split_report_sentences",
]
