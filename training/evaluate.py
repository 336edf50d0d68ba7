"""Evaluating a model bundle on a dataset, through the product's own inference path.

Reports are drafted by :class:`inference.ChestXrayVLM` exactly as the node drafts them
(ONNX Runtime vision side, report adapter), labelled by the rule-based labeler, and compared
with the reference labels (CE) and texts (BLEU, METEOR, ROUGE-L, BERTScore), with bootstrap
95 % intervals. Correction success comes from the instruct task builder's correction
examples (wrong reports ordered as a findings-first model drafts them) answered by the
dialog adapter.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.table import Table
from tqdm.auto import tqdm

from inference import ChatRequest, ChestXrayVLM, RuntimeOptions, StudyRequest
from report_language import (
    CHEXPERT_LABELS,
    apply_stated_findings,
    choose_correction,
    label_report,
    unmet_statements,
)
from report_language.labels import NEGATIVE, NO_FINDING, POSITIVE
from training.data import (
    load_dicom_folder,
    load_mimic_cxr,
    load_mimic_split,
    load_phantom_csv,
    split_records,
)
from training.engine.images import preprocess_file
from training.errors import DatasetError
from training.evaluation import (
    bert_score,
    bleu_scores,
    bootstrap_ci,
    ce_metrics,
    correction_success,
    meteor_scores,
    rouge_l_scores,
)
from training.instruct import InstructConfig, build_instruct_examples
from training.records import StudyRecord

logger = logging.getLogger(__name__)


def load_eval_records(
    data: Path,
    kind: Literal["phantoms", "mimic", "dicom"],
    reports: Path | None = None,
    *,
    split: Literal["all", "test"] = "all",
    limit: int | None = None,
    seed: int = 0,
) -> list[StudyRecord]:
    """Read the studies to evaluate; ``split="test"`` keeps the patient-level test split."""
    if kind == "phantoms":
        records = load_phantom_csv(data / "phantoms.csv" if data.is_dir() else data)
    elif kind == "mimic":
        records = load_mimic_cxr(data, reports)
    else:
        if reports is None:
            raise DatasetError("a DICOM folder needs its reports CSV (--reports)")
        records = load_dicom_folder(data, reports)
    if split == "test":
        official = load_mimic_split(data) if kind == "mimic" else None
        records = split_records(records, seed=seed, official=official).test
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DatasetError(f"{data}: no studies to evaluate")
    return records


def _pixels(model: ChestXrayVLM, path: Path) -> np.ndarray:
    """Preprocessed pixels of a DICOM, PNG or JPEG file (the model takes arrays as-is)."""
    return preprocess_file(path, model.config.preprocess)


def _mean_ci(scores: Sequence[float], seed: int) -> dict[str, float]:
    low, high = bootstrap_ci(statistics.fmean, list(scores), seed=seed)
    return {"mean": statistics.fmean(scores), "ci95_low": low, "ci95_high": high}


def evaluate_bundle(
    bundle: Path,
    records: Sequence[StudyRecord],
    *,
    options: RuntimeOptions | None = None,
    batch_size: int = 48,
    corrections: int = 50,
    bertscore_model: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Draft reports for ``records`` with a bundle and compute every metric.

    Parameters
    ----------
    bundle
        Model bundle directory.
    records
        Studies with reference reports and labels.
    options
        Runtime options (default: the product defaults, ONNX vision side).
    batch_size
        Studies per batched generation. On 2 CPU cores the demo model drafts 48 studies in
        one batch in 0.62 of the time that batches of 8 take (docs/demo_model.md).
    corrections
        Correction examples to answer for correction success (0 skips it).
    bertscore_model
        Local BERT directory for BERTScore; ``None`` skips BERTScore.
    seed
        Seed of bootstrap resampling and of the correction examples.
    progress
        Show progress bars.

    Returns
    -------
    dict
        ``ce`` (micro/macro P/R/F1, per label, 95 % interval of macro F1), ``nlg`` (BLEU-1..4,
        METEOR, ROUGE-L, BERTScore when asked, intervals), ``correction`` and ``n_studies``.
    """
    model = ChestXrayVLM.from_bundle(bundle, options or RuntimeOptions())
    generated: list[str] = []
    classifier_labels: list[dict[str, float | None]] = []
    for start in tqdm(
        range(0, len(records), batch_size), desc="drafting reports", disable=not progress
    ):
        chunk = records[start : start + batch_size]
        drafts = model.generate_reports(
            [StudyRequest([_pixels(model, r.images[0])], r.indication) for r in chunk]
        )
        generated.extend(d.text for d in drafts)
        classifier_labels.extend(
            {f.label: 1.0 if f.positive else 0.0 for f in d.findings} for d in drafts
        )
    references = [r.report for r in records]
    predicted = [label_report(text) for text in generated]
    reference_labels = [dict(r.labels) for r in records]
    ce = ce_metrics(predicted, reference_labels)
    low, high = bootstrap_ci(
        lambda p, r: float(ce_metrics(p, r)["f1_macro"]), predicted, reference_labels, seed=seed
    )
    ce["f1_macro_ci95"] = [low, high]
    nlg: dict[str, Any] = dict(bleu_scores(generated, references))
    nlg["rouge_l"] = _mean_ci(rouge_l_scores(generated, references), seed)
    try:
        nlg["meteor"] = _mean_ci(meteor_scores(generated, references), seed)
    except Exception as exc:  # WordNet missing: report why instead of failing the run
        nlg["meteor"] = {"skipped": str(exc)}
    if bertscore_model is not None:
        nlg["bertscore"] = bert_score(generated, references, bertscore_model)
    # A model without findings head (XrayGPT, LLaVA) has neither figure.
    has_head = model.config.classifier.kind != "none"
    result: dict[str, Any] = {
        "n_studies": len(records),
        "ce": ce,
        # The findings classifier alone (its thresholded output, before the LLM writes it):
        # separates vision errors from reporting errors.
        "classifier_ce": ce_metrics(classifier_labels, reference_labels) if has_head else None,
        # The reports against the findings their prompt listed: how faithfully the LLM
        # writes what it was given, whatever the image shows.
        "faithfulness_ce": ce_metrics(predicted, classifier_labels) if has_head else None,
        "nlg": nlg,
        "samples": [
            {"study_id": r.study_id, "generated": g, "reference": r.report}
            for r, g in list(zip(records, generated, strict=True))[:3]
        ],
    }
    if corrections:
        result["correction"] = _correction_success(
            model, records, corrections, seed, progress, batch_size
        )
    return result


