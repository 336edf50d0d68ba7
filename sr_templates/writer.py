"""Build the draft SR of a report, the amended SRs that replace it and addenda to it once signed.

Every builder returns a :class:`highdicom.sr.ComprehensiveSR` (see the package docstring for
why Comprehensive SR). Nothing is written to disk and nothing is sent; the caller saves the
object (``sr.save_as(path)``) or stores it to the PACS. The SR is encoded with Specific
Character Set ``ISO_IR 192`` (UTF-8), so report text and names in any script are stored
as given; patient attributes copied from images in another character set are re-encoded.
"""

from __future__ import annotations

import copy
import datetime
import logging
import warnings
from collections.abc import Sequence

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import ComprehensiveSR, ContainerContentItem
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from sr_templates import codes
from sr_templates._content import addendum_root, addendum_section, build_content
from sr_templates._privacy import uid_digest
from sr_templates._sources import (
    amendment_evidence,
    check_copyable_content,
    check_previous,
    check_sources,
    content_observation_datetime,
    mark_addended,
    predecessor_chain,
    previous_image_references,
)
from sr_templates._validation import (
    TEXT_VALUE_MAX_BYTES,
    check_findings,
    check_max_text_bytes,
    check_report_texts,
    check_text,
)
from sr_templates._vr import check_lo
from sr_templates.context import AlgorithmInfo, PersonInfo, VerifierInfo, WorklistInfo
from sr_templates.errors import NotSignedError, UnsupportedDocumentError, WorklistMismatchError
from sr_templates.reader import read_report
from sr_templates.report import Report, VerificationFlag

__all__ = [
    "ADDENDUM_SERIES_DESCRIPTION",
    "ADDENDUM_SERIES_NUMBER",
    "AMENDED_SERIES_DESCRIPTION",
    "AMENDED_SERIES_NUMBER",
    "DEFAULT_MANUFACTURER",
    "DRAFT_SERIES_DESCRIPTION",
    "DRAFT_SERIES_NUMBER",
    "SPECIFIC_CHARACTER_SET",
    "TEXT_VALUE_MAX_BYTES",
    "VERIFIED_SERIES_DESCRIPTION",
    "build_addendum_sr",
    "build_amended_sr",
    "build_draft_sr",
]

logger = logging.getLogger(__name__)

#: Series Number of draft SRs (a new series in the image study).
DRAFT_SERIES_NUMBER = 9900
#: Series Number of amended SRs, signed or not.
AMENDED_SERIES_NUMBER = 9901
#: Series Description of draft SRs; a PACS shows it in the series list.
DRAFT_SERIES_DESCRIPTION = "AI DRAFT REPORT - NOT VERIFIED"
#: Series Description of amended SRs that are not signed off yet.
AMENDED_SERIES_DESCRIPTION = "AMENDED DRAFT REPORT - NOT VERIFIED"
#: Series Description of signed-off SRs.
VERIFIED_SERIES_DESCRIPTION = "VERIFIED REPORT (AI-ASSISTED DRAFT)"
#: Series Number of addendum SRs (each one a new series).
ADDENDUM_SERIES_NUMBER = 9902
#: Series Description of addendum SRs: a signed report with one or more addenda.
ADDENDUM_SERIES_DESCRIPTION = "VERIFIED REPORT WITH ADDENDUM"
#: Manufacturer (0008,0070) of the equipment that creates the SRs.
DEFAULT_MANUFACTURER = "cxr-dicom-node"
#: Specific Character Set of every SR: UTF-8.
SPECIFIC_CHARACTER_SET = "ISO_IR 192"


def _suppress_person_name_warning() -> None:
    # highdicom warns when a person name has a single component, and quotes the name in the
    # warning. Patient names come from the images and must not reach logs (warnings often end
    # up there), so that warning is ignored. The filter is (re)installed before every build
    # rather than once at import, because any warnings.catch_warnings() block that was open
    # during the import (pytest's collection, for one) drops it again on exit; and it is not
    # scoped with catch_warnings() here, which is not thread-safe while the node builds SRs
    # in worker threads. Installing an identical filter again only moves it to the front.
    # Our own person names are checked before they reach highdicom (see _vr.py).
    warnings.filterwarnings(
        "ignore",
        message=r"The string .* is unlikely to represent the intended person name",
        category=UserWarning,
        module=r"highdicom(\.|$)",
    )


