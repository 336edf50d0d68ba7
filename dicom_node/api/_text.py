"""Report text in the dialog: the model's prompt context, its answers, and diffs.

* :func:`clean_generated` makes model output storable in an SR: the TEXT value type allows
  no control characters other than CR, LF and FF, and a language model can emit any byte.
* :func:`report_context` lays out the current report as the instruct data did
  (``FINDINGS: ...\\nIMPRESSION: ...``), so the model sees the format it was trained on.
* :func:`parse_revision` turns the model's answer to a revision request into findings and
  impression texts (see the function for the rule).
* :func:`report_diff` compares two versions word by word (for highlighting) and line by line
  (a unified diff, for the command line), using :mod:`difflib`.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..store.dialog import MessageKind

#: Line breaks kept in generated text; every other control character is dropped.
_KEPT_CONTROLS = frozenset("\n")
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)

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

    The sections are read with :func:`inference.report_sections.parse_report`, the parser
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
    from inference.report_sections import clean_text, parse_report

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
    ``insert`` gives `new`.
    """
    a = _TOKEN.findall(old)
    b = _TOKEN.findall(new)
    segments: list[DiffSegment] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            _append(segments, "equal", "".join(a[i1:i2]))
            continue
        if tag in ("delete", "replace"):
            _append(segments, "delete", "".join(a[i1:i2]))
        if tag in ("insert", "replace"):
            _append(segments, "insert", "".join(b[j1:j2]))
    return segments


def _append(segments: list[DiffSegment], op: DiffOp, text: str) -> None:
    if not text:
        return
    if segments and segments[-1].op == op:
        segments[-1] = DiffSegment(op, segments[-1].text + text)
    else:
        segments.append(DiffSegment(op, text))


def unified_report_diff(
    old: tuple[str, str], new: tuple[str, str], old_label: str, new_label: str
) -> str:
    """A unified diff of two reports ``(findings, impression)``, one sentence per line."""
    return "".join(
        difflib.unified_diff(
            _report_lines(*old), _report_lines(*new), old_label, new_label, lineterm="\n"
        )
    )


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
