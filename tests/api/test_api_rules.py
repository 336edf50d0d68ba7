"""The rules of the dialog without a server: classification, revision parsing, diffs, codes."""

from __future__ import annotations

import difflib
import random
import time

import pytest

from dicom_node.api import classify_message
from dicom_node.api._diff import diff_opcodes, unified_diff
from dicom_node.api._findings import prompt_findings
from dicom_node.api._text import clean_generated, parse_revision, word_diff
from dicom_node.pipeline.finding_codes import code_findings, disagreements
from dicom_node.pipeline.reports import FindingRecord, FindingSource
from dicom_node.store import MessageKind
from sr_templates import CHEXPERT_LABELS

Q, C, R, S, E = (
    MessageKind.QUESTION,
    MessageKind.CORRECTION,
    MessageKind.REWRITE,
    MessageKind.SUMMARY,
    MessageKind.EASY_LANGUAGE,
)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Is the heart enlarged?", Q),
        ("any effusion", Q),
        ("What does atelectasis mean?", Q),
        ("Explain the findings.", Q),
        ("List all findings.", Q),
        ("the heart is enlarged?", Q),
        ("could you tell me whether there is a pneumothorax", Q),
        ("there is no effusion", C),
        ("The patient also has cardiomegaly.", C),
        ("You missed a pneumothorax.", C),
        ("Do not mention the catheter.", C),
        ("Can you remove the effusion?", C),
        ("Please correct the report.", C),
        ("Make it easier to read.", E),
        ("Rewrite the report in plain language.", E),
        ("Can you make it simpler?", E),
        ("Summarise the report.", S),
        ("summarize", S),
        ("make it shorter", S),
        ("Please rephrase the findings", R),
        ("Translate the report into German.", R),
    ],
)
def test_messages_are_classified_by_the_documented_rule(text: str, kind: MessageKind) -> None:
    assert classify_message(text) is kind


def test_intent_overrides_the_question_rule() -> None:
    assert classify_message("there is no effusion", "question") is Q
    assert classify_message("Is the heart enlarged?", "amend") is C
    assert classify_message("Could you summarise it?", "amend") is S
    with pytest.raises(ValueError, match="intent"):
        classify_message("hi", "shout")  # type: ignore[arg-type]


def test_generated_text_loses_control_characters_only() -> None:
    assert clean_generated(" a\x16b\tc\r\nd\x7f\u00e9\ufffd ") == "ab c\nd\u00e9\ufffd"
    assert clean_generated(" x\x00 ", strip=False) == " x "


@pytest.mark.parametrize(
    ("answer", "kind", "expected"),
    [
        ("FINDINGS: No effusion.\nIMPRESSION: Normal chest.", C, ("No effusion.", "Normal chest.")),
        ("findings: No effusion.", C, ("No effusion.", "Old impression.")),
        ("No effusion. Heart normal.", E, ("No effusion. Heart normal.", "Old impression.")),
        ("Impression: Normal.", C, ("Old findings.", "Normal.")),
        ("IMPRESSION: Small effusion.", S, ("Old findings.", "Small effusion.")),
        ("Small effusion.", S, ("Old findings.", "Small effusion.")),
        ("FINDINGS: No\n  effusion.\nCONCLUSION: Normal.", C, ("No effusion.", "Normal.")),
        ("", C, ("", "Old impression.")),
    ],
)
def test_revisions_are_split_into_findings_and_impression(
    answer: str, kind: MessageKind, expected: tuple[str, str]
) -> None:
    assert parse_revision(answer, kind, "Old findings.", "Old impression.") == expected


def test_word_diff_segments_rebuild_both_texts() -> None:
    old = "Small left pleural effusion.\nNo pneumothorax."
    new = "No pleural effusion.\nNo pneumothorax. Heart normal."
    segments = word_diff(old, new)
    assert "".join(s.text for s in segments if s.op != "insert") == old
    assert "".join(s.text for s in segments if s.op != "delete") == new
    assert [s.text for s in segments if s.op == "delete"] == ["Small left"]
    assert word_diff("same", "same") == [word_diff("same", "same")[0]]
    assert word_diff("same", "same")[0].op == "equal"


