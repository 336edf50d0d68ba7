"""Read a report SR back into a :class:`~sr_templates.report.Report`.

The reader understands the SRs this package writes exactly (write, then read, gives the same
Report) and reads other TID 2000 style SRs on a best-effort basis:

* Sections are recognised by their heading codes (DCM and LOINC variants of Findings,
  Impressions or Conclusions, and Clinical Information, History or Indications).
* The narrative of a section is its TEXT items (and NUM items, rendered as value and unit)
  joined by a line break in a SEPARATE container and by a space in a CONTINUOUS one.
* When an SR has no Findings section, all narrative outside the recognised sections becomes
  the findings text (e.g. pydicom's ``test-SR.dcm``). When it has one, narrative in other,
  unrecognised sections is left out and a warning says how many items were left out.
* A CODE item anywhere under a section whose value is one of the CheXpert concepts (or an
  alias in :data:`sr_templates.codes.FINDING_CODE_ALIASES`) becomes a coded finding; its
  presence modifier and probability are read when present (a finding without presence
  modifier is present).
* By-reference relationships (items without a Value Type) are skipped.
* An Addendum section of the root (CID 7001, LOINC 55107-7 or the older DCM 121078) becomes
  an :class:`~sr_templates.report.Addendum`: its narrative, its person observer and its
  Observation DateTime (inherited from the root, else the Content Date and Time, when the
  section has none, as PS3.3 defines). Coded findings inside an addendum are not part of the
  report's findings; a warning says how many were left out.

Values that do not fit the dataclasses (e.g. a verifier name not in ``Family^Given`` form)
are left out with a warning that names the field, never the value.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.valuerep import DT

from sr_templates import codes
from sr_templates._privacy import uid_digest
from sr_templates._sources import observation_datetime
from sr_templates.context import AlgorithmInfo, PersonInfo, VerifierInfo
from sr_templates.errors import UnsupportedDocumentError
from sr_templates.report import (
    Addendum,
    CompletionFlag,
    Finding,
    Presence,
    Report,
    VerificationFlag,
)

__all__ = ["read_report"]

logger = logging.getLogger(__name__)

_CONTAINS = "CONTAINS"
_HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
_HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
_HAS_PROPERTIES = "HAS PROPERTIES"

# Units of a probability NUM the reader accepts, and the factor to [0, 1].
_PROBABILITY_UNITS = {
    codes.code_key(codes.PROBABILITY_UNIT): 1.0,
    ("UCUM", "1"): 1.0,
    ("UCUM", "{ratio}"): 1.0,
    ("UCUM", "%"): 0.01,
}


def _key(code_item: Dataset | None) -> tuple[str, str] | None:
    """Identity of a code sequence item: ``(scheme designator, value)``, normalized."""
    if code_item is None:
        return None
    scheme = code_item.get("CodingSchemeDesignator")
    value = (
        code_item.get("CodeValue")
        or code_item.get("LongCodeValue")
        or code_item.get("URNCodeValue")
    )
    if not scheme or not value:
        return None
    return codes.normalized_code_key(str(scheme), str(value))


def _first(item: Dataset, keyword: str) -> Dataset | None:
    sequence = item.get(keyword)
    if not sequence:
        return None
    first: Dataset = sequence[0]
    return first


def _name(item: Dataset) -> tuple[str, str] | None:
    return _key(_first(item, "ConceptNameCodeSequence"))


def _code_value(item: Dataset) -> tuple[str, str] | None:
    return _key(_first(item, "ConceptCodeSequence"))


def _children(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        if "ValueType" in child:  # by-reference relationships have no value type
            yield child


def _text(item: Dataset) -> str:
    return str(item.get("TextValue", "") or "")


def _num_value(item: Dataset) -> float | None:
    measured = _first(item, "MeasuredValueSequence")
    if measured is None:
        return None
    if "FloatingPointValue" in measured:
        return float(measured.FloatingPointValue)
    if measured.get("NumericValue") not in (None, ""):
        return float(measured.NumericValue)
    return None


def _num_unit(item: Dataset) -> tuple[str, str] | None:
    measured = _first(item, "MeasuredValueSequence")
    return None if measured is None else _key(_first(measured, "MeasurementUnitsCodeSequence"))


def _render_num(item: Dataset, continuous: bool) -> str:
    measured = _first(item, "MeasuredValueSequence")
    if measured is None or measured.get("NumericValue") in (None, ""):
        return ""
    text = str(measured.NumericValue).strip()
    unit = _first(measured, "MeasurementUnitsCodeSequence")
    unit_value = str(unit.get("CodeValue", "")) if unit is not None else ""
    if unit_value and unit_value != "1":
        text = f"{text} {unit_value}"
    name = _first(item, "ConceptNameCodeSequence")
    if not continuous and name is not None and name.get("CodeMeaning"):
        text = f"{name.CodeMeaning}: {text}"
    return text


def _piece(item: Dataset, continuous: bool) -> str:
    """Narrative of one CONTAINS item of a container with the given continuity."""
    value_type = item.ValueType
    if value_type == "TEXT":
        return _text(item).strip()
    if value_type == "NUM":
        return _render_num(item, continuous)
    if value_type == "CONTAINER":
        return _narrative(item)
    if value_type == "CODE" and continuous:
        # In running text a coded term is a word of the sentence; elsewhere it is structured
        # data (a coded finding), not narrative.
        concept = _first(item, "ConceptCodeSequence")
        return str(concept.get("CodeMeaning", "")) if concept is not None else ""
    return ""


def _narrative(container: Dataset) -> str:
    """Text of a container: TEXT and NUM items, recursively, joined by its continuity."""
    continuous = container.get("ContinuityOfContent") == "CONTINUOUS"
    pieces = [
        _piece(child, continuous)
        for child in _children(container)
        if child.get("RelationshipType") == _CONTAINS
    ]
    return (" " if continuous else "\n").join(piece for piece in pieces if piece)


def _presence(key: tuple[str, str] | None) -> Presence | None:
    if key in codes.PRESENT_CODES:
        return Presence.PRESENT
    if key in codes.ABSENCE_CODES:
        return Presence.ABSENT
    if key in codes.UNCERTAIN_CODES:
        return Presence.UNCERTAIN
    if key in codes.NOT_ASSESSED_CODES:
        return Presence.NOT_ASSESSED
    return None


def _finding(item: Dataset) -> Finding | None:
    value = _code_value(item)
    label = codes.label_for_code_key(value) if value is not None else None
    if label is None:
        return None
    presence = Presence.PRESENT
    probability: float | None = None
    for child in _children(item):
        relationship, value_type = child.get("RelationshipType"), child.ValueType
        if relationship == _HAS_CONCEPT_MOD and value_type == "CODE":
            if _name(child) == codes.code_key(codes.PRESENCE) or _code_value(child) in (
                codes.PRESENCE_CODES
            ):
                found = _presence(_code_value(child))
                if found is not None:
                    presence = found
        elif relationship == _HAS_PROPERTIES and value_type == "NUM":
            if _name(child) != codes.code_key(codes.PROBABILITY):
                continue
            factor = _PROBABILITY_UNITS.get(_num_unit(child) or ("", ""))
            number = _num_value(child)
            if factor is None or number is None or not 0.0 <= number * factor <= 1.0:
                logger.warning("probability of %r has an unknown unit or range; left out", label)
                continue
            probability = number * factor
    persons = _context_persons(item)
    return Finding(
        label=label,
        presence=presence,
        probability=probability,
        observer=persons[0] if persons else None,
    )


def _coded_findings(container: Dataset) -> Iterator[Finding]:
    for child in _children(container):
        if child.get("RelationshipType") != _CONTAINS:
            continue
        if child.ValueType == "CONTAINER":
            yield from _coded_findings(child)
        elif child.ValueType == "CODE":
            finding = _finding(child)
            if finding is not None:
                yield finding


@dataclass
class _Observer:
    kind: str  # "person" or "device"
    values: dict[tuple[str, str], str] = field(default_factory=dict)


def _observers(items: Sequence[Dataset]) -> list[_Observer]:
    """Group the HAS OBS CONTEXT items of the root (TID 1002) into observers."""
    person_keys = {
        codes.code_key(codes.PERSON_OBSERVER_NAME),
        codes.code_key(codes.PERSON_OBSERVER_ORGANIZATION),
        codes.code_key(codes.PERSON_OBSERVER_LOGIN_NAME),
    }
    observers: list[_Observer] = []
    current: _Observer | None = None
    for item in items:
        name = _name(item)
        if name == codes.code_key(codes.OBSERVER_TYPE):
            kind = (
                "device"
                if _code_value(item) == codes.code_key(codes.OBSERVER_TYPE_DEVICE)
                else "person"
            )
            current = _Observer(kind)
            observers.append(current)
            continue
        if name is None:
            continue
        if name == codes.code_key(codes.PERSON_OBSERVER_NAME) and (
            current is None or current.kind != "person" or name in current.values
        ):
            # A person observer without (or after another) Observer Type item.
            current = _Observer("person")
            observers.append(current)
        if current is None or (current.kind == "person") != (name in person_keys):
            continue
        if item.ValueType == "PNAME":
            current.values[name] = str(item.get("PersonName", "") or "")
        elif item.ValueType in ("TEXT", "UIDREF"):
            current.values[name] = str(item.get("TextValue") or item.get("UID") or "")
    return observers


def _person(observer: _Observer) -> PersonInfo | None:
    name = observer.values.get(codes.code_key(codes.PERSON_OBSERVER_NAME))
    if not name:
        return None
    try:
        return PersonInfo(
            name=name,
            organization=observer.values.get(codes.code_key(codes.PERSON_OBSERVER_ORGANIZATION)),
            login_name=observer.values.get(codes.code_key(codes.PERSON_OBSERVER_LOGIN_NAME)),
        )
    except (TypeError, ValueError) as error:
        logger.warning("a person observer was left out: %s", _field_only(error))
        return None


def _algorithm(
    root_items: Sequence[Dataset], observers: Sequence[_Observer]
) -> AlgorithmInfo | None:
    values: dict[tuple[str, str], str] = {}
    parameters: dict[str, str] = {}
    for item in root_items:
        if item.get("RelationshipType") != _HAS_CONCEPT_MOD or item.ValueType != "TEXT":
            continue
        name = _name(item)
        if name == codes.code_key(codes.ALGORITHM_PARAMETERS):
            key, _, value = _text(item).partition("=")
            parameters[key] = value
        elif name is not None:
            values.setdefault(name, _text(item))
    algorithm_name = values.get(codes.code_key(codes.ALGORITHM_NAME))
    version = values.get(codes.code_key(codes.ALGORITHM_VERSION))
    if not algorithm_name or not version:
        if any(observer.kind == "device" for observer in observers):
            logger.debug("SR has a device observer but no algorithm identification (TID 4019)")
        return None
    try:
        return AlgorithmInfo(
            name=algorithm_name,
            version=version,
            parameters=parameters,
            manufacturer=values.get(codes.code_key(codes.ALGORITHM_MANUFACTURER)),
        )
    except (TypeError, ValueError) as error:
        logger.warning("the algorithm identification was left out: %s", _field_only(error))
        return None


def _verifiers(ds: Dataset) -> tuple[VerifierInfo, ...]:
    verifiers: list[VerifierInfo] = []
    for item in ds.get("VerifyingObserverSequence", []):
        try:
            verifiers.append(
                VerifierInfo(
                    name=str(item.get("VerifyingObserverName", "") or ""),
                    organization=str(item.get("VerifyingOrganization", "") or ""),
                )
            )
        except (TypeError, ValueError) as error:
            logger.warning("a verifying observer was left out: %s", _field_only(error))
    return tuple(verifiers)


def _predecessors(ds: Dataset) -> tuple[str, ...]:
    return tuple(
        str(instance.ReferencedSOPInstanceUID)
        for study in ds.get("PredecessorDocumentsSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
    )


def _datetime(value: str) -> dt.datetime | None:
    """A DICOM DT value as a datetime (aware when it has a UTC offset), or None if invalid."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = DT(value)
    except ValueError:
        logger.warning("an Observation DateTime is not a valid DT value; left out")
        return None
    return dt.datetime(
        parsed.year,
        parsed.month,
        parsed.day,
        parsed.hour,
        parsed.minute,
        parsed.second,
        parsed.microsecond,
        tzinfo=parsed.tzinfo,
    )


