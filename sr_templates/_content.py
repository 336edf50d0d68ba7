"""The content tree of a report SR: TID 2000 "Basic Diagnostic Imaging Report".

Layout (relationship, value type, concept name)::

    CONTAINER (18748-4, LN, "Diagnostic imaging report")            TID 2000, SEPARATE
      HAS CONCEPT MOD  CODE  Language of Content Item and Descendants  TID 1204
      HAS OBS CONTEXT  ...   person observer (amendments only)        TID 1002/1003
      HAS OBS CONTEXT  ...   device observer: the algorithm           TID 1002/1004
      HAS CONCEPT MOD  TEXT  Algorithm Name / Version / Parameters    TID 4019
      CONTAINS CONTAINER Clinical Information (indication known)      CID 7001
        CONTAINS TEXT  Indications for Procedure
      CONTAINS CONTAINER Findings                                     CID 7001
        CONTAINS TEXT  Finding = findings text                        CID 7002
        CONTAINS CODE  Finding = <CheXpert concept>                   one per label
          HAS OBS CONTEXT  ...   person observer: who chose the presence  TID 1002
                                 (only when a reader chose it)
          HAS CONCEPT MOD  CODE  Presence = Present/Absent/Undetermined  CID 240
                                              or Not evaluated (extension)
          HAS PROPERTIES   NUM   Probability (0..1)                   when known
          INFERRED FROM    IMAGE Source of Measurement                one per source image
      CONTAINS CONTAINER Impressions                                  CID 7001
        CONTAINS TEXT  Impression = impression text                   CID 7002
      CONTAINS CONTAINER Addendum (addendum SRs only, oldest first)  CID 7001
        HAS OBS CONTEXT  ...   person observer: the author            TID 1001/1002/1003
        CONTAINS TEXT  Comment = addendum text                        CID 7002 extended

TID 4019 sits on the root so that the algorithm's name, version and parameters stay in every
amendment, whichever findings the radiologist keeps. All relationships are by value, so the
tree is valid in Enhanced SR as well as in Comprehensive SR.

An addendum SR is not rebuilt from a Report: it copies the root items of the signed SR
unchanged (:func:`addendum_root`), earlier Addendum sections included, and appends one new
Addendum section (:func:`addendum_section`). Each Addendum section carries the time it was
written as Observation DateTime (0040,A032), and the root carries the time of the signed
content, because the Content Date and Time of the new SR are those of the newest addendum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DataElementSequence

from sr_templates import codes
from sr_templates.context import AlgorithmInfo, PersonInfo
from sr_templates.errors import UnsupportedDocumentError
from sr_templates.report import Finding, Presence, Report

#: Template identifier of the root container.
TEMPLATE_ID = "2000"

_PRESENCE_CONCEPTS = {
    Presence.PRESENT: codes.PRESENT,
    Presence.ABSENT: codes.ABSENT,
    Presence.UNCERTAIN: codes.UNDETERMINED,
    Presence.NOT_ASSESSED: codes.NOT_EVALUATED,
}


def _fresh(concept: CodedConcept) -> CodedConcept:
    # Module constants must never become part of a document: highdicom stores the concept
    # objects it is given, and a document may be changed after it is built.
    return copy.deepcopy(concept)


def _observation_context(
    algorithm: AlgorithmInfo | None, person: PersonInfo | None
) -> list[Dataset]:
    person_context = None
    if person is not None:
        person_context = ObserverContext(
            observer_type=_fresh(codes.OBSERVER_TYPE_PERSON),
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=person.name,
                login_name=person.login_name,
                organization_name=person.organization,
            ),
        )
    device_context = None
    if algorithm is not None:
        device_context = ObserverContext(
            observer_type=_fresh(codes.OBSERVER_TYPE_DEVICE),
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=algorithm.device_uid,
                name=algorithm.name,
                manufacturer_name=algorithm.manufacturer,
                model_name=algorithm.name,
            ),
        )
    return list(
        ObservationContext(
            observer_person_context=person_context, observer_device_context=device_context
        )
    )


def _section(heading: CodedConcept, items: Sequence[Dataset]) -> ContainerContentItem:
    section = ContainerContentItem(
        name=_fresh(heading),
        is_content_continuous=False,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    section.ContentSequence = DataElementSequence(items)
    return section


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=_fresh(name), value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )


def _coded_finding(finding: Finding, images: Sequence[tuple[str, str]]) -> CodeContentItem:
    item = CodeContentItem(
        name=_fresh(codes.FINDING),
        value=_fresh(codes.FINDING_CONCEPTS[finding.label]),
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    children: list[Dataset] = []
    if finding.observer is not None:
        # The reader chose this presence: their own observer context on the finding.
        children.extend(_observation_context(None, finding.observer))
    children += [
        CodeContentItem(
            name=_fresh(codes.PRESENCE),
            value=_fresh(_PRESENCE_CONCEPTS[finding.presence]),
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    ]
    if finding.probability is not None:
        children.append(
            NumContentItem(
                name=_fresh(codes.PROBABILITY),
                value=float(finding.probability),
                unit=_fresh(codes.PROBABILITY_UNIT),
                relationship_type=RelationshipTypeValues.HAS_PROPERTIES,
            )
        )
    for sop_class_uid, sop_instance_uid in images:
        children.append(
            ImageContentItem(
                name=_fresh(codes.SOURCE_IMAGE),
                referenced_sop_class_uid=sop_class_uid,
                referenced_sop_instance_uid=sop_instance_uid,
                relationship_type=RelationshipTypeValues.INFERRED_FROM,
            )
        )
    item.ContentSequence = DataElementSequence(children)
    return item


def build_content(
    report: Report,
    *,
    language: str,
    algorithm: AlgorithmInfo | None,
    person: PersonInfo | None,
    images: Sequence[tuple[str, str]],
) -> ContainerContentItem:
    """Build the root container of a report SR.

    Parameters
    ----------
    report
        The report; its texts and findings must already have been checked.
    language
        RFC 5646 tag of the report language.
    algorithm
        The algorithm that drafted the report (device observer), if known.
    person
        The person who amended the report (person observer), if any.
    images
        ``(SOP Class UID, SOP Instance UID)`` of every image the findings are inferred from.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The root content item, for the ``content`` argument of highdicom's SR classes.
    """
    root = ContainerContentItem(
        name=_fresh(codes.DIAGNOSTIC_IMAGING_REPORT),
        is_content_continuous=False,
        template_id=TEMPLATE_ID,
    )
    # Templates are pydicom sequences of content items; the root holds them flattened.
    items: list[Dataset] = list(
        LanguageOfContentItemAndDescendants(codes.language_concept(language))
    )
    items.extend(_observation_context(algorithm, person))
    if algorithm is not None:
        items.extend(
            AlgorithmIdentification(
                name=algorithm.name,
                version=algorithm.version,
                parameters=list(algorithm.parameter_items) or None,
                manufacturer=algorithm.manufacturer,
            )
        )
    if report.indication is not None:
        items.append(
            _section(
                codes.CLINICAL_INFORMATION,
                [_text(codes.INDICATIONS_FOR_PROCEDURE, report.indication)],
            )
        )
    items.append(
        _section(
            codes.FINDINGS,
            [
                _text(codes.FINDING, report.findings_text),
                *(_coded_finding(finding, images) for finding in report.findings),
            ],
        )
    )
    items.append(_section(codes.IMPRESSIONS, [_text(codes.IMPRESSION, report.impression_text)]))
    root.ContentSequence = DataElementSequence(items)
    return root


def addendum_section(
    text: str, author: PersonInfo, observation_datetime: str
) -> ContainerContentItem:
    """Build one Addendum section (CID 7001 heading) for the root of an addendum SR.

    Parameters
    ----------
    text
        The addendum text; it must already have been checked.
    author
        Who wrote the addendum: the person observer of the section (TID 2000 row 9 allows an
        Observation Context, TID 1001, in each section).
    observation_datetime
        When the addendum was written, as a DICOM DT value; written as the section's
        Observation DateTime (0040,A032).

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The section, with relationship CONTAINS.
    """
    section = _section(
        codes.ADDENDUM,
        [*_observation_context(None, author), _text(codes.ADDENDUM_TEXT, text)],
    )
    section.add_new("ObservationDateTime", "DT", observation_datetime)
    return section


def addendum_root(
    signed: Dataset, section: Dataset, *, observation_datetime: str
) -> ContainerContentItem:
    """Build the root container of an addendum SR: the signed SR's content plus `section`.

    The root's concept name, continuity and template identification, and every item of its
    Content Sequence (earlier Addendum sections included) are copies of those of `signed`, so
    the signed content reaches the new SR unchanged, whatever this package understands of it.

    Parameters
    ----------
    signed
        The signed SR (or an earlier addendum SR); it is not modified.
    section
        The new Addendum section, appended after the copied items.
    observation_datetime
        When the signed content was observed, as a DICOM DT value (the signed SR's own root
        Observation DateTime, else its Content Date and Time); written as the root's
        Observation DateTime (0040,A032), since the new SR's Content Date and Time are those
        of the addendum (PS3.3 Table C.17-6 asks for it on content copied into a successor).

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The root content item, for the ``content`` argument of highdicom's SR classes.

    Raises
    ------
    UnsupportedDocumentError
        If highdicom cannot read a content item of `signed`.
    """
    root = ContainerContentItem(
        name=CodedConcept.from_dataset(signed.ConceptNameCodeSequence[0]),
        is_content_continuous=signed.get("ContinuityOfContent") == "CONTINUOUS",
    )
    if "ContentTemplateSequence" in signed:
        root.ContentTemplateSequence = copy.deepcopy(signed.ContentTemplateSequence)
    root.add_new("ObservationDateTime", "DT", observation_datetime)
    try:
        # highdicom content items, deep copies of those of `signed`.
        items = list(ContentSequence.from_sequence(signed.get("ContentSequence", []), copy=True))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # highdicom's message may quote a value of the document, so it is only chained.
        raise UnsupportedDocumentError(
            "signed holds a content item that highdicom cannot read as an SR content item "
            f"({type(error).__name__}), so its content cannot be copied into the addendum SR"
        ) from error
    root.ContentSequence = DataElementSequence([*items, section])
    return root
