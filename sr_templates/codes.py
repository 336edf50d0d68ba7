"""Coded concepts used in the chest X-ray report SRs.

Every code the writer puts into an SR lives here, once; the writer and the reader refer to
these constants and never repeat a code inline. Where the DICOM standard (PS3.16) defines a
context group for a concept, the code is taken from it and the group is named in a comment.

Terminology decisions for the 14 CheXpert labels (:data:`FINDING_CONCEPTS`):

* SNOMED CT (``SCT``) where SNOMED CT has a concept that means what the CheXpert label means:
  Atelectasis, Cardiomegaly, Consolidation, Edema (pulmonary edema), Fracture, No Finding
  ("No abnormality detected"), Pleural Effusion, Pneumonia, Pneumothorax, Support Devices
  ("Biomedical device"; DICOM's chest CAD context group CID 6138 codes devices seen on a chest
  radiograph the same way, as physical objects).
* Lung Opacity uses the DICOM code (112001, DCM, "Opacity") of CID 6104 "Abnormal Opacity
  Finding or Feature", the chest CAD vocabulary; SNOMED CT has no general "opacity of lung"
  finding and RadLex "opacity" (RID28530) is equally unrestricted to the lung.
* Enlarged Cardiomediastinum, Lung Lesion and Pleural Other have no exact SNOMED CT or RadLex
  class: RadLex has no class for an enlarged cardiomediastinal silhouette, and its nearest
  classes for the other two ("pulmonary nodule", "pleural plaque") are narrower than the
  CheXpert classes. A narrower code would assert something the model never said, so these
  three use a private coding scheme, :data:`CHEXPERT_SCHEME` (``99CHEXPERT``; PS3.16 reserves
  designators starting with ``99`` for private schemes), which the SR declares in its Coding
  Scheme Identification Sequence (:data:`CHEXPERT_SCHEME_NAME` and following).

These choices should be reviewed by a terminologist before clinical use; changing a code here
changes what the writer emits, and the reader keeps accepting the old code only if it is added
to :data:`FINDING_CODE_ALIASES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from highdicom.sr import CodedConcept
from pydicom.sr.coding import snomed_mapping as _snomed_mapping

from report_language.labels import CHEXPERT_LABELS

__all__ = [
    "ABSENCE_CODES",
    "ABSENT",
    "ADDENDED_REPORT",
    "ADDENDUM",
    "ADDENDUM_HEADINGS",
    "ADDENDUM_TEXT",
    "ALGORITHM_MANUFACTURER",
    "ALGORITHM_NAME",
    "ALGORITHM_PARAMETERS",
    "ALGORITHM_VERSION",
    "CHEXPERT_LABELS",
    "CHEXPERT_SCHEME",
    "CHEXPERT_SCHEME_NAME",
    "CHEXPERT_SCHEME_ORGANIZATION",
    "CHEXPERT_SCHEME_VERSION",
    "CLINICAL_INFORMATION",
    "CLINICAL_INFORMATION_HEADINGS",
    "DEVICE_OBSERVER_MANUFACTURER",
    "DEVICE_OBSERVER_MODEL_NAME",
    "DEVICE_OBSERVER_NAME",
    "DEVICE_OBSERVER_UID",
    "DIAGNOSTIC_IMAGING_REPORT",
    "FINDING",
    "FINDINGS",
    "FINDINGS_HEADINGS",
    "FINDING_CODE_ALIASES",
    "FINDING_CONCEPTS",
    "IMPRESSION",
    "IMPRESSIONS",
    "IMPRESSION_HEADINGS",
    "INDICATIONS_FOR_PROCEDURE",
    "LANGUAGE_NAMES",
    "LANGUAGE_OF_CONTENT",
    "NOT_ASSESSED_CODES",
    "NOT_EVALUATED",
    "OBSERVER_TYPE",
    "OBSERVER_TYPE_DEVICE",
    "OBSERVER_TYPE_PERSON",
    "PERSON_OBSERVER_LOGIN_NAME",
    "PERSON_OBSERVER_NAME",
    "PERSON_OBSERVER_ORGANIZATION",
    "PRESENCE",
    "PRESENCE_CODES",
    "PRESENT",
    "PRESENT_CODES",
    "PROBABILITY",
    "PROBABILITY_UNIT",
    "SOURCE_IMAGE",
    "UNCERTAIN_CODES",
    "UNDETERMINED",
    "code_key",
    "label_for_code_key",
    "label_for_concept",
    "language_concept",
    "normalized_code_key",
]


_SNOMED_RT_TO_CT: Mapping[str, str] = MappingProxyType(dict(_snomed_mapping["SRT"]))


def normalized_code_key(scheme_designator: str, value: str) -> tuple[str, str]:
    """Return ``(coding scheme designator, code value)``, with SNOMED RT mapped to SNOMED CT.

    SRs written before 2019 use SNOMED RT codes (scheme ``SRT``); PS3.16 maps each of them to
    a SNOMED CT code, which pydicom ships. Mapping them lets the reader recognise old SRs.

    Parameters
    ----------
    scheme_designator
        Coding Scheme Designator of the code.
    value
        Code Value (or Long Code Value, or URN Code Value).

    Returns
    -------
    tuple of str
        The normalized scheme designator and code value.
    """
    if scheme_designator == "SRT":
        mapped = _SNOMED_RT_TO_CT.get(value)
        if mapped is not None:
            return ("SCT", mapped)
    return (scheme_designator, value)


def code_key(concept: CodedConcept) -> tuple[str, str]:
    """Return the identity of a coded concept: ``(coding scheme designator, code value)``.

    Parameters
    ----------
    concept
        Any coded concept; the code meaning is ignored, as DICOM requires.

    Returns
    -------
    tuple of str
        The scheme designator and the code value, normalized by :func:`normalized_code_key`.
    """
    return normalized_code_key(str(concept.scheme_designator), str(concept.value))


# --- document title and headings (TID 2000, CID 7000, CID 7001, CID 7002) -----------------

#: Document title, CID 7000 "Diagnostic Imaging Report Document Title".
DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic imaging report")

#: Section heading "Findings" (DICOM code, as the project's issue 4 specifies).
FINDINGS = CodedConcept("121070", "DCM", "Findings")
#: Section heading "Impressions".
IMPRESSIONS = CodedConcept("121072", "DCM", "Impressions")
#: Section heading for the clinical information (the indication), CID 7001.
CLINICAL_INFORMATION = CodedConcept("55752-0", "LN", "Clinical Information")

#: Concept name of the findings TEXT item and of each coded finding, CID 7002.
FINDING = CodedConcept("121071", "DCM", "Finding")
#: Concept name of the impression TEXT item, CID 7002.
IMPRESSION = CodedConcept("121073", "DCM", "Impression")
#: Concept name of the indication TEXT item inside the clinical information section.
INDICATIONS_FOR_PROCEDURE = CodedConcept("18785-6", "LN", "Indications for Procedure")

# Headings the reader accepts for each part of a report. Current editions of CID 7001 use
# LOINC codes; older SRs (and ours, following issue 4) use the DCM ones.
FINDINGS_HEADINGS: frozenset[tuple[str, str]] = frozenset({code_key(FINDINGS), ("LN", "59776-5")})
IMPRESSION_HEADINGS: frozenset[tuple[str, str]] = frozenset(
    {
        code_key(IMPRESSIONS),
        ("LN", "19005-8"),  # Impressions
        ("DCM", "121076"),  # Conclusions
        ("LN", "55110-1"),  # Conclusions
    }
)
CLINICAL_INFORMATION_HEADINGS: frozenset[tuple[str, str]] = frozenset(
    {
        code_key(CLINICAL_INFORMATION),
        code_key(INDICATIONS_FOR_PROCEDURE),
        ("DCM", "121109"),  # Indications for Procedure
        ("LN", "11329-0"),  # History
        ("DCM", "121060"),  # History
    }
)

#: Section heading of an addendum to a signed report, CID 7001. Current editions of CID 7001
#: list the LOINC code; (121078, DCM, "Addendum") is the code older editions listed.
ADDENDUM = CodedConcept("55107-7", "LN", "Addendum")
#: Concept name of the TEXT item holding an addendum's text. TID 2002 takes TEXT concept names
#: from CID 7002, a *baseline* group; each of its members classifies the statement (finding,
#: impression, recommendation, ...), which an addendum need not be, so the unclassified DCM
#: "Comment" is used instead (an extension of CID 7002; see docs/sr.md, "Addenda").
ADDENDUM_TEXT = CodedConcept("121106", "DCM", "Comment")
#: Purpose of reference of the signed SR in an addendum SR's Predecessor Documents Sequence,
#: CID 7009 "Purpose of Reference to Predecessor Report" (HL7 v2 ADDENDUM).
ADDENDED_REPORT = CodedConcept("121361", "DCM", "Addended report")
ADDENDUM_HEADINGS: frozenset[tuple[str, str]] = frozenset({code_key(ADDENDUM), ("DCM", "121078")})

# --- language (TID 1204) ------------------------------------------------------------------

#: Concept name of the language item, TID 1204.
LANGUAGE_OF_CONTENT = CodedConcept("121049", "DCM", "Language of Content Item and Descendants")

#: Code meanings for common RFC 5646 language tags; other well-formed tags are accepted and
#: use the tag itself as meaning.
LANGUAGE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "en": "English",
        "en-US": "English (United States)",
        "en-GB": "English (United Kingdom)",
        "de": "German",
        "de-DE": "German (Germany)",
        "fr": "French",
        "es": "Spanish",
        "it": "Italian",
        "nl": "Dutch",
        "pt": "Portuguese",
        "ja": "Japanese",
        "zh": "Chinese",
        "ko": "Korean",
    }
)

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def language_concept(tag: str) -> CodedConcept:
    """Return the RFC 5646 coded concept for a language tag.

    Parameters
    ----------
    tag
        An RFC 5646 (BCP 47) language tag such as ``"en"``, ``"de-DE"`` or ``"ja"``.

    Returns
    -------
    highdicom.sr.CodedConcept
        A new concept with scheme designator ``RFC5646``.

    Raises
    ------
    ValueError
        If `tag` is not a well-formed language tag or is longer than 16 characters.
    """
    if not _LANGUAGE_TAG.match(tag) or len(tag) > 16:
        raise ValueError(f"language must be an RFC 5646 tag such as 'en' or 'de-DE', got {tag!r}")
    return CodedConcept(tag, "RFC5646", LANGUAGE_NAMES.get(tag, tag))


# --- observers (TID 1002, TID 1003, TID 1004) and algorithm (TID 4019) ---------------------

#: Concept names the reader looks for; the writer uses highdicom's templates, which emit them.
OBSERVER_TYPE = CodedConcept("121005", "DCM", "Observer Type")
OBSERVER_TYPE_PERSON = CodedConcept("121006", "DCM", "Person")
OBSERVER_TYPE_DEVICE = CodedConcept("121007", "DCM", "Device")
PERSON_OBSERVER_NAME = CodedConcept("121008", "DCM", "Person Observer Name")
PERSON_OBSERVER_ORGANIZATION = CodedConcept("121009", "DCM", "Person Observer's Organization Name")
PERSON_OBSERVER_LOGIN_NAME = CodedConcept("128774", "DCM", "Person Observer's Login Name")
DEVICE_OBSERVER_UID = CodedConcept("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME = CodedConcept("121013", "DCM", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = CodedConcept("121014", "DCM", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = CodedConcept("121015", "DCM", "Device Observer Model Name")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = CodedConcept("111002", "DCM", "Algorithm Parameters")
ALGORITHM_MANUFACTURER = CodedConcept("122405", "DCM", "Algorithm Manufacturer")

# --- coded findings -----------------------------------------------------------------------

#: Concept name of the presence modifier of a coded finding.
PRESENCE = CodedConcept("705057003", "SCT", "Presence")
#: Presence values, CID 240 "Present/Absent".
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
UNDETERMINED = CodedConcept("373068000", "SCT", "Undetermined")
#: "The report does not say": CID 240 is extensible, and SNOMED CT's "Not evaluated" (also in
#: CID 3703) is the value it lacks. Omitting the presence modifier would not do: a coded
#: finding without one asserts the finding.
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not evaluated")

# Presence values the reader accepts: CID 240, the DCM equivalents and RadLex.
PRESENT_CODES: frozenset[tuple[str, str]] = frozenset(
    {code_key(PRESENT), ("DCM", "121053"), ("RADLEX", "RID28472")}
)
ABSENCE_CODES: frozenset[tuple[str, str]] = frozenset(
    {code_key(ABSENT), ("SCT", "2667000"), ("DCM", "121054"), ("RADLEX", "RID28473")}
)
UNCERTAIN_CODES: frozenset[tuple[str, str]] = frozenset(
    {
        code_key(UNDETERMINED),
        ("SCT", "82334004"),  # Indeterminate
        ("DCM", "121059"),  # Presence Undetermined
        ("RADLEX", "RID39110"),  # indeterminate
    }
)
NOT_ASSESSED_CODES: frozenset[tuple[str, str]] = frozenset(
    {code_key(NOT_EVALUATED), ("SCT", "261665006")}  # Unknown
)
PRESENCE_CODES = PRESENT_CODES | ABSENCE_CODES | UNCERTAIN_CODES | NOT_ASSESSED_CODES

#: Concept name of the model's probability that a finding is present (a NUM item).
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
#: UCUM unit of the probability: a dimensionless number in [0, 1], annotated for readers.
PROBABILITY_UNIT = CodedConcept("{probability}", "UCUM", "probability")

#: Purpose of reference of the IMAGE items a finding is inferred from, CID 7003.
SOURCE_IMAGE = CodedConcept("121112", "DCM", "Source of Measurement")

#: Private coding scheme for CheXpert classes without an exact standard concept.
CHEXPERT_SCHEME = "99CHEXPERT"
#: Name, version and responsible organization of that scheme, declared in the Coding
#: Scheme Identification Sequence of every SR that uses it.
CHEXPERT_SCHEME_NAME = "CheXpert chest radiograph observation classes"
CHEXPERT_SCHEME_VERSION = "1.0"
CHEXPERT_SCHEME_ORGANIZATION = "cxr-dicom-node project"


#: Label -> coded concept written as the value of each coded finding.
FINDING_CONCEPTS: Mapping[str, CodedConcept] = MappingProxyType(
    {
        "Atelectasis": CodedConcept("46621007", "SCT", "Atelectasis"),
        "Cardiomegaly": CodedConcept("8186001", "SCT", "Cardiomegaly"),
        "Consolidation": CodedConcept("95436008", "SCT", "Lung consolidation"),
        "Edema": CodedConcept("19242006", "SCT", "Pulmonary edema"),  # CID 3700
        "Enlarged Cardiomediastinum": CodedConcept(
            "ENL-CARDIOMED", CHEXPERT_SCHEME, "Enlarged cardiomediastinum"
        ),
        "Fracture": CodedConcept("125605004", "SCT", "Fracture of bone"),
        "Lung Lesion": CodedConcept("LUNG-LESION", CHEXPERT_SCHEME, "Lung lesion"),
        "Lung Opacity": CodedConcept("112001", "DCM", "Opacity"),  # CID 6104
        "No Finding": CodedConcept("281900007", "SCT", "No abnormality detected"),
        "Pleural Effusion": CodedConcept("60046008", "SCT", "Pleural effusion"),
        "Pleural Other": CodedConcept(
            "PLEURAL-OTHER", CHEXPERT_SCHEME, "Pleural abnormality other than effusion"
        ),
        "Pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
        "Pneumothorax": CodedConcept("36118008", "SCT", "Pneumothorax"),  # CID 6102
        "Support Devices": CodedConcept("63653004", "SCT", "Biomedical device"),
    }
)

#: Further codes the reader maps to a label (e.g. codes used by older versions of this
#: package or by other writers); the writer never emits them.
FINDING_CODE_ALIASES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("RADLEX", "RID28493"): "Atelectasis",
        ("RADLEX", "RID43255"): "Consolidation",
        ("RADLEX", "RID4866"): "Edema",
        ("RADLEX", "RID4650"): "Fracture",
        ("RADLEX", "RID28530"): "Lung Opacity",
        ("RADLEX", "RID34539"): "Pleural Effusion",
        ("RADLEX", "RID5350"): "Pneumonia",
        ("RADLEX", "RID5352"): "Pneumothorax",
        ("RADLEX", "RID29033"): "Support Devices",
    }
)

_LABEL_BY_CODE: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        **{code_key(concept): label for label, concept in FINDING_CONCEPTS.items()},
        **FINDING_CODE_ALIASES,
    }
)


def label_for_code_key(key: tuple[str, str]) -> str | None:
    """Return the CheXpert label for a ``(scheme designator, code value)`` key, if any.

    Parameters
    ----------
    key
        A key as returned by :func:`code_key` or :func:`normalized_code_key`.

    Returns
    -------
    str or None
        One of :data:`CHEXPERT_LABELS`, or ``None`` when the code is not a known finding.
    """
    return _LABEL_BY_CODE.get(key)


def label_for_concept(concept: CodedConcept) -> str | None:
    """Return the CheXpert label a coded concept stands for, if any.

    Parameters
    ----------
    concept
        The value of a CODE content item.

    Returns
    -------
    str or None
        One of :data:`CHEXPERT_LABELS`, or ``None`` when the concept is not a known finding.
    """
    return _LABEL_BY_CODE.get(code_key(concept))
