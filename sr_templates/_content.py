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
          HAS CONCEPT MOD  CODE  Presence = Present/Absent/Undetermined  CID 240
                                              or Not evaluated (extension)
          HAS PROPERTIES   NUM   Probability (0..1)                   when known
          INFERRED FROM    IMAGE Source of Measurement                one per source image
      CONTAINS CONTAINER Impressions                                  CID 7001
        CONTAINS TEXT  Impression = impression text                   CID 7002

TID 4019 sits on the root so that the algorithm's name, version and parameters stay in every
amendment, whichever findings the radiologist keeps. All relationships are by value, so the
tree is valid in Enhanced SR as well as in Comprehensive SR.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
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
    children: list[Dataset] = [
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