def _context_persons(container: Dataset | Sequence[Dataset]) -> tuple[PersonInfo, ...]:
    """The person observers in the HAS OBS CONTEXT items of a container (or of root items)."""
    items = list(_children(container)) if isinstance(container, Dataset) else container
    observers = _observers(
        [item for item in items if item.get("RelationshipType") == _HAS_OBS_CONTEXT]
    )
    return tuple(
        person
        for person in (_person(observer) for observer in observers if observer.kind == "person")
        if person is not None
    )


def _addendum(section: Dataset, inherited_datetime: str) -> Addendum:
    persons = _context_persons(section)
    observed = str(section.get("ObservationDateTime", "") or "").strip() or inherited_datetime
    left_out = sum(1 for _ in _coded_findings(section))
    if left_out:
        logger.warning(
            "%d coded finding(s) inside an addendum are not part of the report's findings",
            left_out,
        )
    return Addendum(
        text=_narrative(section),
        author=persons[0] if persons else None,
        datetime=_datetime(observed),
    )


def _field_only(error: Exception) -> str:
    # Error messages of the dataclasses name the field first ("PersonInfo.name must ...");
    # keep only that part, in case a message ever quotes a value.
    message = str(error)
    return message.split(" ", 1)[0] + " is not valid"


def _flag(ds: Dataset, keyword: str, allowed: Sequence[str], default: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().upper()
    return value if value in allowed else default


def read_report(ds: Dataset) -> Report:
    """Read a report SR into a :class:`~sr_templates.report.Report`.

    Parameters
    ----------
    ds
        An SR document: one written by this package, or another SR whose content resembles
        TID 2000 (Comprehensive, Enhanced, Comprehensive 3D or Basic Text SR).

    Returns
    -------
    Report
        Content and document state of the SR. For an SR written by this package it equals
        the Report it was written from, with the document state filled in.

    Raises
    ------
    UnsupportedDocumentError
        If `ds` is not an SR document (Modality ``SR`` with a root CONTAINER).
    TypeError
        If `ds` is not a pydicom Dataset.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if ds.get("Modality") != "SR" or ds.get("ValueType") != "CONTAINER":
        raise UnsupportedDocumentError(
            "the dataset is not an SR document (Modality SR with a root CONTAINER)"
        )
    root_items = list(_children(ds))
    language: str | None = None
    findings_texts: list[str] = []
    impression_texts: list[str] = []
    clinical_texts: list[str] = []
    other_texts: list[str] = []
    findings: list[Finding] = []
    addenda: list[Addendum] = []
    has_findings_section = False
    for item in root_items:
        relationship, value_type, name = item.get("RelationshipType"), item.ValueType, _name(item)
        if relationship == _HAS_CONCEPT_MOD and value_type == "CODE":
            if name == codes.code_key(codes.LANGUAGE_OF_CONTENT):
                language = (_code_value(item) or ("", ""))[1] or None
        elif relationship == _CONTAINS and value_type == "CONTAINER":
            if name in codes.ADDENDUM_HEADINGS:
                addenda.append(_addendum(item, observation_datetime(ds)))
                continue
            if name in codes.FINDINGS_HEADINGS:
                has_findings_section = True
                findings_texts.append(_narrative(item))
            elif name in codes.IMPRESSION_HEADINGS:
                impression_texts.append(_narrative(item))
            elif name in codes.CLINICAL_INFORMATION_HEADINGS:
                clinical_texts.append(_narrative(item))
            else:
                other_texts.append(_narrative(item))
            findings.extend(_coded_findings(item))
        elif relationship == _CONTAINS and value_type in ("TEXT", "NUM"):
            other_texts.append(_piece(item, ds.get("ContinuityOfContent") == "CONTINUOUS"))
        elif relationship == _CONTAINS and value_type == "CODE":
            finding = _finding(item)
            if finding is not None:
                findings.append(finding)
    other_texts = [text for text in other_texts if text]
    if has_findings_section:
        findings_text = "\n".join(text for text in findings_texts if text)
        if other_texts:
            logger.warning(
                "SR %s: %d narrative item(s) outside the Findings, Impression and Clinical "
                "Information sections are not part of the report",
                uid_digest(ds.get("SOPInstanceUID")),
                len(other_texts),
            )
    else:
        findings_text = "\n".join(other_texts)
    unique: dict[str, Finding] = {}
    for finding in findings:
        if finding.label in unique:
            logger.warning(
                "coded finding %r appears more than once; the first is kept", finding.label
            )
            continue
        unique[finding.label] = finding
    observers = _observers(
        [item for item in root_items if item.get("RelationshipType") == _HAS_OBS_CONTEXT]
    )
    persons = _context_persons(root_items)
    report = Report(
        findings_text=findings_text,
        impression_text="\n".join(text for text in impression_texts if text),
        indication="\n".join(text for text in clinical_texts if text) or None,
        findings=tuple(unique.values()),
        language=language,
        addenda=tuple(addenda),
        sop_instance_uid=str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None,
        predecessors=_predecessors(ds),
        completion=CompletionFlag(
            _flag(ds, "CompletionFlag", list(CompletionFlag), CompletionFlag.PARTIAL)
        ),
        verification=VerificationFlag(
            _flag(ds, "VerificationFlag", list(VerificationFlag), VerificationFlag.UNVERIFIED)
        ),
        observers=persons,
        verifiers=_verifiers(ds),
        algorithm=_algorithm(root_items, observers),
    )
    logger.debug(
        "read SR %s: %d coded finding(s), %d addend(a), %d predecessor(s)",
        uid_digest(report.sop_instance_uid),
        len(report.findings),
        len(report.addenda),
        len(report.predecessors),
    )
    return report
