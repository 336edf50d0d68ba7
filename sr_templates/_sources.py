"""The images and documents an SR is built from: checks and references.

highdicom's SR classes take the patient and study attributes from the first *evidence*
dataset and list every evidence dataset in the Current Requested Procedure Evidence Sequence.
For a draft the evidence is the source images themselves. For an amendment the images are
usually gone, but the previous SR names them; this module turns those names back into
minimal reference datasets (the four identifying UIDs, plus the patient and study attributes
of the previous SR on the first one), which is all highdicom reads from evidence and from
previous versions. These reference datasets are inputs to highdicom, never part of the SR.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)

from sr_templates._privacy import uid_digest
from sr_templates.errors import (
    InconsistentSourcesError,
    MissingSourceAttributeError,
    UnsupportedDocumentError,
    UnsupportedSourceError,
)

#: UIDs every source must carry, non-empty, for an IMAGE item and the evidence sequence.
IDENTIFYING_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Patient and study attributes (type 2: present, possibly empty) that the SR copies so that
#: it lands in the patient's study. highdicom reads each of them from the first source.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)

#: Attributes of the Patient, General Study, Patient Study and Clinical Trial Subject/Study
#: modules that an amendment carries over from the previous SR.
_CARRIED_OVER_KEYWORDS = (
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "QualityControlSubject",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "SmokingStatus",
    "AdmissionID",
    # Clinical Trial Subject and Clinical Trial Study
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)

#: SR classes whose content a Comprehensive SR can hold (Comprehensive 3D SR only without
#: SCOORD3D items, which :func:`check_copyable_content` checks).
_COPYABLE_SR_CLASSES = frozenset(
    {BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage}
)
#: Value types of the Comprehensive SR IOD (PS3.3 A.35.3.3.1.1).
_COMPREHENSIVE_VALUE_TYPES = frozenset(
    "TEXT CODE NUM DATETIME DATE TIME UIDREF PNAME COMPOSITE IMAGE WAVEFORM SCOORD TCOORD "
    "CONTAINER".split()
)

_WHY_IDENTITY = "which the SR needs to reference it"
_WHY_PATIENT_STUDY = "which the SR must copy to land in the same patient and study"


class InstanceReference(NamedTuple):
    """The four UIDs that identify a composite instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def _describe(tag_keyword: str) -> str:
    tag = tag_for_keyword(tag_keyword)
    if tag is None:  # pragma: no cover - keywords above are all in the dictionary
        return tag_keyword
    return f"{tag_keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _require(dataset: Dataset, keyword: str, source: str, *, non_empty: bool, why: str) -> None:
    if keyword not in dataset:
        raise MissingSourceAttributeError(_describe(keyword), source, why)
    if non_empty and not str(dataset[keyword].value or "").strip():
        raise MissingSourceAttributeError(_describe(keyword), source, f"(it is empty) {why}")


def is_image_sop_class(sop_class_uid: str) -> bool:
    """Return whether a SOP Class UID is a standard image storage SOP class."""
    return "ImageStorage" in UID(sop_class_uid).keyword


def check_sources(sources: Sequence[Dataset]) -> None:
    """Check that source images can be referenced and belong to one patient and study.

    Parameters
    ----------
    sources
        The images the report was drafted from (any image SOP classes: CR, DX, SC, ...).

    Raises
    ------
    ValueError
        If `sources` is empty.
    TypeError
        If a source is not a pydicom Dataset.
    MissingSourceAttributeError
        If a source lacks an identifying UID or a patient or study attribute.
    UnsupportedSourceError
        If a source is not an image.
    InconsistentSourcesError
        If the sources belong to different studies or patients, or repeat an instance.
    """
    if len(sources) == 0:
        raise ValueError("source_images must hold at least one image")
    for index, source in enumerate(sources):
        if not isinstance(source, Dataset):
            raise TypeError(
                f"source image #{index} must be a pydicom Dataset, got {type(source).__name__}"
            )
        label = f"source image #{index}"
        for keyword in IDENTIFYING_KEYWORDS:
            _require(source, keyword, label, non_empty=True, why=_WHY_IDENTITY)
        for keyword in PATIENT_STUDY_KEYWORDS:
            _require(source, keyword, label, non_empty=False, why=_WHY_PATIENT_STUDY)
        if not is_image_sop_class(source.SOPClassUID):
            raise UnsupportedSourceError(
                f"{label} has SOP class {source.SOPClassUID} "
                f"({UID(source.SOPClassUID).name or 'unknown'}), which is not an image"
            )
    first = sources[0]
    for index, source in enumerate(sources[1:], start=1):
        for keyword in ("StudyInstanceUID", "PatientID"):
            if str(source.get(keyword, "")) != str(first.get(keyword, "")):
                raise InconsistentSourcesError(
                    f"source image #{index} has a different {keyword} than source image #0; "
                    "one SR reports on one study of one patient"
                )
    seen: set[str] = set()
    for index, source in enumerate(sources):
        if source.SOPInstanceUID in seen:
            raise InconsistentSourcesError(
                f"source image #{index} repeats SOP instance {uid_digest(source.SOPInstanceUID)} "
                "(digest)"
            )
        seen.add(source.SOPInstanceUID)


