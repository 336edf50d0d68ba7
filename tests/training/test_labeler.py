"""The CheXpert-style labeler: radiologist-written sentences, aggregation, template reports."""

from __future__ import annotations

import random

import pytest

from report_language import Mention, extract_mentions, label_report, label_reports, split_sentences
from report_language.labels import CHEXPERT_LABELS

_SHORT = {
    "atel": "Atelectasis", "card": "Cardiomegaly", "cons": "Consolidation", "edema": "Edema",
    "ecm": "Enlarged Cardiomediastinum", "frac": "Fracture", "lesion": "Lung Lesion",
    "opac": "Lung Opacity", "nof": "No Finding", "eff": "Pleural Effusion",
    "plother": "Pleural Other", "pna": "Pneumonia", "ptx": "Pneumothorax", "sd": "Support Devices",
}


def _labels(**values: float) -> dict[str, float | None]:
    """All 14 labels None except the given ones (short names above)."""
    out: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    for short, value in values.items():
        out[_SHORT[short]] = value
    return out


# Sentences as radiologists write them in MIMIC-CXR reports, with the labels CheXpert's rules
# give them. No Finding is 1.0 whenever nothing but Support Devices is positive or uncertain.
RADIOLOGIST_SENTENCES: list[tuple[str, dict[str, float | None]]] = [
    ("No evidence of pneumothorax.", _labels(ptx=0, nof=1)),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     _labels(cons=0, eff=0, ptx=0, nof=1)),
    ("There is no pleural effusion or pneumothorax.", _labels(eff=0, ptx=0, nof=1)),
    ("Pneumonia cannot be excluded.", _labels(pna=-1)),
    ("Left basilar opacity may represent atelectasis or pneumonia.",
     _labels(opac=1, atel=-1, pna=-1)),
    ("The heart size is normal.", _labels(card=0, nof=1)),
    ("Normal cardiac silhouette.", _labels(card=0, nof=1)),
    ("The cardiomediastinal silhouette is within normal limits.", _labels(ecm=0, nof=1)),
    ("Heart size is at the upper limits of normal.", _labels(card=0, nof=1)),
    ("Moderate cardiomegaly is unchanged.", _labels(card=1)),
    ("Small bilateral pleural effusions are stable.", _labels(eff=1)),
    ("Persistent left lower lobe consolidation.", _labels(cons=1)),
    ("The previously seen right pneumothorax has resolved.", _labels(ptx=0, nof=1)),
    ("Right pneumothorax is no longer seen.", _labels(ptx=0, nof=1)),
    ("Resolved left lower lobe pneumonia.", _labels(pna=0, nof=1)),
    ("No acute cardiopulmonary process.", _labels(nof=1)),
    ("Mild pulmonary vascular congestion.", _labels(edema=-1)),
    ("Pulmonary edema has improved.", _labels(edema=1)),
    ("Endotracheal tube terminates 4 cm above the carina.", _labels(sd=1, nof=1)),
    ("Interval removal of the nasogastric tube.", _labels(sd=0, nof=1)),
    ("The left-sided chest tube has been removed, and there is no pneumothorax.",
     _labels(sd=0, ptx=0, nof=1)),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.",
     _labels(sd=1, nof=1)),
    ("Healed left rib fractures.", _labels(frac=1)),
    ("No displaced rib fracture is identified.", _labels(frac=0, nof=1)),
    ("Opacity at the right base is concerning for pneumonia.", _labels(opac=1, pna=-1)),
    ("Atelectasis versus consolidation at the left base.", _labels(atel=-1, cons=-1)),
    ("Pleural effusion or atelectasis at the left base.", _labels(eff=-1, atel=-1)),
    ("Possible small left pleural effusion.", _labels(eff=-1)),
    ("There may be a trace left pleural effusion.", _labels(eff=-1)),
    ("Small left effusion is not excluded.", _labels(eff=-1)),
    ("Likely bibasilar atelectasis.", _labels(atel=-1)),
    ("Mediastinum is not widened.", _labels(ecm=0, nof=1)),
    ("Widened mediastinum.", _labels(ecm=1)),
    ("Calcified granuloma in the right upper lobe.", _labels()),
    ("Hyperinflated lungs, consistent with emphysema.", _labels()),
    ("There is a 1.5 cm nodule in the left upper lobe.", _labels(lesion=1)),
    ("The right lung nodule is not visualized on this study.", _labels(lesion=0, nof=1)),
    ("The nodule is not well visualized.", _labels(lesion=-1)),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     _labels(cons=0, eff=0, ptx=0, nof=1)),
    ("Negative for pneumonia.", _labels(pna=0, nof=1)),
    ("No new focal consolidation.", _labels(cons=-1)),
    ("No definite pneumothorax.", _labels(ptx=-1)),
    ("Pneumothorax has resolved, but a small left effusion persists.", _labels(ptx=0, eff=1)),
    ("There is no consolidation, although a small effusion is present.",
     _labels(cons=0, eff=1)),
    ("No change in small right pleural effusion.", _labels(eff=1)),
    ("Mild apical pleural thickening.", _labels(plother=1)),
    ("No pneumothorax is seen and the heart is enlarged.", _labels(ptx=0, card=1)),
    ("Heart size and mediastinal contours are normal.", _labels(card=0, ecm=0, nof=1)),
    ("Borderline heart size.", _labels(card=-1)),
    ("Heart size is stable.", _labels(card=-1)),
    ("The heart is mildly enlarged, unchanged from prior.", _labels(card=1)),
    ("Cardiac silhouette is enlarged but unchanged.", _labels(card=1)),
    ("Unchanged appearance of the heart and mediastinum.", _labels(card=-1, ecm=-1)),
    ("Mild cardiomegaly with normal pulmonary vascularity.", _labels(card=1)),
    ("CHF with pulmonary edema.", _labels(edema=1, card=-1)),
    ("Nasogastric tube projects over the mediastinum.", _labels(sd=1, nof=1)),
    ("Plate-like atelectasis at the left base.", _labels(atel=1)),
    ("Bibasilar opacities likely reflect atelectasis, though superimposed pneumonia cannot "
     "be excluded.", _labels(opac=1, atel=-1, pna=-1)),
    ("Subtle opacity in the lingula, which may represent early pneumonia.",
     _labels(opac=1, pna=-1)),
    ("No pleural effusions; trace right apical pneumothorax.", _labels(eff=0, ptx=1)),
    ("Degenerative changes of the thoracic spine.", _labels()),
    ("No lung lesion.", _labels(lesion=0, nof=1)),
    ("There is a pleural abnormality other than effusion.", _labels(plother=1)),
]


