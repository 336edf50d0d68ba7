"""Addenda to a signed report: a new SR that repeats the signed one and appends the addendum.

One chain is built per module: draft -> signed amendment -> addendum 1 -> addendum 2 (built
from addendum 1 as read back from its file bytes, as the node would).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import shutil
import subprocess

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    MammographyCADSRStorage,
    SecondaryCaptureImageStorage,
)

from sr_templates import (
    ADDENDUM_SERIES_DESCRIPTION,
    ADDENDUM_SERIES_NUMBER,
    Addendum,
    CompletionFlag,
    EmptyReportError,
    InvalidTextError,
    NotSignedError,
    PersonInfo,
    TextTooLongError,
    UnsupportedDocumentError,
    VerificationFlag,
    VerifierInfo,
    WorklistInfo,
    build_addendum_sr,
    build_amended_sr,
    build_draft_sr,
    read_report,
)

AMENDER = PersonInfo(name="Doe^Jane", organization="Radiology", login_name="jdoe")
SIGN_OFF = VerifierInfo(name="Doe^Jane^^Dr.", organization="General Hospital")
SIGNED_AT = datetime.datetime(2024, 5, 1, 9, 0, 0)

FIRST_AUTHOR = PersonInfo(name="Roe^Rick", organization="Radiology", login_name="rroe")
FIRST_VERIFIER = VerifierInfo(name="Roe^Rick", organization="General Hospital")
FIRST_AT = datetime.datetime(2024, 5, 2, 10, 15, 30)
FIRST_TEXT = "Findings discussed by phone with the referring physician at 10:05."

SECOND_AUTHOR = PersonInfo(name="Müller^Anna")
SECOND_VERIFIER = VerifierInfo(name="Müller^Anna", organization="General Hospital")
SECOND_AT = datetime.datetime(2024, 5, 3, 11, 0, 0)
SECOND_TEXT = "Nachtrag: Vergleich mit der Voraufnahme vom 2024-04-01, Erguss größenkonstant."

ADDENDUM_HEADING = ("55107-7", "LN", "Addendum")  # CID 7001
ADDENDUM_TEXT_CONCEPT = ("121106", "DCM", "Comment")


def _bytes(sr: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _encoded(item: pydicom.Dataset) -> bytes:
    """One content item as the bytes DICOM stores (explicit VR little endian, UTF-8)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, item, parent_encoding="utf_8")
    return fp.getvalue()


def _code(item: pydicom.Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, ...]:
    code = item[keyword][0]
    return (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning)


@pytest.fixture(scope="module")
def _chain_bytes(_cr_header, derive_source, draft_report, algorithm) -> dict[str, bytes]:
    # Built once per module (building is the slow part); each test reads its own copies.
    cr_source = copy.deepcopy(_cr_header)
    sc_source = derive_source(cr_source, SecondaryCaptureImageStorage)
    worklist = WorklistInfo(str(cr_source.AccessionNumber), "RP-1", "XR CHEST PA")
    draft = _read(
        _bytes(build_draft_sr([cr_source, sc_source], draft_report, algorithm, worklist=worklist))
    )
    edited = dataclasses.replace(
        read_report(draft), findings_text="Small left pleural effusion. No pneumothorax."
    )
    signed = _read(
        _bytes(
            build_amended_sr(draft, edited, AMENDER, sign_off=SIGN_OFF, content_datetime=SIGNED_AT)
        )
    )
    first = _read(
        _bytes(
            build_addendum_sr(
                signed, FIRST_TEXT, FIRST_AUTHOR, FIRST_VERIFIER, content_datetime=FIRST_AT
            )
        )
    )
    second = build_addendum_sr(
        first, SECOND_TEXT, SECOND_AUTHOR, SECOND_VERIFIER, content_datetime=SECOND_AT
    )
    return {
        "draft": _bytes(draft),
        "signed": _bytes(signed),
        "first": _bytes(first),
        "second": _bytes(second),
    }


@pytest.fixture
def chain(_chain_bytes) -> dict[str, pydicom.Dataset]:
    """Draft, signed report and both addendum SRs, each read from its file bytes."""
    return {name: _read(data) for name, data in _chain_bytes.items()}