def correction_prompt_findings(report: str, instruction: str) -> tuple[str, ...]:
    """Findings the amend dialog lists for a correction of ``report``.

    As the node does: the report's coded findings (here read from its text by the labeler,
    as the node codes an amended version) with the correction's stated findings applied.
    """
    coded = [label for label, value in label_report(report).items() if value == POSITIVE]
    return apply_stated_findings(coded, instruction)  # drops No Finding


def _correction_success(
    model: ChestXrayVLM,
    records: Sequence[StudyRecord],
    count: int,
    seed: int,
    progress: bool,
    batch_size: int,
) -> dict[str, Any]:
    # wrong reports ordered as a findings-first model drafts them: the reports readers correct
    examples = build_instruct_examples(
        records, {"correction": 1.0}, seed=seed,
        config=InstructConfig(target_order="findings_first"),
    )[:count]
    by_study = {r.study_id: r for r in records}
    answers: list[str] = []
    corrected: list[str] = []
    redrafted = 0
    for start in tqdm(
        range(0, len(examples), batch_size), desc="corrections", disable=not progress
    ):
        chunk = examples[start : start + batch_size]
        requests = [
            ChatRequest(
                model.analyse([_pixels(model, e.images[0])]),
                e.report or "",
                e.instruction,
                tuple(e.history),
                e.indication,
                findings=correction_prompt_findings(e.report or "", e.instruction),
            )
            for e in chunk
        ]
        chunk_answers = model.chat_many(requests)
        # as the dialog does: an answer that leaves a stated finding unmet gets a redraft
        # from the corrected findings, taken where it meets more of the statements
        unmet = [
            i for i, (e, a) in enumerate(zip(chunk, chunk_answers, strict=True))
            if unmet_statements(a, e.instruction)
        ]
        drafts = model.generate_reports(
            [StudyRequest(requests[i].images, requests[i].indication, requests[i].findings)
             for i in unmet]
        )
        redrafts: dict[int, str] = {i: d.text for i, d in zip(unmet, drafts, strict=True)}
        for i, (e, a) in enumerate(zip(chunk, chunk_answers, strict=True)):
            text, took_redraft = choose_correction(a, redrafts.get(i), e.instruction)
            corrected.append(text)
            redrafted += took_redraft
        answers.extend(chunk_answers)
    originals = [dict(by_study[e.study_id].labels) for e in examples]
    errors = [dict(e.injected_errors) for e in examples]
    if not examples:
        return {"success": 0.0, "preservation": 0.0, "n_examples": 0, "n_errors": 0}
    return {
        "success": correction_success(originals, errors, corrected),
        "success_by_kind": _success_by_kind(originals, errors, corrected),
        "preservation": _preservation(originals, errors, corrected),
        "redrafted": redrafted / len(examples),
        "model_alone": {
            "success": correction_success(originals, errors, answers),
            "success_by_kind": _success_by_kind(originals, errors, answers),
            "preservation": _preservation(originals, errors, answers),
        },
        "n_examples": len(examples),
        "n_errors": sum(len(e) for e in errors),
        "samples": [
            {"instruction": e.instruction, "corrected": c}
            for e, c in list(zip(examples, corrected, strict=True))[:2]
        ],
    }