def _referenced_request(worklist: WorklistInfo, study_instance_uid: str) -> Dataset:
    # An item of the Referenced Request Sequence (SR Document General module). highdicom
    # takes these items as plain datasets (`requested_procedures`); it has no class for them.
    item = Dataset()
    item.StudyInstanceUID = study_instance_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = worklist.accession_number
    item.PlacerOrderNumberImagingServiceRequest = worklist.placer_order_number
    item.FillerOrderNumberImagingServiceRequest = worklist.filler_order_number
    item.RequestedProcedureID = worklist.requested_procedure_id
    item.RequestedProcedureDescription = worklist.requested_procedure_description
    code = worklist.requested_procedure_code
    item.RequestedProcedureCodeSequence = [copy.deepcopy(code)] if code is not None else []
    return item


def _check_worklist(worklist: WorklistInfo, first_source: Dataset) -> None:
    # Reporting against the wrong order is a patient-safety problem, so a worklist entry that
    # contradicts the images is an error. Values are not quoted: accession numbers identify.
    if not isinstance(worklist, WorklistInfo):
        raise TypeError("worklist must be a WorklistInfo or None")
    study_uid = str(first_source.StudyInstanceUID)
    if worklist.study_instance_uid is not None and worklist.study_instance_uid != study_uid:
        raise WorklistMismatchError(
            "the worklist entry names a different Study Instance UID than the source images"
        )
    image_accession = str(first_source.get("AccessionNumber", "") or "").strip()
    if image_accession and image_accession != worklist.accession_number:
        raise WorklistMismatchError(
            "the worklist entry has a different Accession Number than the source images"
        )


def _content_date_time(
    content_datetime: datetime.datetime | None,
) -> tuple[datetime.date, datetime.time]:
    if content_datetime is None:
        content_datetime = datetime.datetime.now()
    elif not isinstance(content_datetime, datetime.datetime):
        raise TypeError("content_datetime must be a datetime.datetime or None")
    return content_datetime.date(), content_datetime.time()


def _dt_value(value: datetime.datetime) -> str:
    """A datetime as a DICOM DT value (with its UTC offset when `value` is aware)."""
    return str(DT(value))


def _refuse_addenda(report: Report) -> None:
    # Addenda exist only after sign-off, and only build_addendum_sr writes them; dropping
    # them silently here would lose clinical text.
    if report.addenda:
        raise ValueError(
            "report.addenda must be empty: a report is drafted and amended before it is "
            "signed, and addenda to a signed report are written by build_addendum_sr"
        )


def _make_sr(
    *,
    evidence: Sequence[Dataset],
    report: Report,
    language: str,
    algorithm: AlgorithmInfo | None,
    person: PersonInfo | None,
    images: Sequence[tuple[str, str]],
    series_instance_uid: str | None,
    series_number: int,
    sop_instance_uid: str | None,
    instance_number: int,
    manufacturer: str,
    series_description: str,
    requested_procedures: Sequence[Dataset] | None,
    previous_versions: Sequence[Dataset] | None,
    sign_off: VerifierInfo | None,
    content_datetime: datetime.datetime | None,
) -> ComprehensiveSR:
    content = build_content(
        report, language=language, algorithm=algorithm, person=person, images=images
    )
    uses_private_scheme = any(
        codes.FINDING_CONCEPTS[finding.label].scheme_designator == codes.CHEXPERT_SCHEME
        for finding in report.findings
    )
    coding_schemes = (
        [
            CodingSchemeIdentificationItem(
                designator=codes.CHEXPERT_SCHEME,
                name=codes.CHEXPERT_SCHEME_NAME,
                version=codes.CHEXPERT_SCHEME_VERSION,
                responsible_organization=codes.CHEXPERT_SCHEME_ORGANIZATION,
            )
        ]
        if uses_private_scheme
        else None
    )
    return _make_document(
        evidence=evidence,
        content=content,
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        series_description=series_description,
        requested_procedures=requested_procedures,
        previous_versions=previous_versions,
        sign_off=sign_off,
        content_datetime=content_datetime,
        coding_schemes=coding_schemes,
    )


