"""Amended SRs: predecessors, person observer, sign-off, consistency of coded findings."""

from __future__ import annotations

import copy
import dataclasses
import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from sr_templates import (
    AMENDED_SERIES_DESCRIPTION,
    VERIFIED_SERIES_DESCRIPTION,
    CompletionFlag,
    Finding,
    InconsistentFindingsError,
    PersonInfo,
    Presence,
    UnsupportedDocumentError,
    VerificationFlag,
    VerifierInfo,
    WorklistInfo,
    build_amended_sr,
    build_draft_sr,
    read_report,
)

AMENDER = PersonInfo(name="Doe^Jane", organization="Radiology", login_name="jdoe")
SIGN_OFF = VerifierInfo(name="Doe^Jane^^Dr.", organization="General Hospital")


def _reread(sr: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def _draft_bytes(_cr_header, derive_source, draft_report, algorithm) -> bytes:
    # Built once per module: building is the slow part, reading the bytes back is cheap.
    cr_source = copy.deepcopy(_cr_header)
    sc_source = derive_source(cr_source, SecondaryCaptureImageStorage)
    worklist = WorklistInfo(str(cr_source.AccessionNumber), "RP-1", "XR CHEST PA")
    sr = build_draft_sr([cr_source, sc_source], draft_report, algorithm, worklist=worklist)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def draft(_draft_bytes) -> pydicom.Dataset:
    """A draft SR of a CR and a secondary capture, read from its file bytes."""
    return pydicom.dcmread(io.BytesIO(_draft_bytes))


def _amend(previous: pydicom.Dataset, text: str, **changes):
    report = dataclasses.replace(read_report(previous), findings_text=text, **changes)
    return report


def test_unsigned_amendment(draft, algorithm, validate_sr):
    report = _amend(draft, "Small left pleural effusion. No consolidation.")
    sr = build_amended_sr(draft, report, AMENDER)
    validate_sr(sr, "amended-unsigned")

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.SOPInstanceUID != draft.SOPInstanceUID
    assert sr.SeriesInstanceUID != draft.SeriesInstanceUID
    assert sr.StudyInstanceUID == draft.StudyInstanceUID
    assert sr.PatientID == draft.PatientID and sr.PatientName == draft.PatientName
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in sr
    assert sr.SeriesDescription == AMENDED_SERIES_DESCRIPTION
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == draft.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == draft.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == draft.SOPClassUID
    # The order reference and the image evidence carry over from the draft.
    assert sr.ReferencedRequestSequence[0].RequestedProcedureID == "RP-1"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    draft_evidence = {
        item.ReferencedSOPInstanceUID
        for study in draft.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == draft_evidence

    read = read_report(sr)
    assert read.findings_text == "Small left pleural effusion. No consolidation."
    assert read.observers == (AMENDER,)
    assert read.verifiers == ()
    assert read.algorithm == algorithm  # provenance survives the amendment
    assert read.predecessors == (draft.SOPInstanceUID,)


def test_person_observer_comes_before_the_device_observer(draft):
    sr = build_amended_sr(draft, _amend(draft, "Amended."), AMENDER)
    context = [item for item in sr.ContentSequence if item.RelationshipType == "HAS OBS CONTEXT"]
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in context]
    assert names[:2] == ["121005", "121008"]  # observer type, person observer name
    assert context[0].ConceptCodeSequence[0].CodeValue == "121006"  # person
    assert "121012" in names[2:]  # device observer UID follows


def test_signed_amendment(draft, validate_sr):
    report = _amend(draft, "Small left pleural effusion.")
    sr = build_amended_sr(draft, report, AMENDER, sign_off=SIGN_OFF)
    validate_sr(sr, "amended-signed")

    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.PreliminaryFlag == "FINAL"
    assert sr.SeriesDescription == VERIFIED_SERIES_DESCRIPTION
    (verifier,) = sr.VerifyingObserverSequence
    assert str(verifier.VerifyingObserverName) == SIGN_OFF.name
    assert verifier.VerifyingOrganization == SIGN_OFF.organization
    assert verifier.VerificationDateTime
    read = read_report(sr)
    assert read.completion is CompletionFlag.COMPLETE
    assert read.verification is VerificationFlag.VERIFIED
    assert read.verifiers == (SIGN_OFF,)


def test_chain_of_amendments_names_every_predecessor(draft, validate_sr):
    first = _reread(build_amended_sr(draft, _amend(draft, "First amendment."), AMENDER))
    second = _reread(
        build_amended_sr(first, _amend(first, "Second amendment."), AMENDER, sign_off=SIGN_OFF)
    )
    validate_sr(first, "amended-1")
    validate_sr(second, "amended-2")

    assert read_report(first).predecessors == (draft.SOPInstanceUID,)
    read = read_report(second)
    assert read.predecessors == (draft.SOPInstanceUID, first.SOPInstanceUID)
    assert read.findings_text == "Second amendment."
    assert read.verification is VerificationFlag.VERIFIED
    # Findings still point at both source images of the draft.
    code = next(
        item for item in second.ContentSequence[-2].ContentSequence if item.ValueType == "CODE"
    )
    images = [c for c in code.ContentSequence if c.ValueType == "IMAGE"]
    assert len(images) == 2


def test_amended_findings_may_be_a_subset_without_probabilities(draft, validate_sr):
    findings = (
        Finding("Pleural Effusion", Presence.PRESENT, 0.82),
        Finding("Pneumothorax", Presence.ABSENT),
    )
    sr = build_amended_sr(draft, _amend(draft, "Effusion.", findings=findings), AMENDER)
    validate_sr(sr, "amended-subset")
    assert read_report(sr).findings == findings


@pytest.mark.parametrize(
    ("findings", "message"),
    [
        (
            (
                Finding("Pneumothorax", Presence.PRESENT),
                Finding("Pneumothorax", Presence.ABSENT),
            ),
            "repeat",
        ),
        (
            (
                Finding("No Finding", Presence.PRESENT),
                Finding("Pneumothorax", Presence.PRESENT),
            ),
            "No Finding",
        ),
    ],
    ids=["repeated-label", "no-finding-with-pathology"],
)
def test_inconsistent_amended_findings_are_rejected(draft, findings, message):
    with pytest.raises(InconsistentFindingsError, match=message):
        build_amended_sr(draft, _amend(draft, "Text.", findings=findings), AMENDER)


def test_no_finding_with_support_devices_is_consistent(draft):
    findings = (
        Finding("No Finding", Presence.PRESENT),
        Finding("Support Devices", Presence.PRESENT),
    )
    build_amended_sr(draft, _amend(draft, "Normal. ET tube in place.", findings=findings), AMENDER)


def test_amending_an_image_is_rejected(cr_source, draft_report):
    with pytest.raises(UnsupportedDocumentError, match="not an SR document"):
        build_amended_sr(cr_source, draft_report, AMENDER)


def test_amending_an_sr_without_image_evidence_is_rejected(draft_report):
    # pydicom's test-SR.dcm references a CT image that its evidence sequences do not list.
    foreign = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    with pytest.raises(UnsupportedDocumentError, match="evidence"):
        build_amended_sr(foreign, draft_report, AMENDER)


def test_wrong_argument_types(draft, draft_report):
    with pytest.raises(TypeError, match="amender"):
        build_amended_sr(draft, draft_report, "Doe^Jane")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sign_off"):
        build_amended_sr(draft, draft_report, AMENDER, sign_off="Doe^Jane")  # type: ignore[arg-type]
