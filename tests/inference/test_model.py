"""The model as the worker uses it: findings with thresholds, drafts, multi-image studies."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from inference import ChestXrayVLM, PreprocessingError
from report_language import CHEXPERT_LABELS


def test_draft_has_fourteen_findings_with_bundle_thresholds(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    draft = tiny_model.generate_report([chest_cr_path], "Fever.")
    assert [f.label for f in draft.findings] == list(CHEXPERT_LABELS)
    assert all(0.0 <= f.probability <= 1.0 for f in draft.findings)
    assert all(f.threshold == tiny_model.thresholds[f.label] for f in draft.findings)
    assert draft.indication == "Fever." and draft.model_name.startswith("tiny-")


def test_thresholds_decide_positive_findings_per_label(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    analysis = tiny_model.analyse([chest_cr_path])
    saved = dict(tiny_model.thresholds)
    try:
        for finding in analysis.findings:
            tiny_model.thresholds[finding.label] = 1.0
        tiny_model.thresholds["Edema"] = 0.0
        assert tiny_model.analyse([chest_cr_path]).positive_labels == ["Edema"]
        # several positives are listed in label order, as training prompts list them,
        # whatever their probabilities
        for label in ("Support Devices", "Cardiomegaly", "No Finding"):
            tiny_model.thresholds[label] = 0.0
        assert tiny_model.analyse([chest_cr_path]).positive_labels == [
            "Cardiomegaly", "Edema", "Support Devices"
        ]
    finally:
        tiny_model.thresholds.update(saved)


def test_study_probability_is_the_maximum_over_images(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    cr = pydicom.dcmread(chest_cr_path)
    flipped = copy.deepcopy(cr)
    flipped.PixelData = cr.pixel_array[::-1].copy().tobytes()
    one = tiny_model.analyse([cr]).findings
    other = tiny_model.analyse([flipped]).findings
    both = tiny_model.analyse([cr, flipped])
    for a, b, ab in zip(one, other, both.findings, strict=True):
        assert ab.probability == pytest.approx(max(a.probability, b.probability), abs=1e-6)
    assert both.image_tokens.shape[0] == 32  # max_images = 1: tokens of the first image only


def test_non_image_input_raises_a_clear_error(tiny_model: ChestXrayVLM) -> None:
    with pytest.raises(PreprocessingError, match="no pixel data"):
        tiny_model.generate_report([get_testdata_file("test-SR.dcm")])