@pytest.mark.parametrize(("sentence", "expected"), RADIOLOGIST_SENTENCES,
                         ids=[s[:40] for s, _ in RADIOLOGIST_SENTENCES])
def test_radiologist_sentences(sentence: str, expected: dict[str, float | None]) -> None:
    assert label_report(sentence) == expected


def test_result_lists_all_labels_in_order() -> None:
    labels = label_report("Small right pleural effusion.")
    assert list(labels) == list(CHEXPERT_LABELS)


def test_full_report_with_sections_and_wrapped_lines() -> None:
    report = ("FINDINGS: PA and lateral views of the chest. There is no\n"
              "pneumothorax. The heart is mildly enlarged. Right internal jugular\n"
              "catheter tip in the low SVC.\n\n"
              "IMPRESSION: Mild cardiomegaly. Pneumonia cannot be\nexcluded.")
    assert label_report(report) == _labels(ptx=0, card=1, sd=1, pna=-1)


def test_positive_wins_over_uncertain_wins_over_negative() -> None:
    assert label_report("Possible left pleural effusion. Small right pleural effusion.") \
        == _labels(eff=1)
    assert label_report("No right pleural effusion. Possible small left pleural effusion.") \
        == _labels(eff=-1)
    assert label_report("No pleural effusion. Pleural effusion cannot be excluded. Small "
                        "left pleural effusion.") == _labels(eff=1)


def test_support_devices_do_not_rule_out_no_finding() -> None:
    assert label_report("ET tube in standard position. No pneumothorax.")["No Finding"] == 1.0
    assert label_report("Possible right pneumothorax.")["No Finding"] is None


def test_other_abnormality_rules_out_no_finding() -> None:
    assert label_report("Emphysema. No pneumothorax.")["No Finding"] is None
    assert label_report("No emphysema. No pneumothorax.")["No Finding"] == 1.0


def test_negation_scope_ends_at_clause_boundary() -> None:
    labels = label_report("No pneumothorax, but there is a moderate right pleural effusion.")
    assert labels["Pneumothorax"] == 0.0
    assert labels["Pleural Effusion"] == 1.0


def test_pseudo_negation_keeps_finding_positive() -> None:
    assert label_report("No significant change in the moderate cardiomegaly.")["Cardiomegaly"] \
        == 1.0


