"""Checks of report content before it is written: texts and coded findings.

The writer calls these before building anything, so that a bad report fails with a specific
:class:`~sr_templates.errors.SRError` and no half-built SR exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from report_language.labels import COMPATIBLE_WITH_NO_FINDING, NO_FINDING
from sr_templates._vr import TEXT_CONTROLS, disallowed_character
from sr_templates.codes import CHEXPERT_LABELS
from sr_templates.errors import (
    EmptyReportError,
    InconsistentFindingsError,
    InvalidTextError,
    TextTooLongError,
)
from sr_templates.report import Finding, Presence, Report

#: Largest value of a TEXT content item: Text Value (0040,A160) has VR UT, whose value length
#: is at most 2**32 - 2 bytes (PS3.5 Table 6.2-1), including the padding to even length.
TEXT_VALUE_MAX_BYTES = 0xFFFFFFFE


def check_max_text_bytes(max_text_bytes: int) -> None:
    """Check the ``max_text_bytes`` argument of the writer.

    Raises
    ------
    TypeError
        If it is not an int.
    ValueError
        If it is smaller than 2 or larger than :data:`TEXT_VALUE_MAX_BYTES`.
    """
    if isinstance(max_text_bytes, bool) or not isinstance(max_text_bytes, int):
        raise TypeError("max_text_bytes must be an int")
    if not 2 <= max_text_bytes <= TEXT_VALUE_MAX_BYTES:
        raise ValueError(
            f"max_text_bytes must lie in [2, {TEXT_VALUE_MAX_BYTES}] (the UT limit), "
            f"got {max_text_bytes}"
        )


def check_text(
    field: str,
    value: str,
    *,
    required: bool,
    max_bytes: int,
    why_required: str = "a report SR needs a findings and an impression text",
) -> None:
    """Check that a report text can be written as the value of a TEXT content item.

    Parameters
    ----------
    field
        Name of the report field, used in error messages.
    value
        The text, already stripped of surrounding white space by :class:`Report`.
    required
        Whether an empty text is an error.
    max_bytes
        Largest allowed size in bytes of the UTF-8 encoded, even-padded value.
    why_required
        Why the text is required, appended to the message of an empty text.

    Raises
    ------
    EmptyReportError
        If the text is required but empty.
    InvalidTextError
        If the text holds a control character other than CR, LF and FF, or a lone surrogate.
    TextTooLongError
        If the encoded text is larger than `max_bytes`.
    """
    if not value:
        if required:
            raise EmptyReportError(f"{field} is empty; {why_required}")
        return
    index = disallowed_character(value, TEXT_CONTROLS)
    if index is not None:
        raise InvalidTextError(
            f"{field} contains the character U+{ord(value[index]):04X} at index {index}; "
            "a DICOM text value may hold only graphic characters, CR, LF and FF"
        )
    size = len(value.encode("utf-8"))
    size += size % 2  # DICOM pads values to an even length
    if size > max_bytes:
        raise TextTooLongError(field, size, max_bytes)


def check_report_texts(report: Report, *, max_bytes: int) -> None:
    """Check findings, impression and indication of a report before writing it.

    Raises
    ------
    EmptyReportError, InvalidTextError, TextTooLongError
        See :func:`check_text`.
    """
    check_text("findings_text", report.findings_text, required=True, max_bytes=max_bytes)
    check_text("impression_text", report.impression_text, required=True, max_bytes=max_bytes)
    if report.indication is not None:
        check_text("indication", report.indication, required=False, max_bytes=max_bytes)


def check_findings(
    findings: Sequence[Finding], *, require_all_labels: bool, require_probability: bool
) -> None:
    """Check that coded findings are complete and consistent with each other.

    Parameters
    ----------
    findings
        The coded findings of a report.
    require_all_labels
        Whether every CheXpert label must appear (a draft reports all 14).
    require_probability
        Whether every finding must carry the model's probability, or none of them does (a
        draft: a model without findings head codes its findings from its text alone).

    Raises
    ------
    InconsistentFindingsError
        If a label appears twice, a required label or probability is missing, or "No Finding"
        is present together with a present pathology.
    """
    counts = Counter(finding.label for finding in findings)
    repeated = sorted(label for label, count in counts.items() if count > 1)
    if repeated:
        raise InconsistentFindingsError(f"coded findings repeat the label(s) {repeated}")
    if require_all_labels:
        missing = [label for label in CHEXPERT_LABELS if label not in counts]
        if missing:
            raise InconsistentFindingsError(
                f"a draft must code all 14 CheXpert findings; missing {missing}"
            )
    if require_probability:
        without = [finding.label for finding in findings if finding.probability is None]
        if without and len(without) < len(findings):
            raise InconsistentFindingsError(
                "a draft gives the model's probability of every finding or of none; "
                f"missing for {without}"
            )
    present = {finding.label for finding in findings if finding.presence is Presence.PRESENT}
    if NO_FINDING in present:
        conflicting = sorted(present - COMPATIBLE_WITH_NO_FINDING)
        if conflicting:
            raise InconsistentFindingsError(
                f"'No Finding' is present together with present finding(s) {conflicting}"
            )
