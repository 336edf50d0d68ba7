"""Report metrics against values computed by hand: CE, BLEU, ROUGE-L, METEOR, BERTScore,
bootstrap intervals and correction success."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from report_language.labels import CHEXPERT_LABELS
from training.errors import EvaluationError
from training.evaluation import (
    DEFAULT_WORDNET_DIR,
    BertScorer,
    bert_score,
    bleu_scores,
    bootstrap_ci,
    ce_metrics,
    correction_success,
    meteor_score,
    meteor_scores,
    rouge_l,
    rouge_l_scores,
    tokenize,
)
from training.evaluation.metrics import _greedy_match, _idf_table

# --------------------------------------------------------------------------------------------
# Clinical efficacy.
# --------------------------------------------------------------------------------------------

# Three studies. Positive means 1.0; uncertain (-1.0), 0.0 and None are negative.
#   Edema:            ref [1, 0, 0]  pred [1, 1, 0]  -> TP 1, FP 1, FN 0
#   Pleural Effusion: ref [1, 1, 0]  pred [0, 1, 0]  -> TP 1, FP 0, FN 1  (pred 1 is -1.0)
#   Cardiomegaly:     ref [0, 1, 0]  pred [0, 0, 1]  -> TP 0, FP 1, FN 1  (ref 3 is -1.0)
#   every other label: no positive anywhere.
_Labels = dict[str, float | None]

_REF: list[_Labels] = [
    {"Edema": 1.0, "Pleural Effusion": 1.0},
    {"Edema": 0.0, "Pleural Effusion": 1.0, "Cardiomegaly": 1.0},
    {"Cardiomegaly": -1.0, "Pneumothorax": None},
]
_PRED: list[_Labels] = [
    {"Edema": 1.0, "Pleural Effusion": -1.0},
    {"Edema": 1.0, "Pleural Effusion": 1.0, "Cardiomegaly": None},
    {"Cardiomegaly": 1.0, "Pneumothorax": 0.0},
]


def test_ce_per_label_by_hand() -> None:
    per = ce_metrics(_PRED, _REF)["per_label"]
    assert per["Edema"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                            "support": 1, "predicted": 2}
    assert per["Pleural Effusion"] == {"precision": 1.0, "recall": 0.5,
                                       "f1": pytest.approx(2 / 3), "support": 2, "predicted": 1}
    assert per["Cardiomegaly"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "support": 1, "predicted": 1}
    assert per["Pneumothorax"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "support": 0, "predicted": 0}


def test_ce_micro_pools_counts() -> None:
    result = ce_metrics(_PRED, _REF)
    # TP 2, FP 2, FN 2 over all labels.
    assert result["precision_micro"] == 0.5
    assert result["recall_micro"] == 0.5
    assert result["f1_micro"] == 0.5
    assert result["n_studies"] == 3


def test_ce_macro_averages_all_fourteen_labels() -> None:
    result = ce_metrics(_PRED, _REF)
    assert result["precision_macro"] == pytest.approx(1.5 / 14)
    assert result["recall_macro"] == pytest.approx(1.5 / 14)
    assert result["f1_macro"] == pytest.approx((4 / 3) / 14)


def test_ce_macro_over_chosen_labels_and_zero_division() -> None:
    three = ce_metrics(_PRED, _REF, labels=["Edema", "Pleural Effusion", "Cardiomegaly"])
    assert three["f1_macro"] == pytest.approx(4 / 9)
    assert three["precision_macro"] == pytest.approx(0.5)
    ones = ce_metrics(_PRED, _REF, zero_division=1.0)
    # 11 labels with no positive anywhere count 1.0 each.
    assert ones["f1_macro"] == pytest.approx((4 / 3 + 11) / 14)


def test_ce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="3 entries but ref_labels has 2"):
        ce_metrics(_PRED, _REF[:2])
    with pytest.raises(ValueError, match="unknown labels"):
        ce_metrics([{"Effusion": 1.0}], [{"Edema": None}])
    with pytest.raises(ValueError, match="empty"):
        ce_metrics([], [])


def test_ce_per_label_covers_every_label() -> None:
    assert list(ce_metrics(_PRED, _REF)["per_label"]) == list(CHEXPERT_LABELS)


# --------------------------------------------------------------------------------------------
# BLEU and ROUGE-L.
# --------------------------------------------------------------------------------------------


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("No pneumothorax. A 1.5-cm nodule, right apex!") == [
        "no", "pneumothorax", "a", "1.5-cm", "nodule", "right", "apex"]


def test_bleu1_brevity_penalty_by_hand() -> None:
    # All 3 unigrams match (p1 = 1); c = 3 < r = 5 -> BP = exp(1 - 5/3).
    scores = bleu_scores(["Heart is normal."], ["The heart size is normal."])
    assert scores["bleu1"] == pytest.approx(math.exp(-2 / 3))


def test_bleu1_clips_repeated_words() -> None:
    # "the" occurs once in the reference: 1 clipped match of 3; c = 3 > r = 2 -> BP = 1.
    assert bleu_scores(["the the the"], ["the heart"])["bleu1"] == pytest.approx(1 / 3)


def test_bleu_orders_by_hand() -> None:
    # p1 = 3/4, p2 = 2/3 (the heart, heart is), p3 = 1/2 (the heart is), p4 = 0/1; BP = 1.
    scores = bleu_scores(["the heart is normal"], ["the heart is enlarged"])
    assert scores["bleu1"] == pytest.approx(0.75)
    assert scores["bleu2"] == pytest.approx(math.sqrt(0.75 * 2 / 3))
    assert scores["bleu3"] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3))
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-70)  # no 4-gram match (nltk: ~0)


def test_bleu_is_corpus_level() -> None:
    # Pooled: 2 matches of 6 unigrams (not the mean of 1.0 and 0.0); c = r = 6 -> BP = 1.
    scores = bleu_scores(["a b", "c d e f"], ["a b", "g h i j"])
    assert scores["bleu1"] == pytest.approx(1 / 3)


def test_bleu_matches_nltk_corpus_bleu() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps = ["the heart is normal in size", "no pleural effusion or pneumothorax is seen",
            "mild pulmonary edema and small bilateral effusions"]
    refs = ["heart size is normal and stable", "there is no pleural effusion or pneumothorax",
            "moderate pulmonary edema and small effusions"]
    ours = bleu_scores(hyps, refs)
    for n in range(1, 5):
        theirs = nltk_bleu.corpus_bleu([[tokenize(r)] for r in refs],
                                       [tokenize(h) for h in hyps], weights=(1 / n,) * n)
        assert ours[f"bleu{n}"] == pytest.approx(theirs)


def test_rouge_l_uses_the_longest_common_subsequence() -> None:
    # LCS("a b c b d a b", "b d c a b a") = 4 (e.g. "b c b a"): P = 4/7, R = 4/6.
    p, r = 4 / 7, 4 / 6
    assert rouge_l(["a b c b d a b"], ["b d c a b a"], beta=1.0) == pytest.approx(
        2 * p * r / (p + r))
    assert rouge_l_scores([""], ["a"]) == [0.0]


def test_rouge_l_by_hand() -> None:
    # LCS "the heart is enlarged" = 4; P = 4/4, R = 4/6.
    hyp, ref = ["The heart is enlarged."], ["The heart size is enlarged today."]
    p, r = 1.0, 4 / 6
    assert rouge_l_scores(hyp, ref) == [pytest.approx(2.44 * p * r / (r + 1.44 * p))]
    assert rouge_l(hyp, ref, beta=1.0) == pytest.approx(2 * p * r / (p + r))


def test_rouge_l_corpus_is_mean_and_bounds() -> None:
    scores = rouge_l_scores(["no effusion", "small effusion"], ["no effusion", "pneumothorax"])
    assert scores == [pytest.approx(1.0), 0.0]
    assert rouge_l(["no effusion", "small effusion"], ["no effusion", "pneumothorax"]) == 0.5
    with pytest.raises(ValueError, match="beta"):
        rouge_l(["a"], ["a"], beta=0)


# --------------------------------------------------------------------------------------------
# METEOR (WordNet from Debian's wordnet-base).
# --------------------------------------------------------------------------------------------

_needs_wordnet = pytest.mark.skipif(
    not (DEFAULT_WORDNET_DIR / "data.noun").is_file(),
    reason="WordNet missing: apt-get install --no-install-recommends wordnet-base")


@_needs_wordnet
def test_meteor_identical_by_hand() -> None:
    pytest.importorskip("nltk")
    # P = R = 1, one chunk of 3 matches: penalty 0.5 * (1/3)**3.
    assert meteor_score(["The cat sat."], ["the cat sat"]) == pytest.approx(1 - 0.5 / 27)


@_needs_wordnet
def test_meteor_wordnet_synonym_by_hand() -> None:
    pytest.importorskip("nltk")
    # "sick" ~ "ill" through WordNet: 4 matches in one chunk, penalty 0.5 * (1/4)**3.
    assert meteor_scores(["the patient is sick"], ["the patient is ill"]) == [
        pytest.approx(1 - 0.5 / 64)]


@_needs_wordnet
def test_meteor_no_match_and_mean() -> None:
    pytest.importorskip("nltk")
    scores = meteor_scores(["no effusion", "pneumothorax"], ["no effusion", "cardiomegaly"])
    assert scores[1] == 0.0
    assert meteor_score(["no effusion", "pneumothorax"], ["no effusion", "cardiomegaly"]) \
        == pytest.approx(statistics.fmean(scores))


def test_meteor_names_the_missing_wordnet_package(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="wordnet-base"):
        meteor_score(["a"], ["a"], wordnet_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# BERTScore with a tiny random BERT.
# --------------------------------------------------------------------------------------------

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal",
          "enlarged", "no", "effusion", "lungs", "are", "clear", "."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    (path / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(_VOCAB), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    return path


def test_greedy_match_by_hand() -> None:
    # Rows: hypothesis tokens ([CLS] weight 0, two words); columns: two reference words.
    sim = np.array([[1.0, 0.2], [0.4, 0.6], [0.1, 0.3]])
    p, r, f = _greedy_match(sim, np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0]))
    assert p == pytest.approx((0.6 + 0.3) / 2)
    # [CLS] has no weight of its own but is still a candidate match: column 0 max is 1.0.
    assert r == pytest.approx((1.0 + 0.6) / 2)
    assert f == pytest.approx(2 * 0.45 * 0.8 / (0.45 + 0.8))


def test_idf_table_by_hand() -> None:
    table, unseen = _idf_table([[2, 5, 6, 3], [2, 5, 7, 3]], special={2, 3})
    assert table[5] == pytest.approx(math.log(3 / 3))
    assert table[6] == pytest.approx(math.log(3 / 2))
    assert table[2] == 0.0
    assert unseen == pytest.approx(math.log(3))


def test_bert_score_identical_is_one(tiny_bert: Path) -> None:
    scores = BertScorer(tiny_bert).score(["The heart is normal.", "no effusion"],
                                         ["The heart is normal.", "no effusion"])
    for key in ("precision", "recall", "f1"):
        assert scores[key] == [pytest.approx(1.0, abs=1e-9)] * 2


def test_bert_score_swaps_precision_and_recall(tiny_bert: Path) -> None:
    scorer = BertScorer(tiny_bert, num_layers=1)
    ab = scorer.score(["the heart is normal"], ["the lungs are clear ."])
    ba = scorer.score(["the lungs are clear ."], ["the heart is normal"])
    assert ab["precision"] == pytest.approx(ba["recall"])
    assert ab["recall"] == pytest.approx(ba["precision"])
    assert ab["f1"][0] < 1.0


def test_bert_score_means(tiny_bert: Path) -> None:
    hyps, refs = ["the heart is enlarged", "no effusion"], ["the heart is normal", "no effusion"]
    per_study = BertScorer(tiny_bert).score(hyps, refs)
    means = bert_score(hyps, refs, tiny_bert)
    assert means["f1"] == pytest.approx(statistics.fmean(per_study["f1"]))


def test_bert_scorer_rejects_bad_arguments(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_layers"):
        BertScorer(tiny_bert, num_layers=3)
    with pytest.raises(EvaluationError, match="config.json"):
        BertScorer(tmp_path)


# --------------------------------------------------------------------------------------------
# Bootstrap and correction success.
# --------------------------------------------------------------------------------------------


def test_bootstrap_contains_point_estimate_and_is_deterministic() -> None:
    values = [float(v) for v in np.random.default_rng(1).normal(0.6, 0.2, size=80)]
    low, high = bootstrap_ci(statistics.fmean, values, n_resamples=300, seed=7)
    assert low < statistics.fmean(values) < high
    assert bootstrap_ci(statistics.fmean, values, n_resamples=300, seed=7) == (low, high)
    assert bootstrap_ci(statistics.fmean, values, n_resamples=300, seed=8) != (low, high)


def test_bootstrap_keeps_pairs_together() -> None:
    xs = list(range(50))

    def agreement(a: list[int], b: list[int]) -> float:
        return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))

    assert bootstrap_ci(agreement, xs, list(xs), n_resamples=50) == (1.0, 1.0)


def test_bootstrap_constant_metric_and_validation() -> None:
    assert bootstrap_ci(statistics.fmean, [0.25] * 10, n_resamples=20) == (0.25, 0.25)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(statistics.fmean, [1.0], alpha=1.0)
    with pytest.raises(ValueError, match="entries"):
        bootstrap_ci(lambda a, b: 0.0, [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(statistics.fmean, [1.0], n_resamples=0)


def test_correction_success_by_hand() -> None:
    original: list[_Labels] = [{"Edema": 1.0, "Pleural Effusion": 0.0},
                               {"Pneumothorax": None}, {"Cardiomegaly": -1.0}]
    injected: list[_Labels] = [{"Edema": 0.0, "Pleural Effusion": 1.0},
                               {"Pneumothorax": 1.0}, {"Cardiomegaly": 1.0}]
    corrected = [
        "Mild pulmonary edema. No pleural effusion.",  # both fixed
        "Small right pneumothorax.",                   # not fixed
        "Possible mild cardiomegaly.",                 # uncertain counts as negative: fixed
    ]
    assert correction_success(original, injected, corrected) == pytest.approx(3 / 4)


def test_correction_success_uses_given_labeler_and_validates() -> None:
    original = [{"Edema": 0.0}]
    assert correction_success(original, [{"Edema": 1.0}], ["x"],
                              labeler=lambda text: {"Edema": 0.0}) == 1.0
    with pytest.raises(ValueError, match="not an error"):
        correction_success([{"Edema": -1.0}], [{"Edema": 0.0}], ["x"])
    with pytest.raises(ValueError, match="no error"):
        correction_success([{"Edema": 1.0}], [{}], ["x"])