def test_addendum_srs_are_valid_signed_documents_in_new_series(chain, validate_sr):
    signed, first, second = chain["signed"], chain["first"], chain["second"]
    validate_sr(first, "addendum-1")
    validate_sr(second, "addendum-2")

    for sr, previous in ((first, signed), (second, first)):
        assert sr.SOPClassUID == ComprehensiveSRStorage
        assert sr.SOPInstanceUID != previous.SOPInstanceUID
        assert sr.SeriesInstanceUID != previous.SeriesInstanceUID
        assert sr.StudyInstanceUID == signed.StudyInstanceUID
        assert sr.PatientID == signed.PatientID and sr.PatientName == signed.PatientName
        assert sr.AccessionNumber == signed.AccessionNumber
        assert sr.SeriesDescription == ADDENDUM_SERIES_DESCRIPTION
        assert sr.SeriesNumber == ADDENDUM_SERIES_NUMBER
        assert sr.CompletionFlag == "COMPLETE"
        assert sr.VerificationFlag == "VERIFIED"
        assert sr.PreliminaryFlag == "FINAL"
        assert sr.ReferencedRequestSequence == signed.ReferencedRequestSequence
        assert sr.CurrentRequestedProcedureEvidenceSequence == (
            signed.CurrentRequestedProcedureEvidenceSequence
        )
    assert (second.ContentDate, second.ContentTime) == ("20240503", "110000")
    read = read_report(second)
    assert read.completion is CompletionFlag.COMPLETE
    assert read.verification is VerificationFlag.VERIFIED


def test_predecessors_name_the_whole_chain(chain):
    draft, signed, first, second = (chain[k] for k in ("draft", "signed", "first", "second"))
    assert read_report(signed).predecessors == (draft.SOPInstanceUID,)
    assert read_report(first).predecessors == (draft.SOPInstanceUID, signed.SOPInstanceUID)
    assert read_report(second).predecessors == (
        draft.SOPInstanceUID,
        signed.SOPInstanceUID,
        first.SOPInstanceUID,
    )
    # Each reference carries the predecessor's own series and SOP class, and the signed
    # reports an addendum was added to say so (CID 7009); the draft was replaced, not added to.
    references = {
        item.SeriesInstanceUID: item.ReferencedSOPSequence[0]
        for study in second.PredecessorDocumentsSequence
        for item in study.ReferencedSeriesSequence
    }
    assert references[first.SeriesInstanceUID].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert references[signed.SeriesInstanceUID].ReferencedSOPClassUID == signed.SOPClassUID
    purposes = {
        uid: [_code(ref, "PurposeOfReferenceCodeSequence")]
        if "PurposeOfReferenceCodeSequence" in ref
        else []
        for uid, ref in references.items()
    }
    addended = [("121361", "DCM", "Addended report")]
    assert purposes == {
        draft.SeriesInstanceUID: [],
        signed.SeriesInstanceUID: addended,
        first.SeriesInstanceUID: addended,
    }


def test_signed_content_is_copied_byte_for_byte(chain):
    signed = chain["signed"]
    signed_items = list(signed.ContentSequence)
    for sr in (chain["first"], chain["second"]):
        assert _code(sr) == _code(signed)  # document title
        assert sr.ContentTemplateSequence == signed.ContentTemplateSequence
        assert sr.ContinuityOfContent == signed.ContinuityOfContent
        copied = list(sr.ContentSequence)[: len(signed_items)]
        assert [_encoded(item) for item in copied] == [_encoded(item) for item in signed_items]
        # The private CheXpert scheme the copied findings use is still declared.
        assert sr.CodingSchemeIdentificationSequence == signed.CodingSchemeIdentificationSequence

    original = read_report(signed)
    read = read_report(chain["second"])
    assert (
        read.findings_text
        == original.findings_text
        == ("Small left pleural effusion. No pneumothorax.")
    )
    assert read.impression_text == original.impression_text
    assert read.indication == original.indication
    assert read.findings == original.findings  # labels, presence and probabilities
    assert len(read.findings) == 14
    assert read.language == original.language == "en"
    assert read.algorithm == original.algorithm
    assert read.observers == original.observers == (AMENDER,)