def test_label_reports_keeps_order() -> None:
    texts = ["Small right pleural effusion.", "No pleural effusion.", "Normal chest."]
    assert [r["Pleural Effusion"] for r in label_reports(texts)] == [1.0, 0.0, None]


def test_extract_mentions_names_phrase_and_status() -> None:
    mentions = extract_mentions("Opacity may represent atelectasis.")
    assert [(m.label, m.text, m.status) for m in mentions] == [
        ("Lung Opacity", "opacity", "positive"), ("Atelectasis", "atelectasis", "uncertain")]
    assert isinstance(mentions[0], Mention)
    assert mentions[1].value == -1.0


def test_split_sentences_keeps_decimals_and_joins_wrapped_lines() -> None:
    assert split_sentences("A 1.5 cm\nnodule. No effusion; no pneumothorax.") == [
        "a 1.5 cm nodule", "no effusion", "no pneumothorax"]


def test_empty_report_is_no_finding_as_in_chexpert() -> None:
    assert label_report("") == _labels(nof=1)


def test_non_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="str"):
        label_report(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Reports written by training.text.report_text: the demo model's evaluation relies on the labeler
# recovering exactly the labels those reports were written for.
# --------------------------------------------------------------------------------------------

_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
          "left lower lobe", "lingula", None)
_BONES = ("left lateral 6th rib", "right clavicle", "left lateral 5th and 6th ribs", None)
_DEVICES = ("endotracheal tube", "nasogastric tube",
            "right internal jugular central venous catheter", "left PICC",
            "left-sided pacemaker", None)


def _random_study(rng: random.Random, *, uncertain_devices: bool = True):  # type: ignore[no-untyped-def]
    from training.text.report_text import FINDING_LABELS, FindingMention

    mentions, negatives = [], []
    expected: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    for label in FINDING_LABELS:
        state = rng.choices(["positive", "uncertain", "negative", "absent"],
                            [0.15, 0.1, 0.3, 0.45])[0]
        if state == "uncertain" and label == "Support Devices" and not uncertain_devices:
            state = "positive"
        if state == "absent":
            continue
        if state == "negative":
            negatives.append(label)
            expected[label] = 0.0
            continue
        severity = location = None
        if label in ("Pleural Effusion", "Pneumothorax"):
            severity = rng.choice(["small", "moderate", "large", None])
        elif label in ("Cardiomegaly", "Edema"):
            severity = rng.choice(["mild", "moderate", "severe", None])
        elif label == "Lung Lesion":
            severity, location = rng.choice(["small", "large", None]), rng.choice(_LOBES)
        elif label in ("Consolidation", "Lung Opacity", "Pneumonia"):
            location = rng.choice(_LOBES)
        elif label == "Fracture":
            location = rng.choice(_BONES)
        elif label == "Pleural Other":
            location = rng.choice(["apical", "lateral", None])
        elif label == "Support Devices":
            location = rng.choice(_DEVICES)
        side = rng.choice(["left", "right", "bilateral", None])
        mentions.append(FindingMention(label, state, side, severity, location))  # type: ignore[arg-type]
        expected[label] = 1.0 if state == "positive" else -1.0
    finding = any(v in (1.0, -1.0) for k, v in expected.items() if k != "Support Devices")
    expected["No Finding"] = None if finding else 1.0
    return mentions, negatives, expected


def test_template_findings_are_labelled_exactly() -> None:
    report_text = pytest.importorskip("training.text.report_text")
    rng = random.Random(0)
    for _ in range(300):
        mentions, negatives, expected = _random_study(rng)
        findings = report_text.render_findings(mentions, negatives, rng)
        assert label_report(findings) == expected, findings


def test_template_reports_are_labelled_exactly() -> None:
    report_text = pytest.importorskip("training.text.report_text")
    rng = random.Random(1)
    for _ in range(300):
        # Uncertain devices: see the next test.
        mentions, negatives, expected = _random_study(rng, uncertain_devices=False)
        findings = report_text.render_findings(mentions, negatives, rng)
        impression = report_text.render_impression(mentions, rng)
        report = f"FINDINGS: {findings}\nIMPRESSION: {impression}"
        assert label_report(report) == expected, report


def test_template_impression_keeps_uncertain_device_uncertain() -> None:
    report_text = pytest.importorskip("training.text.report_text")
    mentions = [report_text.FindingMention("Support Devices", "uncertain", location="left PICC"),
                report_text.FindingMention("Pleural Effusion", side="left", severity="small")]
    for seed in range(20):
        impression = report_text.render_impression(mentions, random.Random(seed))
        assert label_report(impression)["Support Devices"] != 1.0, impression
