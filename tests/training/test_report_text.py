"""Report text: every sentence is recoverable by a rule-based CheXpert-style labeler."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from report_language.labels import CHEXPERT_LABELS
from training.text.report_text import (
    FINDING_LABELS,
    KEYWORDS,
    FindingMention,
    easy_language,
    mentions_for_labels,
    negative_sentence,
    positive_sentence,
    render_findings,
    render_impression,
    render_indication,
)

_UNCERTAIN = re.compile(r"\b(possible|possibly|questionable|cannot be excluded|may represent|"
                        r"borderline)\b")
_NEGATION = re.compile(r"\b(no|not|normal|within normal limits|without)\b")


def _mentioned(sentence: str) -> set[str]:
    text = sentence.lower()
    return {label for label, words in KEYWORDS.items()
            if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)}


def label_report(text: str) -> dict[str, float]:
    """A minimal CheXpert-style labeler: keyword, then hedge, then negation, per sentence."""
    found: dict[str, set[float]] = {}
    for sentence in re.split(r"(?<=\.)\s+", text):
        low = sentence.lower()
        value = -1.0 if _UNCERTAIN.search(low) else 0.0 if _NEGATION.search(low) else 1.0
        for label in _mentioned(sentence):
            found.setdefault(label, set()).add(value)
    out = {}
    for label, values in found.items():
        out[label] = 1.0 if 1.0 in values else -1.0 if -1.0 in values else 0.0
    return out


def _all_mentions() -> list[FindingMention]:
    """A broad table of mentions: every label with the attributes the generator uses."""
    out = []
    lobes = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
             "lingula", "left lower lobe")
    for certainty in ("positive", "uncertain"):
        for side, sev in itertools.product(("left", "right", "bilateral"),
                                           ("small", "moderate", "large")):
            out.append(FindingMention("Pleural Effusion", certainty, side, sev))  # type: ignore[arg-type]
            if side != "bilateral":
                out.append(FindingMention("Pneumothorax", certainty, side, sev))  # type: ignore[arg-type]
        for sev in ("mild", "moderate", "severe", None):
            out.append(FindingMention("Cardiomegaly", certainty, None, sev))  # type: ignore[arg-type]
            out.append(FindingMention("Edema", certainty, "bilateral", sev))  # type: ignore[arg-type]
        for lobe in lobes:
            side = "left" if lobe.startswith(("left", "lingula")) else "right"
            for label in ("Consolidation", "Lung Opacity", "Pneumonia"):
                out.append(FindingMention(label, certainty, side, None, lobe))  # type: ignore[arg-type]
            for sev in ("small", "large"):
                out.append(FindingMention("Lung Lesion", certainty, side, sev, lobe))  # type: ignore[arg-type]
        for side in ("left", "right", "bilateral"):
            out.append(FindingMention("Atelectasis", certainty, side, None, "lung base"))  # type: ignore[arg-type]
            for where in ("apical", "lateral"):
                out.append(FindingMention("Pleural Other", certainty, side, None, where))  # type: ignore[arg-type]
        for where in ("left lateral 6th rib", "right lateral 5th and 6th ribs",
                      "left lateral 4th through 6th ribs", "right clavicle"):
            out.append(FindingMention("Fracture", certainty, None, None, where))  # type: ignore[arg-type]
        out.append(FindingMention("Enlarged Cardiomediastinum", certainty))  # type: ignore[arg-type]
    for device in ("endotracheal tube", "nasogastric tube", "left PICC",
                   "right internal jugular central venous catheter", "left-sided pacemaker"):
        out.append(FindingMention("Support Devices", location=device))
    for label in FINDING_LABELS:  # bare mentions, as mentions_for_labels makes them
        out.append(FindingMention(label))
        out.append(FindingMention(label, certainty="uncertain"))
    return out


@pytest.mark.parametrize("mention", _all_mentions(), ids=lambda m: f"{m.label}-{m.certainty}")
def test_every_phrasing_states_exactly_its_label(mention: FindingMention) -> None:
    for seed in range(12):  # every template of the label, with high probability
        sentence = positive_sentence(mention, random.Random(seed))
        assert sentence.endswith(".") and sentence[0].isupper()
        assert "  " not in sentence
        expected = 1.0 if mention.certainty == "positive" else -1.0
        assert label_report(sentence) == {mention.label: expected}, sentence


def test_laterality_and_severity_words_match_the_mention() -> None:
    rng = random.Random(0)
    for _ in range(20):
        text = positive_sentence(FindingMention("Pleural Effusion", side="left",
                                                severity="small"), rng).lower()
        assert "left" in text and "right" not in text and "small" in text
        text = positive_sentence(FindingMention("Pneumothorax", side="right",
                                                severity="large"), rng).lower()
        assert "right" in text and "left" not in text and "large" in text
        text = positive_sentence(FindingMention("Cardiomegaly", severity="severe"), rng).lower()
        assert "severe" in text or "markedly" in text


@pytest.mark.parametrize("label", FINDING_LABELS)
def test_negative_sentences_negate_only_their_label(label: str) -> None:
    for seed in range(10):
        sentence = negative_sentence(label, random.Random(seed))
        assert label_report(sentence) == {label: 0.0}, sentence


def test_findings_recover_mentions_and_negatives_in_varied_order() -> None:
    mentions = [FindingMention("Pleural Effusion", side="right", severity="moderate"),
                FindingMention("Cardiomegaly", severity="mild"),
                FindingMention("Atelectasis", "uncertain", side="left"),
                FindingMention("Support Devices", location="endotracheal tube")]
    negatives = ["Pneumothorax", "Consolidation", "Edema", "Enlarged Cardiomediastinum"]
    texts = {render_findings(mentions, negatives, random.Random(seed)) for seed in range(30)}
    assert len(texts) > 20  # phrasing and order vary
    for text in texts:
        assert label_report(text) == {
            "Pleural Effusion": 1.0, "Cardiomegaly": 1.0, "Atelectasis": -1.0,
            "Support Devices": 1.0, "Pneumothorax": 0.0, "Consolidation": 0.0, "Edema": 0.0,
            "Enlarged Cardiomediastinum": 0.0,
        }, text
    assert render_findings(mentions, negatives, random.Random(4)) == render_findings(
        mentions, negatives, random.Random(4))


def test_a_label_cannot_be_both_mentioned_and_negative() -> None:
    with pytest.raises(ValueError, match="both mentioned and negative"):
        render_findings([FindingMention("Edema")], ["Edema"], random.Random(0))


def test_impression_lists_findings_by_importance_or_states_normal() -> None:
    rng = random.Random(1)
    normal = render_impression([], rng)
    assert normal in ("No acute cardiopulmonary process.", "No acute cardiopulmonary "
                      "abnormality.", "No acute intrathoracic process.",
                      "Normal chest radiograph.")
    mentions = [FindingMention("Cardiomegaly"),
                FindingMention("Pneumothorax", side="left", severity="small")]
    for seed in range(10):
        text = render_impression(mentions, random.Random(seed))
        assert text.lower().index("pneumothorax") < text.lower().index("cardiomegaly")
        assert label_report(text) == {"Pneumothorax": 1.0, "Cardiomegaly": 1.0}


def test_mentions_for_labels_round_trips_a_label_vector() -> None:
    labels = {name: None for name in CHEXPERT_LABELS} | {
        "Edema": 1.0, "Fracture": -1.0, "Pneumothorax": 0.0, "No Finding": None}
    mentions, negatives = mentions_for_labels(labels, random.Random(0))
    assert {(m.label, m.certainty) for m in mentions} == {("Edema", "positive"),
                                                         ("Fracture", "uncertain")}
    assert negatives == ["Pneumothorax"]
    text = render_findings(mentions, negatives, random.Random(2)) + " " + render_impression(
        mentions, random.Random(2))
    assert label_report(text) == {"Edema": 1.0, "Fracture": -1.0, "Pneumothorax": 0.0}
    with pytest.raises(ValueError, match="unknown labels"):
        mentions_for_labels({"Nodule": 1.0}, random.Random(0))
    with pytest.raises(ValueError, match="value 0.5"):
        mentions_for_labels({"Edema": 0.5}, random.Random(0))


def test_easy_language_is_plain_but_keeps_the_terms() -> None:
    text = easy_language([FindingMention("Pleural Effusion", side="right", severity="small"),
                          FindingMention("Lung Lesion", "uncertain", "left", "small",
                                         "left upper lobe")], ["Pneumothorax"])
    assert "fluid around the right lung (pleural effusion)" in text
    assert "It is possible that" in text and "(possible nodule)" in text
    assert "no collapsed lung (no pneumothorax)" in text
    assert easy_language([], []).startswith("Your chest X-ray looks normal.")


def test_indication_is_a_sentence_and_deterministic() -> None:
    mentions = [FindingMention("Pneumonia", location="right lower lobe")]
    a = render_indication(mentions, random.Random(3), sex="F")
    assert a == render_indication(mentions, random.Random(3), sex="F")
    assert a.endswith(".")


def test_mention_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="CheXpert finding"):
        FindingMention("No Finding")
    with pytest.raises(ValueError, match="side"):
        FindingMention("Edema", side="up")  # type: ignore[arg-type]
