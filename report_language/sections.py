"""Free-text radiology reports split into indication, findings and impression.

MIMIC-CXR reports are semi-structured: a header line per section (``INDICATION:``,
``FINDINGS:``, ``IMPRESSION:``, ...) followed by wrapped text. Headers are matched at the start
of a line, case-insensitively, with common synonyms (``CLINICAL HISTORY``, ``CONCLUSION``);
any other all-capitals ``HEADER:`` ends the section before it. Sections may be missing; a
section that occurs twice (an addendum) is joined.

The model writes its reports in the same form (``FINDINGS: ...`` / ``IMPRESSION: ...``), so
the training data loaders and the node's SR writer share this parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Section = Literal["indication", "findings", "impression", "other"]

#: Header text (upper case, single spaces) -> section it opens.
SECTION_HEADERS: Final[dict[str, Section]] = {
    "INDICATION": "indication",
    "INDICATIONS": "indication",
    "CLINICAL INDICATION": "indication",
    "HISTORY": "indication",
    "CLINICAL HISTORY": "indication",
    "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication",
    "FINDINGS": "findings",
    "FINDING": "findings",
    "FINDINGS AND IMPRESSION": "findings",
    "IMPRESSION": "impression",
    "IMPRESSIONS": "impression",
    "CONCLUSION": "impression",
    "CONCLUSIONS": "impression",
    "SUMMARY": "impression",
    "EXAMINATION": "other",
    "EXAM": "other",
    "TECHNIQUE": "other",
    "COMPARISON": "other",
    "COMPARISONS": "other",
    "NOTIFICATION": "other",
    "RECOMMENDATION": "other",
    "RECOMMENDATIONS": "other",
    "WET READ": "other",
    "ADDENDUM": "other",
    "PROCEDURE": "other",
}

_HEADER: Final = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /()&-]{1,40}?)[ \t]*:", re.MULTILINE)
_SPACE: Final = re.compile(r"\s+")


@dataclass(frozen=True)
class ReportSections:
    """The sections of one report the training data uses (empty string when missing)."""

    indication: str
    findings: str
    impression: str

    @property
    def has_text(self) -> bool:
        """Whether the report has findings or an impression."""
        return bool(self.findings or self.impression)


def _classify(name: str) -> Section | None:
    key = _SPACE.sub(" ", name.strip()).upper()
    if key in SECTION_HEADERS:
        return SECTION_HEADERS[key]
    if name.strip().isupper():  # an unknown all-capitals header still ends the section
        return "other"
    return None


def clean_text(text: str) -> str:
    """Collapse whitespace (line wraps, indentation) to single spaces."""
    return _SPACE.sub(" ", text).strip()


def parse_report(text: str) -> ReportSections:
    """Split a free-text report into indication, findings and impression.

    Parameters
    ----------
    text
        The report as stored (for MIMIC-CXR one ``s<study_id>.txt`` file).

    Returns
    -------
    ReportSections
        Whitespace-normalised sections; text before the first header is ignored.

    Examples
    --------
    >>> parse_report("FINDINGS: Clear lungs.\\n impression:  Normal.").impression
    'Normal.'
    """
    headers = [
        (match, section)
        for match in _HEADER.finditer(text)
        if (section := _classify(match.group("name"))) is not None
    ]
    parts: dict[Section, list[str]] = {"indication": [], "findings": [], "impression": []}
    for index, (match, section) in enumerate(headers):
        end = headers[index + 1][0].start() if index + 1 < len(headers) else len(text)
        body = clean_text(text[match.end() : end])
        if section != "other" and body:
            parts[section].append(body)
    return ReportSections(
        indication=" ".join(parts["indication"]),
        findings=" ".join(parts["findings"]),
        impression=" ".join(parts["impression"]),
    )


def format_report(findings: str, impression: str) -> str:
    """Report text in the layout :func:`parse_report` reads: ``FINDINGS: ...`` and, when
    there is one, ``IMPRESSION: ...`` on the next line."""
    if impression:
        return f"FINDINGS: {findings}\nIMPRESSION: {impression}"
    return f"FINDINGS: {findings}"
