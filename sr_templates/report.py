"""The report as plain data: what the writer encodes and the reader decodes.

A :class:`Report` holds the report *content* (texts, coded findings, language, addenda) and the
*document state* of the SR it was read from (SOP Instance UID, predecessors, flags, observers,
verifiers, algorithm). The writer encodes the content; it derives the document state from its
own arguments (the previous SR, the amender, the sign-off) and ignores those fields of the
Report it is given, so that ``dataclasses.replace(read_report(sr), findings_text=...)`` can
be passed straight to :func:`sr_templates.build_amended_sr`. Reading an SR written from a
Report gives back that Report with the document state filled in.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum

from sr_templates.codes import CHEXPERT_LABELS, FINDING_CONCEPTS
from sr_templates.context import AlgorithmInfo, PersonInfo, VerifierInfo

__all__ = ["Addendum", "CompletionFlag", "Finding", "Presence", "Report", "VerificationFlag"]


class Presence(StrEnum):
    """Whether a finding is present, as in the CheXpert labels (1, 0, -1, blank).

    ``NOT_ASSESSED`` is CheXpert's blank: the report does not say. A draft codes every label,
    so a finding its text does not mention is coded as not assessed rather than left out.
    """

    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"
    NOT_ASSESSED = "not_assessed"


class CompletionFlag(StrEnum):
    """Completion Flag (0040,A491) of an SR document."""

    PARTIAL = "PARTIAL"
    COMPLETE = "COMPLETE"


class VerificationFlag(StrEnum):
    """Verification Flag (0040,A493) of an SR document."""

    UNVERIFIED = "UNVERIFIED"
    VERIFIED = "VERIFIED"


@dataclass(frozen=True)
class Finding:
    """One coded CheXpert finding.

    Parameters
    ----------
    label
        One of :data:`sr_templates.codes.CHEXPERT_LABELS`, e.g. ``"Pleural Effusion"``.
    presence
        Present, absent, uncertain or not assessed; a string such as ``"present"`` is
        converted.
    probability
        The model's probability that the finding is present, in [0, 1]; ``None`` when the
        finding was not produced by the model (e.g. added by a radiologist).
    observer
        The person who chose the presence, when a reader chose it rather than it following
        the report text (written as the finding's own person observer context, TID 1002).
    """

    label: str
    presence: Presence
    probability: float | None = None
    observer: PersonInfo | None = None

    def __post_init__(self) -> None:
        if self.label not in FINDING_CONCEPTS:
            raise ValueError(
                f"unknown finding label {self.label!r}; expected one of {list(CHEXPERT_LABELS)}"
            )
        object.__setattr__(self, "presence", Presence(self.presence))
        if self.probability is not None:
            if isinstance(self.probability, bool) or not isinstance(self.probability, int | float):
                raise TypeError(
                    f"probability of {self.label!r} must be a float, "
                    f"got {type(self.probability).__name__}"
                )
            probability = float(self.probability)
            if math.isnan(probability) or not 0.0 <= probability <= 1.0:
                raise ValueError(
                    f"probability of {self.label!r} must lie in [0, 1], got {probability}"
                )
            object.__setattr__(self, "probability", probability)
        if self.observer is not None and not isinstance(self.observer, PersonInfo):
            raise TypeError(
                f"observer of {self.label!r} must be a PersonInfo or None, "
                f"got {type(self.observer).__name__}"
            )


@dataclass(frozen=True)
class Addendum:
    """A text appended to a signed report in a later SR (:func:`sr_templates.build_addendum_sr`).

    Leading and trailing white space of the text is removed, as for the report texts; the
    writer rejects an empty text.

    Parameters
    ----------
    text
        The addendum's text.
    author
        Who wrote the addendum (the person observer of the addendum section), if recorded.
    datetime
        When the addendum was written (Observation DateTime of the addendum section), if
        recorded.
    """

    text: str
    author: PersonInfo | None = None
    datetime: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Addendum.text must be a str, got {type(self.text).__name__}")
        object.__setattr__(self, "text", self.text.strip())
        if self.author is not None and not isinstance(self.author, PersonInfo):
            raise TypeError(
                f"Addendum.author must be a PersonInfo or None, got {type(self.author).__name__}"
            )
        if self.datetime is not None and not isinstance(self.datetime, dt.datetime):
            raise TypeError(
                "Addendum.datetime must be a datetime.datetime or None, "
                f"got {type(self.datetime).__name__}"
            )


@dataclass(frozen=True)
class Report:
    """A chest X-ray report: content plus the state of the SR document it lives in.

    Leading and trailing white space of the texts is removed: it carries no meaning, and
    DICOM does not preserve trailing spaces of text values. An empty ``indication`` becomes
    ``None``. The texts may be empty here (a generic SR may have no impression); the writer
    rejects empty findings or impression text.

    Parameters
    ----------
    findings_text
        Narrative of the Findings section.
    impression_text
        Narrative of the Impression section.
    indication
        Clinical indication (reason for the examination), if known.
    findings
        Coded findings, in the order they are written. A draft holds all 14 CheXpert labels.
    language
        RFC 5646 tag of the language of the texts, e.g. ``"en"``, ``"de"``, ``"ja"``; ``None``
        when an SR read from elsewhere does not say.
    addenda
        Addenda appended to the signed report, oldest first. Only
        :func:`sr_templates.build_addendum_sr` writes them; the draft and amendment builders
        refuse a Report that has any, since a report is amended before it is signed.
    sop_instance_uid
        Document state, set by the reader: SOP Instance UID of the SR.
    predecessors
        Document state: SOP Instance UIDs of the SRs this one replaces, oldest first.
    completion
        Document state: Completion Flag.
    verification
        Document state: Verification Flag.
    observers
        Document state: person observers at document level (who amended the report).
    verifiers
        Document state: verifying observers (who signed the report off).
    algorithm
        Document state: the algorithm that drafted the report, if recorded.
    """

    findings_text: str
    impression_text: str
    indication: str | None = None
    findings: tuple[Finding, ...] = ()
    language: str | None = "en"
    addenda: tuple[Addendum, ...] = ()
    sop_instance_uid: str | None = None
    predecessors: tuple[str, ...] = ()
    completion: CompletionFlag = CompletionFlag.PARTIAL
    verification: VerificationFlag = VerificationFlag.UNVERIFIED
    observers: tuple[PersonInfo, ...] = ()
    verifiers: tuple[VerifierInfo, ...] = ()
    algorithm: AlgorithmInfo | None = None

    def __post_init__(self) -> None:
        for name in ("findings_text", "impression_text"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Report.{name} must be a str, got {type(value).__name__}")
            object.__setattr__(self, name, value.strip())
        if self.indication is not None:
            if not isinstance(self.indication, str):
                raise TypeError("Report.indication must be a str or None")
            object.__setattr__(self, "indication", self.indication.strip() or None)
        findings = tuple(self.findings)
        for finding in findings:
            if not isinstance(finding, Finding):
                raise TypeError(
                    f"Report.findings must hold Finding objects, got {type(finding).__name__}"
                )
        object.__setattr__(self, "findings", findings)
        addenda = tuple(self.addenda)
        for addendum in addenda:
            if not isinstance(addendum, Addendum):
                raise TypeError(
                    f"Report.addenda must hold Addendum objects, got {type(addendum).__name__}"
                )
        object.__setattr__(self, "addenda", addenda)
        object.__setattr__(self, "predecessors", tuple(str(uid) for uid in self.predecessors))
        object.__setattr__(self, "observers", tuple(self.observers))
        object.__setattr__(self, "verifiers", tuple(self.verifiers))
        object.__setattr__(self, "completion", CompletionFlag(self.completion))
        object.__setattr__(self, "verification", VerificationFlag(self.verification))

    def finding(self, label: str) -> Finding | None:
        """Return the coded finding for `label`, or ``None`` if the report has none."""
        for finding in self.findings:
            if finding.label == label:
                return finding
        return None