def _longest_common_subsequence(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous, row = row, [0]
        for j, y in enumerate(b):
            row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
    return row[-1]


def test_the_diff_is_a_shortest_edit_script() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = rng.choices("abc", k=rng.randint(0, 12))
        b = rng.choices("abc", k=rng.randint(0, 12))
        codes = diff_opcodes(a, b)
        assert [x for _, i1, i2, _, _ in codes for x in a[i1:i2]] == a
        assert [x for _, _, _, j1, j2 in codes for x in b[j1:j2]] == b
        equal = [c for c in codes if c[0] == "equal"]
        assert all(a[i1:i2] == b[j1:j2] for _, i1, i2, j1, j2 in equal)
        assert sum(i2 - i1 for _, i1, i2, _, _ in equal) == _longest_common_subsequence(a, b)


def test_the_diff_of_long_repetitive_texts_is_bounded() -> None:
    # difflib.SequenceMatcher(autojunk=False) takes minutes on these (cubic time).
    a, b = ["a", " "] * 20_000, ["b", " "] * 20_000
    started = time.perf_counter()
    codes = diff_opcodes(a, b)
    assert time.perf_counter() - started < 5
    assert codes[-1][2:5:2] == (len(a), len(b))  # one replace: coarse, still complete
    lines = [f"{n}\n" for n in "abcdefghij"]
    changed = lines[:2] + ["x\n"] + lines[3:] + ["k\n"]
    assert unified_diff(lines, changed, "v1", "v2") == "".join(
        difflib.unified_diff(lines, changed, "v1", "v2"))


def _codes(**presence: str) -> list[FindingRecord]:
    return [
        FindingRecord(label, presence.get(label.replace(" ", "_"), "absent"), 0.5, 0.5)
        for label in CHEXPERT_LABELS
    ]


def test_codes_follow_the_text_and_nothing_is_kept_from_the_draft() -> None:
    current = _codes(Pleural_Effusion="present", Support_Devices="present")
    revised = {
        r.label: r
        for r in code_findings(
            "No pleural effusion. Moderate cardiomegaly.", "Cardiomegaly.", previous=current
        )
    }
    assert revised["Pleural Effusion"].presence == "absent"
    assert revised["Cardiomegaly"].presence == "present"
    # Not mentioned: not assessed, never the draft's code.
    assert revised["Support Devices"].presence == "not_assessed"
    assert revised["No Finding"].presence == "absent"
    assert revised["Cardiomegaly"].probability == 0.5  # the model's probability stays
    assert {r.source for r in revised.values()} == {FindingSource.TEXT}


def test_a_normal_text_makes_no_finding_present_and_reader_choices_win() -> None:
    current = _codes(Pleural_Effusion="present")
    normal = {r.label: r.presence for r in code_findings(
        "No pleural effusion.", "No acute cardiopulmonary process.", previous=current)}
    assert normal["Pleural Effusion"] == "absent" and normal["No Finding"] == "present"
    chosen = {r.label: r for r in code_findings(
        "No pleural effusion.", "Normal.", previous=current,
        choices={"Edema": "uncertain", "Pleural Effusion": "present"})}
    assert (chosen["Edema"].presence, chosen["Edema"].source) == ("uncertain", "reader")
    # The reader codes an effusion the text denies: the two disagree until confirmed.
    assert disagreements(list(chosen.values())) == ["Pleural Effusion"]
    assert chosen["No Finding"].presence == "absent"  # an uncertain edema is abnormal
    confirmed = code_findings("No pleural effusion.", "Normal.", previous=list(
        chosen.values()), confirm=["Pleural Effusion"])
    assert disagreements(confirmed) == []
    # A choice carries to the next version; a new text reading lapses the confirmation.
    later = code_findings("Possible small pleural effusion.", "x.", previous=confirmed)
    effusion = {r.label: r for r in later}["Pleural Effusion"]
    assert (effusion.presence, effusion.source) == ("present", "reader")
    assert disagreements(later) == ["Pleural Effusion"]


def test_prompt_lists_the_current_codes_with_a_correction_applied() -> None:
    current = _codes(Pleural_Effusion="present", Support_Devices="present", Edema="uncertain")
    # the reader's accepted codes, not the classifier's; uncertain is not listed
    assert prompt_findings(current, Q, "Is there an effusion?") == (
        "Pleural Effusion", "Support Devices"
    )
    # a correction overrides them: the radiologist's word wins
    assert prompt_findings(current, C, "There is no effusion. You missed a pneumothorax.") == (
        "Pneumothorax", "Support Devices"
    )
    assert prompt_findings(current, C, "Do not mention the catheter.") == ("Pleural Effusion",)
    # a rewrite keeps the list even when its words name a finding
    assert prompt_findings(current, E, "Explain the effusion simply, drop the jargon.") == (
        "Pleural Effusion", "Support Devices"
    )
