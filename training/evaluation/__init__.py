"""Evaluation of generated reports: a CheXpert-style labeler and RaDialog's metrics.

:func:`label_report` turns report text into the 14 CheXpert labels; :func:`ce_metrics`
compares labels of generated and reference reports (clinical efficacy); :func:`bleu_scores`,
:func:`meteor_score`, :func:`rouge_l` and :func:`bert_score` compare the text;
:func:`bootstrap_ci` gives 95 % intervals over studies; :func:`correction_success` scores the
correction of injected errors. See ``docs/evaluation.md``.
"""

from training.evaluation.metrics import (
    DEFAULT_WORDNET_DIR,
    BertScorer,
    bert_score,
    bleu_scores,
    bootstrap_ci,
    ce_metrics,
    correction_success,
    load_wordnet,
    meteor_score,
    meteor_scores,
    rouge_l,
    rouge_l_scores,
    tokenize,
)

__all__ = [
    "DEFAULT_WORDNET_DIR",
    "BertScorer",
    "bert_score",
    "bleu_scores",
    "bootstrap_ci",
    "ce_metrics",
    "correction_success",
    "load_wordnet",
    "meteor_score",
    "meteor_scores",
    "rouge_l",
    "rouge_l_scores",
    "tokenize",
]