def _make_document(
    *,
    evidence: Sequence[Dataset],
    content: ContainerContentItem,
    algorithm: AlgorithmInfo | None,
    series_instance_uid: str | None,
    series_number: int,
    sop_instance_uid: str | None,
    instance_number: int,
    manufacturer: str,
    series_description: str,
    requested_procedures: Sequence[Dataset] | None,
    previous_versions: Sequence[Dataset] | None,
    sign_off: VerifierInfo | None,
    content_datetime: datetime.datetime | None,
    coding_schemes: Sequence[CodingSchemeIdentificationItem] | None,
) -> ComprehensiveSR:
    check_lo("manufacturer", manufacturer)
    _suppress_person_name_warning()
    content_date, content_time = _content_date_time(content_datetime)
    signed = sign_off is not None
    sr = ComprehensiveSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=signed,
        is_final=signed,
        is_verified=signed,
        verifying_observer_name=sign_off.name if sign_off else None,
        verifying_organization=sign_off.organization if sign_off else None,
        requested_procedures=requested_procedures,
        previous_versions=previous_versions,
        series_description=series_description,
        manufacturer_model_name=algorithm.name if algorithm else None,
        software_versions=algorithm.version if algorithm else None,
        content_date=content_date,
        content_time=content_time,
        coding_schemes=list(coding_schemes) if coding_schemes else None,
        specific_character_set=SPECIFIC_CHARACTER_SET,
    )
    return sr


