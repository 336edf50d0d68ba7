"""The draft SR: DICOM attributes, TID 2000 content, and validity by dciodvfy and dsrdump."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pydicom
import pytest
from highdicom.sr import CodedConcept
from pydicom.data import get_testdata_file
from pydicom.uid import ComprehensiveSRStorage

from sr_templates import (
    CHEXPERT_LABELS,
    DRAFT_SERIES_DESCRIPTION,
    FINDING_CONCEPTS,
    SPECIFIC_CHARACTER_SET,
    AlgorithmInfo,
    InconsistentFindingsError,
    Report,
    WorklistInfo,
    build_draft_sr,
    codes,
    read_report,
)


def _name(item: pydicom.Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return (concept.CodingSchemeDesignator, concept.CodeValue)


def _value(item: pydicom.Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return (concept.CodingSchemeDesignator, concept.CodeValue)


def _section(sr: pydicom.Dataset, heading: tuple[str, str]) -> pydicom.Dataset:
    matches = [
        item
        for item in sr.ContentSequence
        if item.ValueType == "CONTAINER" and _name(item) == heading
    ]
    assert len(matches) == 1, heading
    return matches[0]


def test_draft_sr_header(cr_source, sc_source, draft_report, algorithm, validate_sr):
    when = datetime.datetime(2024, 5, 17, 8, 30, 15)
    sr = build_draft_sr(
        [cr_source, sc_source],
        draft_report,
        algorithm,
        series_number=77,
        instance_number=3,
        content_datetime=when,
    )
    validate_sr(sr, "draft")

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.Modality == "SR"
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in sr
    assert sr.SeriesDescription == DRAFT_SERIES_DESCRIPTION
    assert "DRAFT" in sr.SeriesDescription and "NOT VERIFIED" in sr.SeriesDescription
    assert sr.SeriesNumber == 77
    assert sr.InstanceNumber == 3
    assert str(sr.ContentDate) == "20240517"
    assert str(sr.ContentTime).startswith("083015")
    assert sr.SpecificCharacterSet == SPECIFIC_CHARACTER_SET
    # Same patient and study as the images, a series of its own.
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
    ):
        assert sr[keyword].value == cr_source[keyword].value, keyword
    assert sr.SeriesInstanceUID not in {cr_source.SeriesInstanceUID, sc_source.SeriesInstanceUID}
    # Provenance in the equipment attributes.
    assert sr.ManufacturerModelName == algorithm.name
    assert sr.SoftwareVersions == algorithm.version
    # Both images are evidence of the current requested procedure.
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == {cr_source.SOPInstanceUID, sc_source.SOPInstanceUID}
    assert "ReferencedRequestSequence" not in sr
    assert "PredecessorDocumentsSequence" not in sr


def test_draft_sr_content_follows_tid_2000(cr_source, sc_source, draft_report, algorithm):
    sr = build_draft_sr([cr_source, sc_source], draft_report, algorithm)

    assert (
        sr.ConceptNameCodeSequence[0].CodeValue,
        sr.ConceptNameCodeSequence[0].CodingSchemeDesignator,
    ) == ("18748-4", "LN")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert sr.ContentTemplateSequence[0].MappingResource == "DCMR"
    root = sr.ContentSequence
    language = [item for item in root if _name(item) == codes.code_key(codes.LANGUAGE_OF_CONTENT)]
    assert [_value(item) for item in language] == [("RFC5646", "en")]

    context = [item for item in root if item.RelationshipType == "HAS OBS CONTEXT"]
    by_name = {_name(item): item for item in context}
    assert _value(by_name[("DCM", "121005")]) == ("DCM", "121007")  # observer type: device
    assert by_name[("DCM", "121012")].UID == algorithm.device_uid
    assert by_name[("DCM", "121013")].TextValue == algorithm.name
    assert not any(_name(item) == ("DCM", "121008") for item in context)  # no person yet

    # TID 4019: name, version and every parameter.
    algorithm_items = [
        item
        for item in root
        if item.RelationshipType == "HAS CONCEPT MOD" and item.ValueType == "TEXT"
    ]
    texts = {(_name(item), item.TextValue) for item in algorithm_items}
    assert (("DCM", "111001"), "cxr-vlm") in texts
    assert (("DCM", "111003"), "2.1.0+g1a2b3c4") in texts
    assert {value for name, value in texts if name == ("DCM", "111002")} == {
        "max_new_tokens=256",
        "temperature=0.0",
        "threshold=0.5",
    }

    clinical = _section(sr, ("LN", "55752-0"))
    assert clinical.ContentSequence[0].TextValue == draft_report.indication

    findings = _section(sr, ("DCM", "121070"))
    texts_in_findings = [item for item in findings.ContentSequence if item.ValueType == "TEXT"]
    assert [item.TextValue for item in texts_in_findings] == [draft_report.findings_text]
    assert _name(texts_in_findings[0]) == ("DCM", "121071")

    coded = [item for item in findings.ContentSequence if item.ValueType == "CODE"]
    assert len(coded) == 14
    sources = {
        cr_source.SOPInstanceUID: cr_source.SOPClassUID,
        sc_source.SOPInstanceUID: sc_source.SOPClassUID,
    }
    for label, item in zip(CHEXPERT_LABELS, coded, strict=True):
        assert _name(item) == ("DCM", "121071")
        assert _value(item) == codes.code_key(FINDING_CONCEPTS[label])
        children = item.ContentSequence
        presence = [c for c in children if c.RelationshipType == "HAS CONCEPT MOD"]
        assert len(presence) == 1 and _name(presence[0]) == ("SCT", "705057003")
        expected = draft_report.finding(label)
        assert expected is not None
        assert _value(presence[0]) == (
            ("SCT", "52101004") if expected.presence == "present" else ("SCT", "272519000")
        )
        numbers = [c for c in children if c.ValueType == "NUM"]
        assert len(numbers) == 1 and numbers[0].RelationshipType == "HAS PROPERTIES"
        assert numbers[0].MeasuredValueSequence[0].FloatingPointValue == expected.probability
        images = [c for c in children if c.ValueType == "IMAGE"]
        assert {c.RelationshipType for c in images} == {"INFERRED FROM"}
        assert {
            c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: c.ReferencedSOPSequence[
                0
            ].ReferencedSOPClassUID
            for c in images
        } == sources

    impression = _section(sr, ("DCM", "121072"))
    assert [item.TextValue for item in impression.ContentSequence] == [draft_report.impression_text]


def test_draft_declares_the_private_coding_scheme(cr_source, draft_report, algorithm):
    sr = build_draft_sr([cr_source], draft_report, algorithm)
    designators = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert designators == [codes.CHEXPERT_SCHEME]


@pytest.mark.parametrize(
    "combination",
    [("cr",), ("cr", "sc"), ("cr", "dx", "sc"), ("dx",)],
    ids="+".join,
)
def test_sources_of_different_sop_classes(
    combination, cr_source, sc_source, dx_source, draft_report, algorithm, validate_sr
):
    sources = [{"cr": cr_source, "sc": sc_source, "dx": dx_source}[name] for name in combination]
    sr = build_draft_sr(sources, draft_report, algorithm)
    validate_sr(sr, "draft-" + "-".join(combination))
    first_code = next(
        item for item in sr.ContentSequence[-2].ContentSequence if item.ValueType == "CODE"
    )
    referenced = [
        (
            c.ReferencedSOPSequence[0].ReferencedSOPClassUID,
            c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
        )
        for c in first_code.ContentSequence
        if c.ValueType == "IMAGE"
    ]
    assert referenced == [(s.SOPClassUID, s.SOPInstanceUID) for s in sources]


def test_source_with_pixel_data(draft_report, algorithm, validate_sr):
    image = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    assert "PixelData" in image
    sr = build_draft_sr([image], draft_report, algorithm)
    validate_sr(sr, "draft-from-full-image")
    assert "PixelData" not in sr


def test_worklist_goes_to_referenced_request_sequence(
    cr_source, draft_report, algorithm, validate_sr
):
    worklist = WorklistInfo(
        accession_number=str(cr_source.AccessionNumber),
        requested_procedure_id="RP-4711",
        requested_procedure_description="XR CHEST PA",
        requested_procedure_code=CodedConcept("36643-5", "LN", "XR Chest 2V"),
        study_instance_uid=str(cr_source.StudyInstanceUID),
        placer_order_number="PL-1",
    )
    sr = build_draft_sr([cr_source], draft_report, algorithm, worklist=worklist)
    validate_sr(sr, "draft-with-worklist")
    (request,) = sr.ReferencedRequestSequence
    assert request.StudyInstanceUID == cr_source.StudyInstanceUID
    assert request.AccessionNumber == worklist.accession_number
    assert request.RequestedProcedureID == "RP-4711"
    assert request.RequestedProcedureDescription == "XR CHEST PA"
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "36643-5"
    assert request.PlacerOrderNumberImagingServiceRequest == "PL-1"


def test_worklist_fills_in_when_images_have_no_accession_number(
    cr_source, draft_report, algorithm, validate_sr
):
    cr_source.AccessionNumber = ""
    sr = build_draft_sr(
        [cr_source], draft_report, algorithm, worklist=WorklistInfo(accession_number="A123")
    )
    validate_sr(sr, "draft-worklist-only")
    assert sr.ReferencedRequestSequence[0].AccessionNumber == "A123"
    assert sr.AccessionNumber == ""  # the study-level attribute stays as in the images


def test_caller_chosen_uids_make_retries_idempotent(cr_source, draft_report, algorithm):
    first = build_draft_sr(
        [cr_source],
        draft_report,
        algorithm,
        sop_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.5",
    )
    again = build_draft_sr(
        [cr_source],
        draft_report,
        algorithm,
        sop_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.5",
    )
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == ("1.2.3.4", "1.2.3.5")
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == ("1.2.3.4", "1.2.3.5")


def test_device_uid_is_stable_per_algorithm_version():
    one = AlgorithmInfo("cxr-vlm", "1.0")
    assert one.device_uid == AlgorithmInfo("cxr-vlm", "1.0", {"t": "1"}).device_uid
    assert one.device_uid != AlgorithmInfo("cxr-vlm", "1.1").device_uid
    assert len(one.device_uid) <= 64


def test_report_without_indication_has_no_clinical_section(
    cr_source, draft_report, algorithm, validate_sr
):
    report = Report(
        draft_report.findings_text, draft_report.impression_text, findings=draft_report.findings
    )
    sr = build_draft_sr([cr_source], report, algorithm)
    validate_sr(sr, "draft-no-indication")
    headings = [_name(item) for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
    assert headings == [("DCM", "121070"), ("DCM", "121072")]


def test_validators_catch_an_invalid_sr(
    cr_source, draft_report, algorithm, tmp_path, dicom_validators
):
    # Guards the guard: the validators the other tests rely on do report real violations.
    sr = build_draft_sr([cr_source], draft_report, algorithm)
    del sr.CompletionFlag  # type 1 attribute of the SR Document General module
    sr.ContentSequence[-1].RelationshipType = "HAS PROPERTIES"  # not allowed below CONTAINER
    path = tmp_path / "invalid.dcm"
    sr.save_as(path, enforce_file_format=True)

    result = dicom_validators(path)

    assert not result.ok
    assert any("CompletionFlag" in line for line in result.dciodvfy_errors)
    assert result.dsrdump_returncode != 0
    assert any("has properties CONTAINER" in line for line in result.dsrdump_errors)


def test_a_model_without_findings_head_codes_all_14_without_probabilities(
    cr_source, draft_report, algorithm, validate_sr
):
    # XrayGPT, LLaVA and MedGemma have no classifier: their draft's codes come from its text.
    findings = tuple(replace(f, probability=None) for f in draft_report.findings)
    report = replace(draft_report, findings=findings)
    sr = build_draft_sr([cr_source], report, algorithm)
    validate_sr(sr, "draft-no-probabilities")
    read = read_report(sr)
    assert len(read.findings) == 14 and all(f.probability is None for f in read.findings)

    mixed = (replace(findings[0], probability=0.4), *findings[1:])
    with pytest.raises(InconsistentFindingsError, match="every finding or of none"):
        build_draft_sr([cr_source], replace(draft_report, findings=mixed), algorithm)