def test_addenda_follow_the_impressions_oldest_first(chain):
    second = chain["second"]
    root = list(second.ContentSequence)
    headings = [_code(item) for item in root if item.ValueType == "CONTAINER"]
    assert headings[-3:] == [("121072", "DCM", "Impressions"), ADDENDUM_HEADING, ADDENDUM_HEADING]

    texts = []
    for section, author, when in (
        (root[-2], FIRST_AUTHOR, "20240502101530"),
        (root[-1], SECOND_AUTHOR, "20240503110000"),
    ):
        assert section.RelationshipType == "CONTAINS"
        assert section.ObservationDateTime == when
        context = [i for i in section.ContentSequence if i.RelationshipType == "HAS OBS CONTEXT"]
        assert _code(context[0], "ConceptCodeSequence") == ("121006", "DCM", "Person")
        assert str(context[1].PersonName) == author.name
        (text,) = [i for i in section.ContentSequence if i.RelationshipType == "CONTAINS"]
        assert _code(text) == ADDENDUM_TEXT_CONCEPT
        texts.append(text.TextValue)
    assert texts == [FIRST_TEXT, SECOND_TEXT]

    assert read_report(chain["signed"]).addenda == ()
    first_addendum = Addendum(FIRST_TEXT, FIRST_AUTHOR, FIRST_AT)
    assert read_report(chain["first"]).addenda == (first_addendum,)
    assert read_report(second).addenda == (
        first_addendum,
        Addendum(SECOND_TEXT, SECOND_AUTHOR, SECOND_AT),
    )


def test_root_keeps_the_time_of_the_signed_content(chain):
    # The new SR's Content Date/Time is the addendum's; the copied content keeps its own.
    signed, first, second = chain["signed"], chain["first"], chain["second"]
    assert "ObservationDateTime" not in signed
    assert first.ObservationDateTime == f"{signed.ContentDate}{signed.ContentTime}"
    assert first.ObservationDateTime == "20240501090000"
    assert second.ObservationDateTime == first.ObservationDateTime


def test_verifiers_accumulate_with_their_original_datetimes(chain):
    signed, first, second = chain["signed"], chain["first"], chain["second"]
    (original,) = signed.VerifyingObserverSequence

    def summary(sr: pydicom.Dataset) -> list[tuple[str, str, str]]:
        return [
            (str(item.VerifyingObserverName), item.VerifyingOrganization, item.VerificationDateTime)
            for item in sr.VerifyingObserverSequence
        ]

    signed_entry = summary(signed)[0]
    assert summary(first) == [
        signed_entry,
        (FIRST_VERIFIER.name, FIRST_VERIFIER.organization, "20240502101530"),
    ]
    assert summary(second) == [
        *summary(first),
        (SECOND_VERIFIER.name, SECOND_VERIFIER.organization, "20240503110000"),
    ]
    assert first.VerifyingObserverSequence[0] == original  # copied whole, not rebuilt
    assert read_report(second).verifiers == (SIGN_OFF, FIRST_VERIFIER, SECOND_VERIFIER)


def test_signed_report_is_not_changed(chain):
    signed = chain["signed"]
    before = _bytes(signed)
    build_addendum_sr(signed, "Late addendum.", FIRST_AUTHOR, FIRST_VERIFIER)
    assert _bytes(signed) == before


