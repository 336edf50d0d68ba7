"""Reading a radiologist's correction: which findings it asserts and which it denies."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from report_language import (
    apply_stated_findings,
    choose_correction,
    stated_findings,
    unmet_statements,
)
from report_language.labels import CHEXPERT_LABELS, NO_FINDING
from training.evaluate import correction_prompt_findings
from training.instruct.correction import choose_errors, correction_instruction
from training.records import StudyRecord


def labelled_study(rng: random.Random) -> StudyRecord:
    """A study with random CheXpert labels (the report text plays no part here)."""
    labels = {
        name: rng.choice([1.0, 1.0, 0.0, None])
        for name in CHEXPERT_LABELS
        if name != NO_FINDING
    }
    return StudyRecord("s", "t", (Path("i.png"),), ("PA",), "", "", None, labels)


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("There is no effusion.", {"Pleural Effusion": False}),
        ("Please remove the pneumothorax, it's not there.", {"Pneumothorax": False}),
        ("Remove the fracture from the report.", {"Fracture": False}),
        ("I don't see any nodule, please delete it.", {"Lung Lesion": False}),
        ("You missed a small left pneumothorax.", {"Pneumothorax": True}),
        ("Please add mild cardiomegaly.", {"Cardiomegaly": True}),
        (
            "Add a right lower lobe consolidation but remove the edema.",
            {"Consolidation": True, "Edema": False},
        ),
        ("The effusion has resolved; there is a new pneumothorax.",
         {"Pleural Effusion": False, "Pneumothorax": True}),
        ("There is a pleural abnormality other than effusion as well.", {"Pleural Other": True}),
        ("The opacity may represent pneumonia.", {"Lung Opacity": True}),  # hedge: no change
        ("Make it easier to read.", {}),
    ],
)
def test_radiologist_corrections(instruction: str, expected: dict[str, bool]) -> None:
    assert stated_findings(instruction) == expected


def test_generated_correction_instructions_state_exactly_their_errors() -> None:
    rng = random.Random(3)
    checked = 0
    for _ in range(400):
        errors = choose_errors(labelled_study(rng), rng)
        if not errors:
            continue
        instruction = correction_instruction(errors, rng)
        # a false positive of the wrong report (1.0) is denied, a false negative asserted
        assert stated_findings(instruction) == {
            label: value == 0.0 for label, value in errors.items()
        }, instruction
        checked += 1
    assert checked > 200


def test_applied_correction_drops_denied_adds_asserted_in_chexpert_order() -> None:
    current = ("Support Devices", "Pleural Effusion", "Cardiomegaly")
    after = apply_stated_findings(current, "No effusion. You missed a pneumothorax.")
    assert after == ("Cardiomegaly", "Pneumothorax", "Support Devices")
    assert apply_stated_findings(current, "Make it shorter.") == (
        "Cardiomegaly", "Pleural Effusion", "Support Devices"
    )


def test_evaluation_lists_the_wrong_reports_findings_with_the_correction_applied() -> None:
    wrong = "FINDINGS: Small left pleural effusion. Mild cardiomegaly. No pneumothorax."
    assert correction_prompt_findings(wrong, "There is no effusion.") == ("Cardiomegaly",)
    assert correction_prompt_findings(wrong, "You missed a pneumothorax.") == (
        "Cardiomegaly", "Pleural Effusion", "Pneumothorax"
    )


@pytest.mark.parametrize(
    ("report", "instruction", "unmet"),
    [
        ("FINDINGS: Small left pleural effusion.", "There is no effusion.",
         ("Pleural Effusion",)),
        ("FINDINGS: No pleural effusion.", "There is no effusion.", ()),
        ("FINDINGS: Lungs are clear.", "You missed cardiomegaly and an effusion.",
         ("Cardiomegaly", "Pleural Effusion")),
        ("FINDINGS: Moderate cardiomegaly. Small right effusion.",
         "You missed cardiomegaly and an effusion.", ()),
        ("FINDINGS: Possible small effusion.", "Please add an effusion.",
         ("Pleural Effusion",)),  # hedged is not present
        ("FINDINGS: Lungs are clear.", "Make it easier to read.", ()),
    ],
)
def test_unmet_statements(report: str, instruction: str, unmet: tuple[str, ...]) -> None:
    assert unmet_statements(report, instruction) == unmet


def test_choose_correction_prefers_the_answer_unless_the_redraft_meets_more() -> None:
    instruction = "There is no pneumothorax; you missed cardiomegaly."
    copied = "FINDINGS: Small right pneumothorax. Heart size normal."
    half = "FINDINGS: No pneumothorax. Heart size normal."
    right = "FINDINGS: Mild cardiomegaly. No pneumothorax."
    assert choose_correction(copied, None, instruction) == (copied, False)
    assert choose_correction(copied, half, instruction) == (half, True)
    assert choose_correction(half, right, instruction) == (right, True)
    # a tie keeps the dialog answer (it keeps the reader's wording)
    assert choose_correction(half, "FINDINGS: Heart normal. No pneumothorax.", instruction) == (
        half, False
    )
    assert choose_correction(right, copied, instruction) == (right, False)
