"""Codes and the plain data classes: validation at construction."""

from __future__ import annotations

import math

import pytest
from highdicom.sr import CodedConcept

from sr_templates import (
    CHEXPERT_LABELS,
    FINDING_CONCEPTS,
    AlgorithmInfo,
    CompletionFlag,
    Finding,
    PersonInfo,
    Presence,
    Report,
    VerifierInfo,
    WorklistInfo,
    codes,
)


def test_chexpert_labels_match_the_model_outputs():
    """The SR codes every label the classifier predicts, in the classifier's order."""
    from report_language import CHEXPERT_LABELS as MODEL_LABELS

    assert CHEXPERT_LABELS == MODEL_LABELS
    assert tuple(FINDING_CONCEPTS) == CHEXPERT_LABELS


def test_finding_concepts_are_valid_and_distinct():
    keys = [codes.code_key(concept) for concept in FINDING_CONCEPTS.values()]
    assert len(set(keys)) == 14
    for label, concept in FINDING_CONCEPTS.items():
        assert isinstance(concept, CodedConcept)
        assert len(concept.value) <= 16 and len(concept.meaning) <= 64
        assert concept.scheme_designator in {"SCT", "DCM", codes.CHEXPERT_SCHEME}
        assert codes.label_for_concept(concept) == label
    private = [
        label
        for label, concept in FINDING_CONCEPTS.items()
        if concept.scheme_designator == codes.CHEXPERT_SCHEME
    ]
    assert private == ["Enlarged Cardiomediastinum", "Lung Lesion", "Pleural Other"]
    assert codes.CHEXPERT_SCHEME.startswith("99")


def test_snomed_rt_codes_map_to_snomed_ct():
    assert codes.label_for_code_key(codes.normalized_code_key("SRT", "D2-80300")) == (
        "Pneumothorax"
    )
    assert codes.label_for_concept(CodedConcept("112233", "SCT", "Other")) is None


def test_presence_codes_are_disjoint():
    assert not codes.PRESENT_CODES & codes.ABSENCE_CODES
    assert not codes.PRESENT_CODES & codes.UNCERTAIN_CODES
    assert not codes.ABSENCE_CODES & codes.UNCERTAIN_CODES


@pytest.mark.parametrize(
    ("tag", "meaning"), [("en", "English"), ("ja", "Japanese"), ("sv-SE", "sv-SE")]
)
def test_language_concept(tag, meaning):
    concept = codes.language_concept(tag)
    assert (concept.value, concept.scheme_designator, concept.meaning) == (tag, "RFC5646", meaning)


@pytest.mark.parametrize("tag", ["", "english", "en_US", "e", "en-" + "x" * 20])
def test_bad_language_tags(tag):
    with pytest.raises(ValueError, match="RFC 5646"):
        codes.language_concept(tag)


def test_finding_validation():
    assert Finding("Edema", "uncertain", 1).presence is Presence.UNCERTAIN
    assert Finding("Edema", "absent", 1).probability == 1.0
    with pytest.raises(ValueError, match="unknown finding label"):
        Finding("Emphysema", Presence.PRESENT)
    with pytest.raises(ValueError):
        Finding("Edema", "maybe")  # type: ignore[arg-type]
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            Finding("Edema", Presence.PRESENT, bad)
    with pytest.raises(TypeError, match="float"):
        Finding("Edema", Presence.PRESENT, True)
    with pytest.raises(TypeError, match="float"):
        Finding("Edema", Presence.PRESENT, "0.5")  # type: ignore[arg-type]


def test_report_normalizes_and_checks_types():
    report = Report(
        "  Findings.\n", "\tImpression. ", indication="", findings=[], completion="COMPLETE"
    )  # type: ignore[arg-type]
    assert report.findings_text == "Findings."
    assert report.impression_text == "Impression."
    assert report.indication is None
    assert report.findings == ()
    assert report.completion is CompletionFlag.COMPLETE
    with pytest.raises(TypeError, match="Finding"):
        Report("a", "b", findings=("Edema",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="findings_text"):
        Report(None, "b")  # type: ignore[arg-type]
    assert report.finding("Edema") is None


def test_algorithm_info_validation():
    algorithm = AlgorithmInfo("m", "1", {"b": "2", "a": "1"})
    assert algorithm.parameter_items == ("a=1", "b=2")
    with pytest.raises(ValueError, match="name must not be empty"):
        AlgorithmInfo(" ", "1")
    with pytest.raises(ValueError, match="LO allows at most 64"):
        AlgorithmInfo("m" * 65, "1")
    with pytest.raises(ValueError, match="contain no '='"):
        AlgorithmInfo("m", "1", {"a=b": "c"})
    with pytest.raises(TypeError, match="str to str"):
        AlgorithmInfo("m", "1", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="control character"):
        AlgorithmInfo("m", "1", {"a": "x\x00"})


@pytest.mark.parametrize("name", ["Jane Doe", "", "^", "a\\b^c", "A^B^C^D^E^F", "x" * 65 + "^y"])
def test_person_names_must_be_dicom_person_names(name):
    with pytest.raises(ValueError):
        PersonInfo(name)
    with pytest.raises(ValueError):
        VerifierInfo(name, "Hospital")


def test_person_name_with_ideographic_group():
    assert PersonInfo("Yamada^Taro=山田^太郎=やまだ^たろう").name.startswith("Yamada")


def test_verifier_needs_an_organization():
    with pytest.raises(ValueError, match="organization"):
        VerifierInfo("Doe^Jane", " ")


def test_worklist_validation():
    with pytest.raises(ValueError, match="accession_number must not be empty"):
        WorklistInfo("")
    with pytest.raises(ValueError, match="SH allows at most 16"):
        WorklistInfo("A" * 17)
    with pytest.raises(TypeError, match="CodedConcept"):
        WorklistInfo("A1", requested_procedure_code="XR")  # type: ignore[arg-type]