def test_dsrdump_shows_the_addendum(chain, tmp_path):
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        pytest.fail("dsrdump is not installed; install the Debian package dcmtk", pytrace=False)
    path = tmp_path / "addendum-1.dcm"
    chain["first"].save_as(path, enforce_file_format=True)
    result = subprocess.run(
        [dsrdump, "+Pc", "+Pl", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    container = next(line for line in lines if "Addendum" in line)
    assert container.strip() == (
        '<contains CONTAINER:(55107-7,LN,"Addendum")=SEPARATE> {2024-05-02 10:15:30}'
    )
    position = lines.index(container)
    section = [line.strip() for line in lines[position + 1 :]]
    assert f'<contains TEXT:(121106,DCM,"Comment")="{FIRST_TEXT}">' in section
    assert '<has obs context PNAME:(121008,DCM,"Person Observer Name")="Roe^Rick">' in section
    assert "Verification Flag   : VERIFIED" in lines
    assert "                      2024-05-02 10:15:30, Roe^Rick, General Hospital" in lines


@pytest.mark.parametrize("name", ["draft", "unsigned"])
def test_unsigned_reports_get_no_addendum(chain, name):
    previous = chain["draft"]
    if name == "unsigned":
        previous = _read(_bytes(build_amended_sr(previous, read_report(previous), AMENDER)))
    with pytest.raises(NotSignedError, match="signed is not a signed report"):
        build_addendum_sr(previous, "Addendum.", FIRST_AUTHOR, FIRST_VERIFIER)


def test_an_image_gets_no_addendum(cr_source):
    with pytest.raises(UnsupportedDocumentError, match="not an SR document"):
        build_addendum_sr(cr_source, "Addendum.", FIRST_AUTHOR, FIRST_VERIFIER)


def test_verified_sr_without_verifier_is_rejected(chain):
    signed = chain["signed"]
    del signed.VerifyingObserverSequence
    with pytest.raises(UnsupportedDocumentError, match="names no Verifying Observer"):
        build_addendum_sr(signed, "Addendum.", FIRST_AUTHOR, FIRST_VERIFIER)


def test_sr_of_another_class_is_rejected(chain):
    signed = chain["signed"]
    signed.SOPClassUID = MammographyCADSRStorage
    with pytest.raises(UnsupportedDocumentError, match="SOP class"):
        build_addendum_sr(signed, "Addendum.", FIRST_AUTHOR, FIRST_VERIFIER)


@pytest.mark.parametrize(
    ("text", "max_text_bytes", "error", "message"),
    [
        ("   \n ", None, EmptyReportError, "text is empty; an addendum needs a text"),
        ("Call\x07back.", None, InvalidTextError, "U\\+0007 at index 4"),
        ("Sixteen bytes!!! and more", 16, TextTooLongError, "text is 26 bytes"),
    ],
    ids=["empty", "control-character", "too-long"],
)
def test_bad_addendum_text_is_rejected(chain, text, max_text_bytes, error, message):
    limits = {} if max_text_bytes is None else {"max_text_bytes": max_text_bytes}
    with pytest.raises(error, match=message):
        build_addendum_sr(chain["signed"], text, FIRST_AUTHOR, FIRST_VERIFIER, **limits)


def test_text_at_the_byte_limit_is_accepted(chain):
    sr = build_addendum_sr(
        chain["signed"], "Sixteen bytes!!!", FIRST_AUTHOR, FIRST_VERIFIER, max_text_bytes=16
    )
    assert read_report(sr).addenda[-1].text == "Sixteen bytes!!!"


def test_draft_and_amendment_refuse_a_report_with_addenda(chain, cr_source, algorithm):
    report = read_report(chain["first"])
    assert report.addenda
    with pytest.raises(ValueError, match="report.addenda must be empty"):
        build_amended_sr(chain["signed"], report, AMENDER)
    with pytest.raises(ValueError, match="report.addenda must be empty"):
        build_draft_sr([cr_source], report, algorithm)


def test_reader_accepts_the_older_dcm_addendum_heading(chain):
    first = chain["first"]
    heading = first.ContentSequence[-1].ConceptNameCodeSequence[0]
    heading.CodeValue, heading.CodingSchemeDesignator = "121078", "DCM"
    read = read_report(first)
    assert read.addenda == (Addendum(FIRST_TEXT, FIRST_AUTHOR, FIRST_AT),)
    assert FIRST_TEXT not in read.findings_text


def test_reader_inherits_the_addendum_time_when_the_section_has_none(chain):
    # PS3.3: without its own Observation DateTime an item has that of the higher items,
    # else the Content Date and Time.
    first = chain["first"]
    del first.ContentSequence[-1].ObservationDateTime
    assert read_report(first).addenda[0].datetime == datetime.datetime(2024, 5, 1, 9, 0, 0)
    del first.ObservationDateTime
    assert read_report(first).addenda[0].datetime == FIRST_AT


def test_wrong_argument_types(chain):
    signed = chain["signed"]
    with pytest.raises(TypeError, match="signed"):
        build_addendum_sr(b"not a dataset", "A.", FIRST_AUTHOR, FIRST_VERIFIER)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text"):
        build_addendum_sr(signed, None, FIRST_AUTHOR, FIRST_VERIFIER)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="author"):
        build_addendum_sr(signed, "A.", "Roe^Rick", FIRST_VERIFIER)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sign_off"):
        build_addendum_sr(signed, "A.", FIRST_AUTHOR, FIRST_AUTHOR)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="content_datetime"):
        build_addendum_sr(
            signed,
            "A.",
            FIRST_AUTHOR,
            FIRST_VERIFIER,
            content_datetime="2024",  # type: ignore[arg-type]
        )
    with pytest.raises(TypeError, match="Addendum.author"):
        Addendum("A.", "Roe^Rick")  # type: ignore[arg-type]