def build_draft_sr(
    source_images: Sequence[Dataset],
    report: Report,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = DRAFT_SERIES_NUMBER,
    instance_number: int = 1,
    worklist: WorklistInfo | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
    max_text_bytes: int = TEXT_VALUE_MAX_BYTES,
) -> ComprehensiveSR:
    """Build the unverified draft SR of a report drafted by the algorithm.

    The SR joins the images' study in a new series (Series Description
    :data:`DRAFT_SERIES_DESCRIPTION`), with Completion Flag PARTIAL, Verification Flag
    UNVERIFIED and Preliminary Flag PRELIMINARY. Its content follows TID 2000 (see
    :mod:`sr_templates._content`): the algorithm is the device observer, the findings and
    impression texts are TEXT items, and each of the 14 CheXpert findings is a CODE item
    with its presence and probability, inferred from every source image.

    Parameters
    ----------
    source_images
        The images the report was drafted from; one study of one patient, any image SOP
        classes (CR, DX, Secondary Capture, ...). Pixel data is not needed.
    report
        The report. Its findings text, impression text and language are required, and its
        findings must hold all 14 CheXpert labels, each with the model's probability (or all
        without one, for a model that has no findings head), and it has no
        addenda. Its document state fields (``sop_instance_uid``, ``predecessors``, flags,
        observers, verifiers, ``algorithm``) are ignored.
    algorithm
        The algorithm that drafted the report; recorded as device observer, TID 4019
        Algorithm Identification and in the SR's equipment attributes.
    series_number
        Series Number of the new series.
    instance_number
        Instance Number of the SR.
    worklist
        The worklist entry of the order, when known; written as Referenced Request Sequence.
    manufacturer
        Manufacturer of the equipment creating the SR (LO).
    sop_instance_uid
        SOP Instance UID to use, e.g. derived from a job id so that a retried job stores the
        same instance; a new UID by default.
    series_instance_uid
        Series Instance UID to use; a new UID by default.
    content_datetime
        Content Date and Time; now by default.
    max_text_bytes
        Largest size in bytes of each text (UTF-8, padded). Defaults to the UT limit of
        2**32 - 2 bytes; a site whose RIS accepts less can lower it.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        The draft SR.

    Raises
    ------
    MissingSourceAttributeError
        If a source lacks an identifying UID or a patient or study attribute.
    UnsupportedSourceError
        If a source is not an image.
    InconsistentSourcesError
        If the sources are not one study of one patient, or repeat an instance.
    WorklistMismatchError
        If `worklist` names another study or accession number than the images.
    EmptyReportError, InvalidTextError, TextTooLongError
        If a text is empty, holds a disallowed character or is too long.
    InconsistentFindingsError
        If the coded findings are incomplete, repeated or contradictory.
    TypeError, ValueError
        For arguments of the wrong type or out of range, or a report with addenda.
    """
    if not isinstance(report, Report):
        raise TypeError(f"report must be a Report, got {type(report).__name__}")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, got {type(algorithm).__name__}")
    _refuse_addenda(report)
    check_max_text_bytes(max_text_bytes)
    sources = list(source_images)
    check_sources(sources)
    if report.language is None:
        raise ValueError("report.language is required: TID 2000 records the report language")
    check_report_texts(report, max_bytes=max_text_bytes)
    check_findings(report.findings, require_all_labels=True, require_probability=True)
    requested = None
    if worklist is not None:
        _check_worklist(worklist, sources[0])
        requested = [_referenced_request(worklist, str(sources[0].StudyInstanceUID))]
    sr = _make_sr(
        evidence=sources,
        report=report,
        language=report.language,
        algorithm=algorithm,
        person=None,
        images=[(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in sources],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        series_description=DRAFT_SERIES_DESCRIPTION,
        requested_procedures=requested,
        previous_versions=None,
        sign_off=None,
        content_datetime=content_datetime,
    )
    logger.info(
        "built draft SR %s from %d source image(s), %d coded finding(s)",
        uid_digest(sr.SOPInstanceUID),
        len(sources),
        len(report.findings),
    )
    return sr


def build_amended_sr(
    previous: Dataset,
    report: Report,
    amender: PersonInfo,
    *,
    sign_off: VerifierInfo | None = None,
    series_number: int = AMENDED_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
    max_text_bytes: int = TEXT_VALUE_MAX_BYTES,
) -> ComprehensiveSR:
    """Build an SR that replaces `previous` with amended text and findings.

    The new SR is a new instance in a new series of the same study. Its Predecessor
    Documents Sequence names every SR it replaces (the predecessors `previous` names, then
    `previous`). The amender is the person observer; the algorithm of `previous` stays the
    device observer, with its name, version and parameters. Coded findings are linked to the
    images `previous` references. Until `sign_off` is given the SR stays UNVERIFIED and
    PARTIAL; with it, the SR is COMPLETE, VERIFIED and FINAL, with a Verifying Observer.

    The images themselves are not needed: the patient and study attributes come from
    `previous` and the image references from its content and evidence sequences.

    Parameters
    ----------
    previous
        The SR being replaced: a draft or an earlier amendment (any SR this package can read
        that references the images it reports on).
    report
        The amended report: texts, language and the coded findings the amended text supports
        (any subset of the CheXpert labels; probabilities are optional). Typically
        ``dataclasses.replace(read_report(previous), findings_text=..., findings=...)``. It
        has no addenda (a report is amended before it is signed). Its document state fields
        are ignored.
    amender
        The person who amended the report.
    sign_off
        The radiologist signing the report off, or ``None`` while it is still a draft.
    series_number
        Series Number of the new series.
    instance_number
        Instance Number of the SR.
    manufacturer
        Manufacturer of the equipment creating the SR; by default that of `previous`, or
        :data:`DEFAULT_MANUFACTURER`.
    sop_instance_uid
        SOP Instance UID to use; a new UID by default.
    series_instance_uid
        Series Instance UID to use; a new UID by default.
    content_datetime
        Content Date and Time; now by default.
    max_text_bytes
        Largest size in bytes of each text; see :func:`build_draft_sr`.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        The amended SR.

    Raises
    ------
    UnsupportedDocumentError
        If `previous` is not an SR, or references no images of its study.
    MissingSourceAttributeError
        If `previous` lacks a patient or study attribute.
    EmptyReportError, InvalidTextError, TextTooLongError
        If a text is empty, holds a disallowed character or is too long.
    InconsistentFindingsError
        If a label repeats or "No Finding" is present together with a pathology.
    TypeError, ValueError
        For arguments of the wrong type or out of range, or a report with addenda.
    """
    if not isinstance(previous, Dataset):
        raise TypeError(f"previous must be a pydicom Dataset, got {type(previous).__name__}")
    if not isinstance(report, Report):
        raise TypeError(f"report must be a Report, got {type(report).__name__}")
    if not isinstance(amender, PersonInfo):
        raise TypeError(f"amender must be a PersonInfo, got {type(amender).__name__}")
    if sign_off is not None and not isinstance(sign_off, VerifierInfo):
        raise TypeError(f"sign_off must be a VerifierInfo or None, got {type(sign_off).__name__}")
    _refuse_addenda(report)
    check_max_text_bytes(max_text_bytes)
    previous_report = read_report(previous)
    check_previous(previous)
    if report.language is None:
        raise ValueError("report.language is required: TID 2000 records the report language")
    check_report_texts(report, max_bytes=max_text_bytes)
    check_findings(report.findings, require_all_labels=False, require_probability=False)
    references = previous_image_references(previous)
    predecessors = predecessor_chain(previous)
    requested = None
    if "ReferencedRequestSequence" in previous:
        # Copies, so that the new SR shares no sequence items with `previous`.
        requested = [copy.deepcopy(item) for item in previous.ReferencedRequestSequence]
    sr = _make_sr(
        evidence=amendment_evidence(previous, references),
        report=report,
        language=report.language,
        algorithm=previous_report.algorithm,
        person=amender,
        images=[(ref.sop_class_uid, ref.sop_instance_uid) for ref in references],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer or str(previous.get("Manufacturer") or DEFAULT_MANUFACTURER),
        series_description=(
            VERIFIED_SERIES_DESCRIPTION if sign_off is not None else AMENDED_SERIES_DESCRIPTION
        ),
        requested_procedures=requested,
        previous_versions=predecessors,
        sign_off=sign_off,
        content_datetime=content_datetime,
    )
    logger.info(
        "built %s amended SR %s replacing %s (%d predecessor(s)), %d coded finding(s)",
        "signed" if sign_off is not None else "unsigned",
        uid_digest(sr.SOPInstanceUID),
        uid_digest(previous.SOPInstanceUID),
        len(predecessors),
        len(report.findings),
    )
    return sr


def build_addendum_sr(
    signed: Dataset,
    text: str,
    author: PersonInfo,
    sign_off: VerifierInfo,
    *,
    series_number: int = ADDENDUM_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
    max_text_bytes: int = TEXT_VALUE_MAX_BYTES,
) -> ComprehensiveSR:
    """Build an SR that adds an addendum to a signed report, which itself stays unchanged.

    A signed report is never changed in place. The addendum SR is a new instance in a new
    series of the same study (Series Description :data:`ADDENDUM_SERIES_DESCRIPTION`). Its
    content is a copy of the content of `signed`, item for item (texts, indication, coded
    findings with presence and probability, language, observers, TID 4019 algorithm
    identification, image references and any earlier addenda), followed by a new Addendum
    section (CID 7001 heading (55107-7, LN, "Addendum")) with the author as person observer,
    the text as a TEXT item (121106, DCM, "Comment") and the time it was written as
    Observation DateTime. Its Predecessor Documents Sequence names the predecessors `signed`
    names, then `signed`, with Purpose of Reference (121361, DCM, "Addended report"). It is
    COMPLETE, VERIFIED and FINAL; its Verifying Observer Sequence holds the verifiers of
    `signed`, with their original Verification DateTime, followed by `sign_off`, verified at
    `content_datetime`. See docs/sr.md, "Addenda".

    Parameters
    ----------
    signed
        The signed report: a VERIFIED SR that this package can read and that references the
        images it reports on (a report signed with :func:`build_amended_sr`, or an earlier
        addendum SR). It is not modified.
    text
        The addendum text; surrounding white space is removed.
    author
        Who wrote the addendum.
    sign_off
        Who signs the addendum SR off (often the author).
    series_number
        Series Number of the new series.
    instance_number
        Instance Number of the SR.
    manufacturer
        Manufacturer of the equipment creating the SR; by default that of `signed`, or
        :data:`DEFAULT_MANUFACTURER`.
    sop_instance_uid
        SOP Instance UID to use; a new UID by default.
    series_instance_uid
        Series Instance UID to use; a new UID by default.
    content_datetime
        When the addendum is written and signed: Content Date and Time, the Addendum
        section's Observation DateTime and the new Verification DateTime; now by default.
    max_text_bytes
        Largest size in bytes of the addendum text; see :func:`build_draft_sr`.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        The addendum SR.

    Raises
    ------
    UnsupportedDocumentError
        If `signed` is not an SR, is not of an SR class whose content a Comprehensive SR can
        hold, holds a content item that cannot be copied (SCOORD3D, a by-reference
        relationship, an item highdicom cannot read), names no verifying observer, or
        references no images of its study.
    NotSignedError
        If `signed` is not VERIFIED.
    MissingSourceAttributeError
        If `signed` lacks a patient or study attribute, or its Content Date and Time.
    EmptyReportError, InvalidTextError, TextTooLongError
        If `text` is empty, holds a disallowed character or is too long.
    TypeError, ValueError
        For arguments of the wrong type or out of range.
    """
    if not isinstance(signed, Dataset):
        raise TypeError(f"signed must be a pydicom Dataset, got {type(signed).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(author, PersonInfo):
        raise TypeError(f"author must be a PersonInfo, got {type(author).__name__}")
    if not isinstance(sign_off, VerifierInfo):
        raise TypeError(f"sign_off must be a VerifierInfo, got {type(sign_off).__name__}")
    if content_datetime is None:
        content_datetime = datetime.datetime.now()
    elif not isinstance(content_datetime, datetime.datetime):
        raise TypeError("content_datetime must be a datetime.datetime or None")
    check_max_text_bytes(max_text_bytes)
    signed_report = read_report(signed)
    if signed_report.verification is not VerificationFlag.VERIFIED:
        raise NotSignedError(
            "signed is not a signed report (its Verification Flag is not VERIFIED); an "
            "unsigned report is amended with build_amended_sr, not given an addendum"
        )
    if not signed.get("VerifyingObserverSequence"):
        raise UnsupportedDocumentError(
            "signed is VERIFIED but names no Verifying Observer, which a verified SR must"
        )
    check_copyable_content(signed)
    check_previous(signed)
    text = text.strip()
    check_text(
        "text",
        text,
        required=True,
        max_bytes=max_text_bytes,
        why_required="an addendum needs a text",
    )
    observed = content_observation_datetime(signed)
    references = previous_image_references(signed)
    predecessors = predecessor_chain(signed)
    requested = None
    if "ReferencedRequestSequence" in signed:
        requested = [copy.deepcopy(item) for item in signed.ReferencedRequestSequence]
    content = addendum_root(
        signed,
        addendum_section(text, author, _dt_value(content_datetime)),
        observation_datetime=observed,
    )
    sr = _make_document(
        evidence=amendment_evidence(signed, references),
        content=content,
        algorithm=signed_report.algorithm,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer or str(signed.get("Manufacturer") or DEFAULT_MANUFACTURER),
        series_description=ADDENDUM_SERIES_DESCRIPTION,
        requested_procedures=requested,
        previous_versions=predecessors,
        sign_off=sign_off,
        content_datetime=content_datetime,
        coding_schemes=None,
    )
    mark_addended(sr, signed, codes.ADDENDED_REPORT)
    if "CodingSchemeIdentificationSequence" in signed:
        # The copied content uses the coding schemes `signed` declares (e.g. 99CHEXPERT).
        sr.CodingSchemeIdentificationSequence = copy.deepcopy(
            signed.CodingSchemeIdentificationSequence
        )
    # highdicom writes one verifying observer, verified at the time of building. PS3.3 states
    # no order for the items of the Verifying Observer Sequence (each has its own
    # Verification DateTime); they are kept in the order of signing, earlier ones unchanged.
    (new_verifier,) = sr.VerifyingObserverSequence
    new_verifier.VerificationDateTime = _dt_value(content_datetime)
    sr.VerifyingObserverSequence = [
        *(copy.deepcopy(item) for item in signed.VerifyingObserverSequence),
        new_verifier,
    ]
    logger.info(
        "built addendum SR %s to signed SR %s (%d predecessor(s), %d addend(a) in all)",
        uid_digest(sr.SOPInstanceUID),
        uid_digest(signed.SOPInstanceUID),
        len(predecessors),
        len(signed_report.addenda) + 1,
    )
    return sr
