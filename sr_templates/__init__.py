"""DICOM Structured Reports for AI-drafted chest X-ray reports and their amendments.

The node drafts a report with the vision-language model, stores it as an *unverified draft
SR* in the image study (:func:`build_draft_sr`), and replaces it with *amended SRs*
(:func:`build_amended_sr`) as the radiologist edits and finally signs it off. A signed report
never changes; an *addendum SR* (:func:`build_addendum_sr`) repeats it unchanged, adds the
addendum, names it as predecessor and is signed off itself. A parser
(:func:`read_report`) turns these SRs, and other TID 2000 style SRs, back into a
:class:`Report`. The package depends only on pydicom, highdicom and :mod:`report_language`
(the CheXpert label names), and builds every SR with highdicom's classes.

Which IOD
---------
The SRs are **Comprehensive SR** (1.2.840.10008.5.1.4.1.1.88.33), content template TID 2000.

* The content needs TEXT, CODE, NUM, IMAGE, PNAME and UIDREF items and by-value
  relationships, and no spatial coordinates. Enhanced SR could hold it as well, and
  Comprehensive 3D SR adds only SCOORD3D, which a chest radiograph report does not need.
* Comprehensive SR is the SR class PACS, viewers and RIS interfaces support most widely;
  Enhanced SR and Comprehensive 3D SR are less often among the storage SOP classes a PACS
  accepts (DCMTK's storescu even needs ``-R`` to propose Comprehensive 3D SR at all).
* Comprehensive SR allows by-reference relationships, which addenda could use to point at
  the report's items. The tree written today (addenda included) uses by-value relationships
  only, so moving to Enhanced SR would need no change to the content.

See ``docs/sr.md`` for the content tree, the codes and the error policy.
"""

from sr_templates.codes import CHEXPERT_LABELS, FINDING_CONCEPTS
from sr_templates.context import AlgorithmInfo, PersonInfo, VerifierInfo, WorklistInfo
from sr_templates.errors import (
    EmptyReportError,
    InconsistentFindingsError,
    InconsistentSourcesError,
    InvalidTextError,
    MissingSourceAttributeError,
    NotSignedError,
    SRError,
    TextTooLongError,
    UnsupportedDocumentError,
    UnsupportedSourceError,
    WorklistMismatchError,
)
from sr_templates.reader import read_report
from sr_templates.report import (
    Addendum,
    CompletionFlag,
    Finding,
    Presence,
    Report,
    VerificationFlag,
)
from sr_templates.writer import (
    ADDENDUM_SERIES_DESCRIPTION,
    ADDENDUM_SERIES_NUMBER,
    AMENDED_SERIES_DESCRIPTION,
    AMENDED_SERIES_NUMBER,
    DEFAULT_MANUFACTURER,
    DRAFT_SERIES_DESCRIPTION,
    DRAFT_SERIES_NUMBER,
    SPECIFIC_CHARACTER_SET,
    TEXT_VALUE_MAX_BYTES,
    VERIFIED_SERIES_DESCRIPTION,
    build_addendum_sr,
    build_amended_sr,
    build_draft_sr,
)

__all__ = [
    "ADDENDUM_SERIES_DESCRIPTION",
    "ADDENDUM_SERIES_NUMBER",
    "AMENDED_SERIES_DESCRIPTION",
    "AMENDED_SERIES_NUMBER",
    "CHEXPERT_LABELS",
    "DEFAULT_MANUFACTURER",
    "DRAFT_SERIES_DESCRIPTION",
    "DRAFT_SERIES_NUMBER",
    "FINDING_CONCEPTS",
    "SPECIFIC_CHARACTER_SET",
    "TEXT_VALUE_MAX_BYTES",
    "VERIFIED_SERIES_DESCRIPTION",
    "Addendum",
    "AlgorithmInfo",
    "CompletionFlag",
    "EmptyReportError",
    "Finding",
    "InconsistentFindingsError",
    "InconsistentSourcesError",
    "InvalidTextError",
    "MissingSourceAttributeError",
    "NotSignedError",
    "PersonInfo",
    "Presence",
    "Report",
    "SRError",
    "TextTooLongError",
    "UnsupportedDocumentError",
    "UnsupportedSourceError",
    "VerificationFlag",
    "VerifierInfo",
    "WorklistInfo",
    "WorklistMismatchError",
    "build_addendum_sr",
    "build_amended_sr",
    "build_draft_sr",
    "read_report",
]
