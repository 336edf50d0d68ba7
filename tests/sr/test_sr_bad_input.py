"""Bad input gets a specific, clear error (and never leaks patient data into logs)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import highdicom.valuerep
import pytest
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from sr_templates import (
    TEXT_VALUE_MAX_BYTES,
    EmptyReportError,
    Finding,
    InconsistentFindingsError,
    InconsistentSourcesError,
    InvalidTextError,
    MissingSourceAttributeError,
    Presence,
    Report,
    SRError,
    TextTooLongError,
    UnsupportedSourceError,
    WorklistInfo,
    WorklistMismatchError,
    build_draft_sr,
)


@pytest.mark.parametrize(
    "keyword",
    [
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "SOPInstanceUID",
        "SOPClassUID",
        "SeriesInstanceUID",
    ],
)
def test_missing_source_attribute_is_named(keyword, cr_source, sc_source, draft_report, algorithm):
    del sc_source[keyword]
    with pytest.raises(MissingSourceAttributeError) as caught:
        build_draft_sr([cr_source, sc_source], draft_report, algorithm)
    assert caught.value.keyword.startswith(keyword)
    assert keyword in str(caught.value)
    assert "source image #1" in str(caught.value)


def test_empty_study_instance_uid_is_an_error(cr_source, draft_report, algorithm):
    cr_source.StudyInstanceUID = ""
    with pytest.raises(MissingSourceAttributeError, match=r"StudyInstanceUID \(0020,000D\).*empty"):
        build_draft_sr([cr_source], draft_report, algorithm)


def test_empty_type2_attributes_are_accepted(cr_source, draft_report, algorithm, validate_sr):
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        cr_source[keyword].value = ""
    sr = build_draft_sr([cr_source], draft_report, algorithm)
    validate_sr(sr, "draft-empty-type2")
    assert sr.PatientName == "" and sr.AccessionNumber == ""


def test_sources_from_two_studies(cr_source, sc_source, draft_report, algorithm):
    sc_source.StudyInstanceUID = generate_uid()
    with pytest.raises(InconsistentSourcesError, match="StudyInstanceUID"):
        build_draft_sr([cr_source, sc_source], draft_report, algorithm)


def test_sources_from_two_patients_do_not_quote_the_ids(
    cr_source, sc_source, draft_report, algorithm
):
    cr_source.PatientID = "PID-ALPHA-1"
    sc_source.PatientID = "PID-BRAVO-2"
    with pytest.raises(InconsistentSourcesError, match="PatientID") as caught:
        build_draft_sr([cr_source, sc_source], draft_report, algorithm)
    assert "ALPHA" not in str(caught.value) and "BRAVO" not in str(caught.value)


def test_repeated_source_instance(cr_source, draft_report, algorithm):
    with pytest.raises(InconsistentSourcesError, match="repeats"):
        build_draft_sr([cr_source, cr_source], draft_report, algorithm)


def test_non_image_source(cr_source, draft_report, algorithm):
    cr_source.SOPClassUID = ComprehensiveSRStorage
    with pytest.raises(UnsupportedSourceError, match="not an image"):
        build_draft_sr([cr_source], draft_report, algorithm)


def test_no_sources(draft_report, algorithm):
    with pytest.raises(ValueError, match="at least one"):
        build_draft_sr([], draft_report, algorithm)


@pytest.mark.parametrize("field", ["findings_text", "impression_text"])
@pytest.mark.parametrize("value", ["", "  \n\t  "], ids=["empty", "white-space"])
def test_empty_report_text(field, value, cr_source, draft_report, algorithm):
    report = dataclasses.replace(draft_report, **{field: value})
    with pytest.raises(EmptyReportError, match=field):
        build_draft_sr([cr_source], report, algorithm)


def test_empty_indication_is_no_indication(draft_report):
    assert dataclasses.replace(draft_report, indication="   ").indication is None


@pytest.mark.parametrize("char", ["\x00", "\x07", "\t", "\x1b", "\ud800"])
def test_control_characters_are_rejected(char, cr_source, draft_report, algorithm):
    report = dataclasses.replace(draft_report, impression_text=f"Effusion{char}small.")
    with pytest.raises(InvalidTextError, match=f"U\\+{ord(char):04X}"):
        build_draft_sr([cr_source], report, algorithm)


def test_line_breaks_and_form_feeds_are_kept(cr_source, draft_report, algorithm, validate_sr):
    report = dataclasses.replace(draft_report, findings_text="Line one.\r\nLine two.\fPage two.")
    validate_sr(build_draft_sr([cr_source], report, algorithm), "draft-line-breaks")


def test_text_value_limit_is_the_ut_limit():
    assert TEXT_VALUE_MAX_BYTES == 2**32 - 2


def test_text_longer_than_the_limit(cr_source, draft_report, algorithm):
    report = dataclasses.replace(draft_report, findings_text="x" * 101)
    with pytest.raises(TextTooLongError, match="findings_text is 102 bytes") as caught:
        build_draft_sr([cr_source], report, algorithm, max_text_bytes=100)
    assert (caught.value.field, caught.value.size, caught.value.limit) == (
        "findings_text",
        102,
        100,
    )


def test_text_limit_counts_encoded_bytes_not_characters(
    cr_source, draft_report, algorithm, validate_sr
):
    fits = dataclasses.replace(draft_report, findings_text="Clear.", impression_text="x" * 100)
    validate_sr(build_draft_sr([cr_source], fits, algorithm, max_text_bytes=100), "draft-limit")
    japanese = dataclasses.replace(fits, impression_text="胸" * 34)  # 34 characters, 102 bytes
    with pytest.raises(TextTooLongError, match="impression_text"):
        build_draft_sr([cr_source], japanese, algorithm, max_text_bytes=100)


@pytest.mark.parametrize("limit", [0, 1, TEXT_VALUE_MAX_BYTES + 1])
def test_max_text_bytes_out_of_range(limit, cr_source, draft_report, algorithm):
    with pytest.raises(ValueError, match="max_text_bytes"):
        build_draft_sr([cr_source], draft_report, algorithm, max_text_bytes=limit)


def test_draft_must_code_all_labels(cr_source, draft_report, algorithm):
    report = dataclasses.replace(draft_report, findings=draft_report.findings[:-1])
    with pytest.raises(InconsistentFindingsError, match="Support Devices"):
        build_draft_sr([cr_source], report, algorithm)


def test_draft_findings_need_probabilities(cr_source, draft_report, algorithm):
    findings = (
        *draft_report.findings[:-1],
        Finding("Support Devices", Presence.ABSENT, probability=None),
    )
    report = dataclasses.replace(draft_report, findings=findings)
    with pytest.raises(InconsistentFindingsError, match="probability"):
        build_draft_sr([cr_source], report, algorithm)


def test_draft_with_no_finding_and_a_pathology(cr_source, algorithm, make_findings):
    report = Report(
        "Text.", "Text.", findings=make_findings(present=frozenset({"No Finding", "Edema"}))
    )
    with pytest.raises(InconsistentFindingsError, match="Edema"):
        build_draft_sr([cr_source], report, algorithm)


def test_worklist_for_another_study(cr_source, draft_report, algorithm):
    worklist = WorklistInfo(str(cr_source.AccessionNumber), study_instance_uid=generate_uid())
    with pytest.raises(WorklistMismatchError, match="Study Instance UID"):
        build_draft_sr([cr_source], draft_report, algorithm, worklist=worklist)


def test_worklist_with_another_accession_number(cr_source, draft_report, algorithm):
    cr_source.AccessionNumber = "ACC-SECRET-1"
    with pytest.raises(WorklistMismatchError, match="Accession Number") as caught:
        build_draft_sr([cr_source], draft_report, algorithm, worklist=WorklistInfo("ACC-OTHER-2"))
    assert "SECRET" not in str(caught.value) and "OTHER" not in str(caught.value)


def test_missing_language(cr_source, draft_report, algorithm):
    with pytest.raises(ValueError, match="language"):
        build_draft_sr([cr_source], dataclasses.replace(draft_report, language=None), algorithm)


def test_bad_language_tag(cr_source, draft_report, algorithm):
    with pytest.raises(ValueError, match="RFC 5646"):
        build_draft_sr(
            [cr_source], dataclasses.replace(draft_report, language="english!"), algorithm
        )


def test_wrong_argument_types(cr_source, draft_report, algorithm):
    with pytest.raises(TypeError, match="report"):
        build_draft_sr([cr_source], "text", algorithm)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="algorithm"):
        build_draft_sr([cr_source], draft_report, "cxr-vlm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source image #0"):
        build_draft_sr([{"PatientID": "1"}], draft_report, algorithm)  # type: ignore[list-item]


def test_every_domain_error_is_an_sr_error():
    for error in (
        EmptyReportError,
        InconsistentFindingsError,
        InconsistentSourcesError,
        InvalidTextError,
        MissingSourceAttributeError,
        TextTooLongError,
        UnsupportedSourceError,
        WorklistMismatchError,
    ):
        assert issubclass(error, SRError)


def test_no_patient_data_in_logs_or_warnings(cr_source, draft_report, algorithm, caplog):
    # highdicom warns about single-component person names and quotes the name ...
    with warnings.catch_warnings(record=True) as premise:
        warnings.simplefilter("always")
        highdicom.valuerep.check_person_name("Zebedee")
    assert any("Zebedee" in str(warning.message) for warning in premise)
    # ... but not when it builds our SRs (the filter sr_templates installs is in effect).
    cr_source.PatientName = "Zebedee"
    cr_source.PatientID = "PID-7731-XYZ"
    cr_source.AccessionNumber = "ACC-99-XYZ"
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        sr = build_draft_sr(
            [cr_source], draft_report, algorithm, worklist=WorklistInfo("ACC-99-XYZ")
        )
    assert str(sr.PatientName) == "Zebedee"
    messages = [record.getMessage() for record in caplog.records]
    assert messages, "expected some log records"
    messages += [str(warning.message) for warning in caught]
    for secret in ("Zebedee", "PID-7731", "ACC-99", draft_report.findings_text[:20]):
        assert not [message for message in messages if secret in message], secret
    assert all(sr.SOPInstanceUID not in message for message in messages)
