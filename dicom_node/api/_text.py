"""Report text in the dialog: the model's prompt context, its answers, and diffs.

* :func:`clean_generated` makes model output storable in an SR: the TEXT value type allows
  no control characters other than CR, LF and FF, and a language model can emit any byte.
* :func:`report_context` lays out the current report as the instruct data did
  (``FINDINGS: ...\\nIMPRESSION: ...``), so the model sees the format it was trained on.
* :func:`parse_revision` turns the model's answer to a revision request into findings and
  impression texts (see the function for the rule).
* :func:`word_diff` compares two versions word by word (for highlighting) and
  :func:`unified_report_diff` sentence by sentence (a unified diff, for the command line),
  both with the bounded diff of :mod:`._diff`, so a long report cannot make a view of the
  study slow.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dicom_node.api._diff import diff_opcodes, unified_diff
from dicom_node.store.dialog import MessageKind

#: Line breaks kept in generated text; every other control character is dropped.
_KEPT_CONTROLS = frozenset("\n")
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w", re.UNICODE)

DiffOp = Literal["equal", "insert", "delete"]


@dataclass(frozen=True)
class DiffSegment:
    """A run of text that is unchanged, inserted or deleted."""

    op: DiffOp
    text: str


def clean_generated(text: str, *, strip: bool = True) -> str:
    """Make generated text storable as an SR TEXT value.

    CR LF and CR become LF, tabs become spaces, and other control characters (Unicode Cc)
    and lone surrogates are removed; with `strip`, surrounding white space is removed too.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    kept = "".join(
        char
        for char in text
        if char in _KEPT_CONTROLS or unicodedata.category(char) not in ("Cc", "Cs")
    )
    return kept.strip() if strip else kept


def report_context(findings_text: str, impression_text: str, kind: MessageKind) -> str:
    """The current report as given to the model.

    A summary request sees the findings only (its answer is the impression, as in the
    instruct data); every other message sees findings and impression.
    """
    if kind is MessageKind.SUMMARY:
        return f"FINDINGS: {findings_text.strip()}"
    return f"FINDINGS: {findings_text.strip()}\nIMPRESSION: {impression_text.strip()}"


def parse_revision(
    generated: str, kind: MessageKind, findings_text: str, impression_text: str
) -> tuple[str, str]:
    """Split the model's revised report into findings and impression texts.

    The sections are read with :func:`report_language.sections.parse_report`, the parser
    the draft job and the training data use (``FINDINGS:``, ``IMPRESSION:`` and their
    synonyms such as ``CONCLUSION:``; white space collapsed; text before the first heading
    ignored). Then:

    * a **summary** becomes the new impression (its ``IMPRESSION:`` section, else the whole
      answer); the findings stay;
    * an answer **without headings** is the new findings text; the impression stays;
    * otherwise each section the answer has replaces the current one, and a section it
      lacks stays.

    Parameters
    ----------
    generated
        The model's answer, already cleaned (:func:`clean_generated`).
    kind
        The request's kind (not :attr:`MessageKind.QUESTION`).
    findings_text, impression_text
        The current report's texts.

    Returns
    -------
    tuple of str
        ``(findings_text, impression_text)``, stripped; either may be empty when the model
        gave an empty answer.

    Raises
    ------
    ValueError
        For :attr:`MessageKind.QUESTION`, which has no revision.
    """
    from report_language.sections import clean_text, parse_report

    if kind is MessageKind.QUESTION:
        raise ValueError("a question has no revision")
    sections = parse_report(generated)
    if kind is MessageKind.SUMMARY:
        summary = sections.impression or sections.findings or clean_text(generated)
        return findings_text.strip(), summary
    if not sections.has_text:
        return clean_text(generated), impression_text.strip()
    return (
        sections.findings or findings_text.strip(),
        sections.impression or impression_text.strip(),
    )


def word_diff(old: str, new: str) -> list[DiffSegment]:
    """Word-level diff of two texts; white space is kept, so the segments join to the texts.

    Joining the ``equal`` and ``delete`` segments gives `old`; joining ``equal`` and
    ``insert`` gives `new`. White space and punctuation left unchanged between two changes
    are shown as part of the change, so a rewritten phrase is one deletion and one
    insertion rather than words interleaved with the spaces they share. The cost is
    bounded (:func:`._diff.diff_opcodes`): very different long texts come out as one
    replacement of their differing middle.
    """
    a = _TOKEN.findall(old)
    b = _TOKEN.findall(new)
    segments: list[DiffSegment] = []
    for tag, i1, i2, j1, j2 in diff_opcodes(a, b):
        if tag == "equal":
            _append(segments, "equal", "".join(a[i1:i2]))
            continue
        if tag in ("delete", "replace"):
            _append(segments, "delete", "".join(a[i1:i2]))
        if tag in ("insert", "replace"):
            _append(segments, "insert", "".join(b[j1:j2]))
    return _join_changes(segments)


def _join_changes(segments: list[DiffSegment]) -> list[DiffSegment]:
    """Merge changes separated only by white space or punctuation into one change.

    White space the deleted and inserted text of a change start or end with alike goes
    back to the unchanged text around it.
    """
    joined: list[DiffSegment] = []
    index = 0
    while index < len(segments):
        if segments[index].op == "equal":
            _append(joined, "equal", segments[index].text)
            index += 1
            continue
        deleted: list[str] = []
        inserted: list[str] = []
        while index < len(segments):
            segment = segments[index]
            if segment.op == "equal":
                # Segments alternate, so a filler with a segment after it sits between two
                # changes.
                if _WORD.search(segment.text) or index + 1 == len(segments):
                    break
                deleted.append(segment.text)
                inserted.append(segment.text)
            else:
                (deleted if segment.op == "delete" else inserted).append(segment.text)
            index += 1
        old, new = "".join(deleted), "".join(inserted)
        lead = _common_space(old, new)
        trail = _common_space(old[lead:][::-1], new[lead:][::-1])
        _append(joined, "equal", old[:lead])
        _append(joined, "delete", old[lead : len(old) - trail])
        _append(joined, "insert", new[lead : len(new) - trail])
        _append(joined, "equal", old[len(old) - trail :])
    return joined


def _append(segments: list[DiffSegment], op: DiffOp, text: str) -> None:
    if not text:
        return
    if segments and segments[-1].op == op:
        segments[-1] = DiffSegment(op, segments[-1].text + text)
    else:
        segments.append(DiffSegment(op, text))


def _common_space(a: str, b: str) -> int:
    """Length of the white space both texts start with, character for character."""
    length = 0
    while length < len(a) and length < len(b) and a[length] == b[length] and a[length].isspace():
        length += 1
    return length


def unified_report_diff(
    old: tuple[str, str], new: tuple[str, str], old_label: str, new_label: str
) -> str:
    """A unified diff of two reports ``(findings, impression)``, one sentence per line."""
    return unified_diff(_report_lines(*old), _report_lines(*new), old_label, new_label)


def _report_lines(findings_text: str, impression_text: str) -> list[str]:
    lines = ["FINDINGS:\n"]
    lines.extend(f"{sentence}\n" for sentence in _sentences(findings_text))
    lines.append("IMPRESSION:\n")
    lines.extend(f"{sentence}\n" for sentence in _sentences(impression_text))
    return lines


def _sentences(text: str) -> Sequence[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [part.strip() for part in parts if part.strip()]


__all__ = [
    "DiffSegment",
    "clean_generated",
    "parse_revision",
    "report_context",
    "unified_report_diff",
    "word_diff",
]
