"""Report targets with the listed findings stated first."""

from __future__ import annotations

from pathlib import Path

from report_language.labeler import label_report
from training.records import StudyRecord
from training.text.report_order import findings_first, order_report, reorder_report

FINDINGS = (
    "No pleural effusion. Pleural thickening along the left lateral chest wall. The "
    "mediastinal contours are normal. Focal consolidation is present in the right middle "
    "lobe. Right pneumothorax, small in size. The cardiac silhouette is mildly enlarged."
)
LISTED = ["Cardiomegaly", "Consolidation", "Pleural Other", "Pneumothorax"]


def study(impression: str) -> StudyRecord:
    return StudyRecord("p", "s", (Path("i.png"),), ("PA",), FINDINGS, impression, None, {})


def test_listed_findings_come_first_in_the_prompts_order() -> None:
    assert findings_first(FINDINGS, LISTED) == (
        "The cardiac silhouette is mildly enlarged. Focal consolidation is present in the "
        "right middle lobe. Pleural thickening along the left lateral chest wall. Right "
        "pneumothorax, small in size. No pleural effusion. The mediastinal contours are normal."
    )


def test_reordering_keeps_every_sentence_and_every_label() -> None:
    reordered = findings_first(FINDINGS, LISTED)
    def sentences(text: str) -> list[str]:
        return sorted(part.rstrip(".") for part in text.split(". "))

    assert sentences(reordered) == sentences(FINDINGS)
    assert label_report(reordered) == label_report(FINDINGS)


def test_as_written_keeps_the_report_and_sections_are_formatted() -> None:
    record = study(impression="Small pneumothorax.")
    assert order_report(record, LISTED, "as_written") == (
        f"FINDINGS: {FINDINGS}\nIMPRESSION: Small pneumothorax."
    )
    ordered = order_report(study(impression=""), LISTED, "findings_first")
    assert ordered.startswith("FINDINGS: The cardiac silhouette") and "IMPRESSION" not in ordered
    # nothing listed: the order is unchanged
    assert findings_first(FINDINGS, []) == FINDINGS


def test_reorder_report_orders_the_findings_of_a_report_text_and_keeps_its_impression() -> None:
    text = f"FINDINGS: {FINDINGS}\nIMPRESSION: Small pneumothorax."
    assert reorder_report(text, LISTED) == (
        f"FINDINGS: {findings_first(FINDINGS, LISTED)}\nIMPRESSION: Small pneumothorax."
    )
    assert reorder_report(f"FINDINGS: {FINDINGS}", []) == f"FINDINGS: {FINDINGS}"