def _success_by_kind(
    originals: Sequence[dict[str, float | None]],
    errors: Sequence[dict[str, float]],
    corrected: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Correction success of missed findings to add and of false findings to remove.

    An injected error of value ``0.0`` removed a true finding from the report (the reader
    says it was missed), one of value ``1.0`` added a false one (the reader says it is not
    there).
    """
    out: dict[str, dict[str, float]] = {}
    for kind, wrong in (("add_missed", NEGATIVE), ("remove_false", POSITIVE)):
        subset = [{k: v for k, v in e.items() if v == wrong} for e in errors]
        n = sum(len(e) for e in subset)
        if n:
            out[kind] = {
                "success": correction_success(originals, subset, corrected),
                "n_errors": float(n),
            }
    return out


def _preservation(
    originals: Sequence[dict[str, float | None]],
    errors: Sequence[dict[str, float]],
    corrected: Sequence[str],
) -> float:
    """Share of the labels *not* injected whose positive/negative state the correction kept.

    Correction success alone rewards deleting text (a removed false positive counts as fixed
    even when the rest of the report is lost); this is its counterweight.
    """
    kept = total = 0
    for original, injected, text in zip(originals, errors, corrected, strict=True):
        labels = label_report(text)
        for name in CHEXPERT_LABELS:
            if name in injected or name == NO_FINDING:
                continue
            total += 1
            kept += (original.get(name) == 1.0) == (labels.get(name) == 1.0)
    return kept / total if total else 0.0


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The headline figures of an evaluation (what goes into a bundle's manifest)."""
    out = {
        "n_studies": float(result["n_studies"]),
        "ce_f1_macro": float(result["ce"]["f1_macro"]),
        "ce_f1_micro": float(result["ce"]["f1_micro"]),
        "bleu_4": float(result["nlg"]["bleu4"]),
        "rouge_l": float(result["nlg"]["rouge_l"]["mean"]),
    }
    for key in ("classifier", "faithfulness"):
        if result[f"{key}_ce"] is not None:
            out[f"{key}_f1_macro"] = float(result[f"{key}_ce"]["f1_macro"])
    meteor = result["nlg"].get("meteor", {})
    if "mean" in meteor:
        out["meteor"] = float(meteor["mean"])
    if "correction" in result:
        out["correction_success"] = float(result["correction"]["success"])
        out["correction_preservation"] = float(result["correction"]["preservation"])
        for kind, figures in result["correction"].get("success_by_kind", {}).items():
            out[f"correction_success_{kind}"] = float(figures["success"])
        if "model_alone" in result["correction"]:
            alone = result["correction"]["model_alone"]
            out["correction_success_model_alone"] = float(alone["success"])
            out["correction_redrafted"] = float(result["correction"]["redrafted"])
    return out


def render_table(result: dict[str, Any]) -> Table:
    """A rich table of an evaluation for the terminal."""
    table = Table(title=f"evaluation on {result['n_studies']} studies")
    table.add_column("metric")
    table.add_column("value", justify="right")
    ce = result["ce"]
    low, high = ce["f1_macro_ci95"]
    table.add_row("CE F1 macro (95% CI)", f"{ce['f1_macro']:.3f} ({low:.3f}-{high:.3f})")
    for key, name in (("classifier", "classifier alone: F1 macro"),
                      ("faithfulness", "reports vs their prompt's findings: F1 macro")):
        figures = result[f"{key}_ce"]
        table.add_row(name, "no findings head" if figures is None else
                      f"{figures['f1_macro']:.3f}")
    for key in ("precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro"):
        table.add_row(f"CE {key.replace('_', ' ')}", f"{ce[key]:.3f}")
    for label in CHEXPERT_LABELS:
        table.add_row(f"  F1 {label}", f"{ce['per_label'][label]['f1']:.3f}")
    nlg = result["nlg"]
    for n in range(1, 5):
        table.add_row(f"BLEU-{n}", f"{nlg['bleu' + str(n)]:.3f}")
    for key in ("rouge_l", "meteor"):
        value = nlg.get(key, {})
        if "mean" in value:
            table.add_row(
                key.upper().replace("_", "-"),
                f"{value['mean']:.3f} ({value['ci95_low']:.3f}-{value['ci95_high']:.3f})",
            )
        elif value:
            table.add_row(key.upper(), f"skipped: {value.get('skipped')}")
    if "bertscore" in nlg:
        table.add_row("BERTScore F1", f"{nlg['bertscore']['f1']:.3f}")
    if "correction" in result:
        corr = result["correction"]
        table.add_row(
            "correction success",
            f"{corr['success']:.3f} ({corr['n_errors']} errors, {corr['n_examples']} reports)",
        )
        names = {"add_missed": "missed findings added", "remove_false": "false findings removed"}
        for kind, figures in corr.get("success_by_kind", {}).items():
            table.add_row(
                f"  {names[kind]}",
                f"{figures['success']:.3f} ({figures['n_errors']:.0f} errors)",
            )
        table.add_row("correction: other labels kept", f"{corr['preservation']:.3f}")
        if "model_alone" in corr:
            table.add_row(
                "  dialog answers alone (before the redraft check)",
                f"{corr['model_alone']['success']:.3f}",
            )
            table.add_row("  proposals redrafted", f"{corr['redrafted']:.3f}")
    return table


__all__ = ["evaluate_bundle", "load_eval_records", "render_table", "summary"]