def check_previous(previous: Dataset) -> None:
    """Check that a previous SR carries the patient and study attributes an amendment copies.

    Raises
    ------
    MissingSourceAttributeError
        If one is missing.
    """
    for keyword in IDENTIFYING_KEYWORDS:
        _require(previous, keyword, "the previous SR", non_empty=True, why=_WHY_IDENTITY)
    for keyword in PATIENT_STUDY_KEYWORDS:
        _require(previous, keyword, "the previous SR", non_empty=False, why=_WHY_PATIENT_STUDY)


def _evidence_references(previous: Dataset) -> Iterator[InstanceReference]:
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in previous.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for instance in series.get("ReferencedSOPSequence", []):
                    yield InstanceReference(
                        str(study.StudyInstanceUID),
                        str(series.SeriesInstanceUID),
                        str(instance.ReferencedSOPClassUID),
                        str(instance.ReferencedSOPInstanceUID),
                    )


def _image_items(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        if item.get("ValueType") == "IMAGE":
            yield item
        yield from _image_items(item.get("ContentSequence", []))


def previous_image_references(previous: Dataset) -> list[InstanceReference]:
    """Return the images a previous SR references in its content, in document order.

    Parameters
    ----------
    previous
        The SR being amended.

    Returns
    -------
    list of InstanceReference
        One entry per distinct image, with study and series taken from the SR's evidence
        sequences.

    Raises
    ------
    UnsupportedDocumentError
        If the SR references an image that its evidence sequences do not list, or no image.
    """
    by_instance = {ref.sop_instance_uid: ref for ref in _evidence_references(previous)}
    references: dict[str, InstanceReference] = {}
    for item in _image_items(previous.get("ContentSequence", [])):
        for sop in item.get("ReferencedSOPSequence", []):
            instance_uid = str(sop.ReferencedSOPInstanceUID)
            if instance_uid in references:
                continue
            evidence = by_instance.get(instance_uid)
            if evidence is None:
                raise UnsupportedDocumentError(
                    "the previous SR references an image that its evidence sequences do not "
                    f"list (SOP instance digest {uid_digest(instance_uid)})"
                )
            references[instance_uid] = evidence._replace(
                sop_class_uid=str(sop.ReferencedSOPClassUID)
            )
    if not references:
        raise UnsupportedDocumentError(
            "the previous SR references no images, so the amended findings could not be "
            "linked to the images they are inferred from"
        )
    return list(references.values())


def reference_dataset(reference: InstanceReference) -> Dataset:
    """Return a dataset holding only the four UIDs of `reference` (input for highdicom)."""
    dataset = Dataset()
    dataset.StudyInstanceUID = reference.study_instance_uid
    dataset.SeriesInstanceUID = reference.series_instance_uid
    dataset.SOPClassUID = reference.sop_class_uid
    dataset.SOPInstanceUID = reference.sop_instance_uid
    return dataset


def amendment_evidence(previous: Dataset, references: Sequence[InstanceReference]) -> list[Dataset]:
    """Return evidence datasets for an amendment of `previous`.

    The first one is an image of the previous SR's study and also carries the patient and
    study attributes of `previous`, from which highdicom fills the amendment's Patient and
    Study modules (and takes its Study Instance UID).

    Raises
    ------
    UnsupportedDocumentError
        If none of the referenced images belongs to the previous SR's study.
    """
    study_uid = str(previous.StudyInstanceUID)
    ordered = sorted(references, key=lambda ref: ref.study_instance_uid != study_uid)
    if not ordered or ordered[0].study_instance_uid != study_uid:
        raise UnsupportedDocumentError(
            "the previous SR references no image of its own study, so an amendment could not "
            "be filed in that study"
        )
    evidence = [reference_dataset(reference) for reference in ordered]
    for keyword in _CARRIED_OVER_KEYWORDS:
        if keyword in previous and keyword != "StudyInstanceUID":
            evidence[0][keyword] = copy.deepcopy(previous[keyword])
    return evidence


def predecessor_chain(previous: Dataset) -> list[Dataset]:
    """Return reference datasets for every document an amendment of `previous` replaces.

    These are the predecessors `previous` lists itself, oldest first, followed by
    `previous`, so that every SR in a chain of amendments names the whole chain.
    """
    chain: list[Dataset] = []
    for study in previous.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for instance in series.get("ReferencedSOPSequence", []):
                chain.append(
                    reference_dataset(
                        InstanceReference(
                            str(study.StudyInstanceUID),
                            str(series.SeriesInstanceUID),
                            str(instance.ReferencedSOPClassUID),
                            str(instance.ReferencedSOPInstanceUID),
                        )
                    )
                )
    chain.append(
        reference_dataset(
            InstanceReference(
                str(previous.StudyInstanceUID),
                str(previous.SeriesInstanceUID),
                str(previous.SOPClassUID),
                str(previous.SOPInstanceUID),
            )
        )
    )
    return chain


def check_copyable_content(signed: Dataset) -> None:
    """Check that the content tree of `signed` can be copied into a Comprehensive SR.

    Raises
    ------
    UnsupportedDocumentError
        If `signed` is not a Basic Text, Enhanced, Comprehensive or Comprehensive 3D SR, or
        its tree holds a value type Comprehensive SR does not allow (SCOORD3D) or a
        by-reference relationship (which highdicom cannot copy as a content item).
    """
    sop_class = str(signed.get("SOPClassUID", ""))
    if sop_class not in _COPYABLE_SR_CLASSES:
        raise UnsupportedDocumentError(
            f"signed has SOP class {sop_class} ({UID(sop_class).name or 'unknown'}); an "
            "addendum copies the content of a Basic Text, Enhanced, Comprehensive or "
            "Comprehensive 3D SR only"
        )

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            value_type = item.get("ValueType")
            if value_type is None:
                raise UnsupportedDocumentError(
                    "signed holds a by-reference relationship; an addendum copies by-value "
                    "content only"
                )
            if value_type not in _COMPREHENSIVE_VALUE_TYPES:
                raise UnsupportedDocumentError(
                    f"signed holds a {value_type} content item, which a Comprehensive SR "
                    "(the addendum SR) cannot hold"
                )
            walk(item.get("ContentSequence", []))

    walk(signed.get("ContentSequence", []))


def observation_datetime(document: Dataset) -> str:
    """Return when the root content of an SR was observed, as a DICOM DT value, or ``""``.

    That is the root's Observation DateTime (0040,A032) when present (an addendum SR keeps
    the time of the signed report there), else its Content Date and Content Time, with its
    Timezone Offset From UTC when present (PS3.3 Table C.17-6: an item without Observation
    DateTime has that of the higher items, or the Content Date and Time).
    """
    observed = str(document.get("ObservationDateTime", "") or "").strip()
    if observed:
        return observed
    date = str(document.get("ContentDate", "") or "").strip()
    time = str(document.get("ContentTime", "") or "").strip()
    if not date or not time:
        return ""
    offset = str(document.get("TimezoneOffsetFromUTC", "") or "").strip()
    return f"{date}{time}{offset}"


def content_observation_datetime(signed: Dataset) -> str:
    """Return when the content of `signed` was observed (:func:`observation_datetime`).

    Raises
    ------
    MissingSourceAttributeError
        If `signed` has neither an Observation DateTime nor a Content Date and Time.
    """
    if not str(signed.get("ObservationDateTime", "") or "").strip():
        why = "which dates the signed content in the addendum SR"
        _require(signed, "ContentDate", "signed", non_empty=True, why=why)
        _require(signed, "ContentTime", "signed", non_empty=True, why=why)
    return observation_datetime(signed)


def mark_addended(addendum: Dataset, signed: Dataset, purpose: Dataset) -> None:
    """Give the predecessor references of an addendum SR their Purpose of Reference.

    The reference to `signed` gets `purpose` (CID 7009 "Addended report"); the references
    to the predecessors of `signed` keep the purposes `signed` gives them, if any. Purpose
    of Reference Code Sequence (0040,A170) is an optional attribute of each Referenced SOP
    Sequence item of the Predecessor Documents Sequence.

    Parameters
    ----------
    addendum
        The addendum SR, changed in place.
    signed
        The SR it adds to.
    purpose
        The coded purpose of the reference to `signed`; a copy is written.
    """
    earlier = {
        str(instance.ReferencedSOPInstanceUID): instance.PurposeOfReferenceCodeSequence
        for study in signed.get("PredecessorDocumentsSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
        if instance.get("PurposeOfReferenceCodeSequence")
    }
    for study in addendum.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for instance in series.get("ReferencedSOPSequence", []):
                uid = str(instance.ReferencedSOPInstanceUID)
                if uid == str(signed.SOPInstanceUID):
                    instance.PurposeOfReferenceCodeSequence = [copy.deepcopy(purpose)]
                elif uid in earlier:
                    instance.PurposeOfReferenceCodeSequence = copy.deepcopy(earlier[uid])
