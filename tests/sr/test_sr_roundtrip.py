"""Write, save, read: the Report comes back unchanged, in any language."""

from __future__ import annotations

import dataclasses
import io

import pydicom
import pytest

from sr_templates import (
    AlgorithmInfo,
    Finding,
    PersonInfo,
    Presence,
    Report,
    build_amended_sr,
    build_draft_sr,
    read_report,
)

GERMAN = (
    "Kleiner Pleuraerguss links. Kein Pneumothorax.\n"
    "Herzgröße normal; Zwerchfell glatt begrenzt (Äußerung: „unauffällig“)."
)
JAPANESE = "左側に少量の胸水を認める。気胸なし。\n心拡大なし。"


def _reread(sr: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_draft_round_trip(cr_source, sc_source, draft_report, algorithm, validate_sr):
    sr = build_draft_sr([cr_source, sc_source], draft_report, algorithm)
    path = validate_sr(sr, "draft")

    read = read_report(pydicom.dcmread(path))

    assert read == dataclasses.replace(
        draft_report, sop_instance_uid=sr.SOPInstanceUID, algorithm=algorithm
    )
    # The in-memory object reads the same as the file.
    assert read_report(sr) == read


@pytest.mark.parametrize(
    ("language", "findings_text", "impression_text", "indication"),
    [
        ("de", GERMAN, "Kleiner Pleuraerguss links.", "Husten, Fieber seit drei Tagen."),
        ("ja", JAPANESE, "左胸水少量。", "咳と発熱。"),
        ("fr", "Épanchement pleural gauche minime.", "Épanchement minime.", None),
    ],
    ids=["german", "japanese", "french"],
)
def test_non_ascii_text_is_utf8_and_round_trips(
    language,
    findings_text,
    impression_text,
    indication,
    cr_source,
    algorithm,
    make_findings,
    validate_sr,
):
    report = Report(
        findings_text=findings_text,
        impression_text=impression_text,
        indication=indication,
        findings=make_findings(),
        language=language,
    )
    sr = build_draft_sr([cr_source], report, algorithm)
    path = validate_sr(sr, f"draft-{language}")

    raw = path.read_bytes()
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert findings_text.encode("utf-8") in raw
    read = read_report(pydicom.dcmread(path))
    assert read.findings_text == findings_text
    assert read.impression_text == impression_text
    assert read.indication == indication
    assert read.language == language
    assert read == dataclasses.replace(
        report, sop_instance_uid=sr.SOPInstanceUID, algorithm=algorithm
    )


def test_latin1_patient_name_is_reencoded_as_utf8(cr_source, draft_report, algorithm, validate_sr):
    cr_source.SpecificCharacterSet = "ISO_IR 100"
    cr_source.PatientName = "Müller^Jürgen"
    latin1_image = _reread(cr_source)
    assert b"M\xfcller" in latin1_image["PatientName"].value.original_string

    sr = build_draft_sr([latin1_image], draft_report, algorithm)
    path = validate_sr(sr, "draft-latin1-source")

    assert "Müller".encode() in path.read_bytes()
    assert str(pydicom.dcmread(path).PatientName) == "Müller^Jürgen"


def test_amendment_chain_round_trip(cr_source, dx_source, draft_report, algorithm, validate_sr):
    draft = _reread(build_draft_sr([cr_source, dx_source], draft_report, algorithm))
    amender = PersonInfo(
        name="Yamada^Taro=山田^太郎", organization="放射線科", login_name="tyamada"
    )
    amended = dataclasses.replace(
        read_report(draft),
        findings_text="Kein Erguss. Keine Infiltrate.",
        impression_text="Unauffälliger Befund.",
        language="de",
        findings=(
            Finding("No Finding", Presence.PRESENT),
            Finding("Pleural Effusion", Presence.ABSENT, 0.61),
            Finding("Support Devices", Presence.UNCERTAIN),
        ),
    )
    first = build_amended_sr(draft, amended, amender)
    validate_sr(first, "amended")
    read = read_report(_reread(first))

    assert read == dataclasses.replace(
        amended,
        sop_instance_uid=first.SOPInstanceUID,
        predecessors=(draft.SOPInstanceUID,),
        observers=(amender,),
        algorithm=algorithm,
    )


def test_probabilities_keep_full_precision(cr_source, draft_report, algorithm):
    findings = tuple(
        dataclasses.replace(finding, probability=value)
        for finding, value in zip(
            draft_report.findings,
            [1 / 3, 0.1 + 0.2, 1e-9, 0.0, 1.0, 0.123456789012345678, *[0.5] * 8],
            strict=True,
        )
    )
    report = dataclasses.replace(draft_report, findings=findings)
    read = read_report(_reread(build_draft_sr([cr_source], report, algorithm)))
    assert [f.probability for f in read.findings] == [f.probability for f in findings]


def test_algorithm_parameters_round_trip_sorted(cr_source, draft_report):
    algorithm = AlgorithmInfo("m", "1", {"z": "last", "a": "first=with equals"})
    read = read_report(_reread(build_draft_sr([cr_source], draft_report, algorithm)))
    assert read.algorithm == algorithm
    assert read.algorithm is not None
    assert list(read.algorithm.parameters) == ["a", "z"]
    assert read.algorithm.parameters["a"] == "first=with equals"


def test_every_presence_round_trips_and_not_assessed_is_coded(
    cr_source, algorithm, make_findings, validate_sr
):
    findings = list(make_findings())
    presences = list(Presence)
    findings = [
        dataclasses.replace(finding, presence=presences[i % len(presences)])
        if finding.label != "No Finding"
        else dataclasses.replace(finding, presence=Presence.ABSENT)
        for i, finding in enumerate(findings)
    ]
    report = Report(
        findings_text="Heart size normal.",
        impression_text="No acute abnormality.",
        findings=tuple(findings),
    )
    sr = build_draft_sr([cr_source], report, algorithm)
    path = validate_sr(sr, "draft-presences")

    read = read_report(pydicom.dcmread(path))

    assert [f.presence for f in read.findings] == [f.presence for f in findings]
    # "Not assessed" is written as SNOMED CT "Not evaluated", never left uncoded (a coded
    # finding without a presence modifier would read as present).
    assert b"373121007" in path.read_bytes()


def test_a_readers_choice_is_written_as_their_observation_and_read_back(
    cr_source, algorithm, draft_report, validate_sr
):
    reader = PersonInfo("Doe^Jane", "Radiology", login_name="jane")
    draft = build_draft_sr([cr_source], draft_report, algorithm)
    chosen = tuple(
        dataclasses.replace(f, presence=Presence.UNCERTAIN, observer=reader)
        if f.label == "Fracture" else f
        for f in draft_report.findings
    )
    amended = build_amended_sr(
        draft, dataclasses.replace(draft_report, findings=chosen), reader
    )
    path = validate_sr(amended, "amended-reader-choice")

    read = read_report(pydicom.dcmread(path))

    fracture = read.finding("Fracture")
    assert fracture is not None and fracture.presence is Presence.UNCERTAIN
    assert fracture.observer is not None and fracture.observer.name == "Doe^Jane"
    assert fracture.observer.login_name == "jane"
    # Codes that follow the text name no person.
    assert all(f.observer is None for f in read.findings if f.label != "Fracture")
