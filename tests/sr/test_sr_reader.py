"""Reading SRs that this package did not write: pydicom's samples and a foreign TID 2000 SR."""

from __future__ import annotations

import logging

import pydicom
import pytest
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ImageContentItem,
    NumContentItem,
    PnameContentItem,
    TextContentItem,
)
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence as DataElementSequence
from pydicom.uid import generate_uid

from sr_templates import (
    CompletionFlag,
    Finding,
    Presence,
    UnsupportedDocumentError,
    VerificationFlag,
    VerifierInfo,
    read_report,
)

CONTAINS = "CONTAINS"


def test_reads_pydicom_test_sr():
    report = read_report(pydicom.dcmread(get_testdata_file("test-SR.dcm")))

    # No Findings heading: the document's narrative becomes the findings text, with the
    # CONTINUOUS container read as one sentence.
    assert report.findings_text.startswith("A mass of 3 cm was detected.")
    assert "Sample Text" in report.findings_text
    assert report.impression_text == ""
    assert report.indication is None
    assert report.findings == ()
    assert report.language is None
    assert report.sop_instance_uid == "1.2.276.0.7230010.3.1.4.2139363186.7819.982086466.4"
    assert report.predecessors == ("1.2.276.0.7230010.3.1.4.2139363186.7819.982086466.1",)
    assert report.completion is CompletionFlag.COMPLETE
    assert report.verification is VerificationFlag.VERIFIED
    assert report.verifiers == (
        VerifierInfo("Riesmeier^Jörg", "OFFIS e.V."),
        VerifierInfo("Observer^Verifying", "Organisation"),
    )
    assert report.observers == ()
    assert report.algorithm is None


def test_reads_a_basic_text_sr():
    report = read_report(pydicom.dcmread(get_testdata_file("reportsi.dcm")))
    assert report.findings_text == "Enter text"
    assert report.verification is VerificationFlag.UNVERIFIED


def _text(code: tuple[str, str, str], value: str) -> TextContentItem:
    return TextContentItem(name=CodedConcept(*code), value=value, relationship_type=CONTAINS)


def _section(code: tuple[str, str, str], items) -> ContainerContentItem:
    section = ContainerContentItem(
        name=CodedConcept(*code), is_content_continuous=False, relationship_type=CONTAINS
    )
    section.ContentSequence = DataElementSequence(items)
    return section


def _coded(value: tuple[str, str, str], children) -> CodeContentItem:
    item = CodeContentItem(
        name=CodedConcept("121071", "DCM", "Finding"),
        value=CodedConcept(*value),
        relationship_type=CONTAINS,
    )
    item.ContentSequence = DataElementSequence(children)
    return item


@pytest.fixture
def foreign_sr(cr_source) -> ComprehensiveSR:
    """A TID 2000 SR as another vendor might write it: LOINC headings, SNOMED RT codes,
    RadLex presence values, a probability in percent, a person observer without observer
    type, an extra section and a repeated finding."""
    image = ImageContentItem(
        name=CodedConcept("121112", "DCM", "Source of Measurement"),
        referenced_sop_class_uid=cr_source.SOPClassUID,
        referenced_sop_instance_uid=cr_source.SOPInstanceUID,
        relationship_type="INFERRED FROM",
    )
    pneumothorax = _coded(
        ("D2-80300", "SRT", "Pneumothorax"),
        [
            CodeContentItem(
                name=CodedConcept("705057003", "SCT", "Presence"),
                value=CodedConcept("RID28473", "RADLEX", "absent"),
                relationship_type="HAS CONCEPT MOD",
            ),
            NumContentItem(
                name=CodedConcept("122157", "DCM", "Probability"),
                value=12.5,
                unit=CodedConcept("%", "UCUM", "percent"),
                relationship_type="HAS PROPERTIES",
            ),
            image,
        ],
    )
    effusion = _coded(("60046008", "SCT", "Pleural effusion"), [])
    repeated = _coded(
        ("36118008", "SCT", "Pneumothorax"),
        [
            CodeContentItem(
                name=CodedConcept("705057003", "SCT", "Presence"),
                value=CodedConcept("52101004", "SCT", "Present"),
                relationship_type="HAS CONCEPT MOD",
            )
        ],
    )
    root = ContainerContentItem(
        name=CodedConcept("18748-4", "LN", "Diagnostic Imaging Report"),
        is_content_continuous=False,
    )
    root.ContentSequence = DataElementSequence(
        [
            CodeContentItem(
                name=CodedConcept("121049", "DCM", "Language of Content Item and Descendants"),
                value=CodedConcept("en-US", "RFC5646", "English (United States)"),
                relationship_type="HAS CONCEPT MOD",
            ),
            PnameContentItem(
                name=CodedConcept("121008", "DCM", "Person Observer Name"),
                value="Smith^John",
                relationship_type="HAS OBS CONTEXT",
            ),
            _section(("11329-0", "LN", "History"), [_text(("11329-0", "LN", "History"), "Fall.")]),
            _section(
                ("59776-5", "LN", "Findings"),
                [
                    _text(("121071", "DCM", "Finding"), "Effusion on the right."),
                    pneumothorax,
                    effusion,
                    repeated,
                ],
            ),
            _section(
                ("55110-1", "LN", "Conclusions"),
                [_text(("121077", "DCM", "Conclusion"), "Right effusion.")],
            ),
            _section(
                ("18783-1", "LN", "Recommendations"),
                [_text(("121075", "DCM", "Recommendation"), "Follow-up in 6 weeks.")],
            ),
        ]
    )
    return ComprehensiveSR(
        evidence=[cr_source],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        is_complete=True,
        is_verified=True,
        verifying_observer_name="Smith^John",
        verifying_organization="Other Hospital",
    )


def test_reads_a_foreign_tid_2000_sr(foreign_sr, caplog):
    caplog.set_level(logging.WARNING)
    report = read_report(foreign_sr)

    assert report.findings_text == "Effusion on the right."
    assert report.impression_text == "Right effusion."
    assert report.indication == "Fall."
    assert report.language == "en-US"
    assert report.findings == (
        Finding("Pneumothorax", Presence.ABSENT, 0.125),
        Finding("Pleural Effusion", Presence.PRESENT),
    )
    assert [person.name for person in report.observers] == ["Smith^John"]
    assert report.verifiers == (VerifierInfo("Smith^John", "Other Hospital"),)
    assert report.completion is CompletionFlag.COMPLETE
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "more than once" in warnings
    assert "outside the Findings" in warnings
    assert "Follow-up" not in warnings and "Smith" not in warnings


def test_invalid_verifier_name_is_left_out_without_quoting_it(foreign_sr, caplog):
    foreign_sr.VerifyingObserverSequence[0].VerifyingObserverName = "Johnsmith"
    caplog.set_level(logging.WARNING)
    assert read_report(foreign_sr).verifiers == ()
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "verifying observer was left out" in messages
    assert "Johnsmith" not in messages


def test_image_is_not_an_sr(cr_source):
    with pytest.raises(UnsupportedDocumentError, match="not an SR document"):
        read_report(cr_source)


def test_reader_needs_a_dataset():
    with pytest.raises(TypeError, match="Dataset"):
        read_report("report.dcm")  # type: ignore[arg-type]
