"""Retraining a deployed bundle's LoRA adapters on a site's signed-off reports.

:func:`retrain` is the training side of ``dicom_node retrain``:

1. reads the site's studies (a DICOM folder with a reports CSV, as
   :func:`training.data.load_dicom_folder` reads it) and a sample of a base dataset (so the
   model does not forget what it learned there), and splits them together by patient;
2. starts from the given bundle: its vision weights and thresholds, its LLM and tokenizer,
   and its LoRA adapters, which the requested stages (``report``, ``instruct``) go on
   training; adapters of stages not requested are carried over unchanged;
3. adds the site's correction pairs (draft -> signed-off text, each accepted amendment with
   the reader's instruction) to the instruct stage's examples of the studies in each split;
4. packages the candidate bundle and evaluates it and the starting bundle on the same
   held-out (test split) studies through the product's inference path.

It imports nothing from :mod:`dicom_node`; the node's side (which studies, the registry)
is :mod:`dicom_node.retrain.runs`.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer

from inference import RuntimeOptions, VisionTower, load_manifest
from training.config import (
    DataConfig,
    InstructStage,
    ModelSection,
    StageConfig,
    StageName,
    StagesConfig,
    TrainingConfig,
)
from training.data import load_dicom_folder, load_mimic_cxr, load_phantom_csv, split_records
from training.engine.context import RunContext, resolve_device, seed_everything
from training.engine.images import load_image_cache
from training.errors import DatasetError, TrainingConfigError
from training.recipes.pipeline import METRICS_FILE, package_run
from training.records import StudyRecord
from training.stages.lora import (
    TextExample,
    _fit_adapter,
    instruct_examples,
    prepare_instruct_adapter,
    run_report_stage,
)

logger = logging.getLogger(__name__)

#: Stages a retrain may run: the LoRA adapters (the vision side stays as deployed).
RETRAIN_STAGES: tuple[StageName, ...] = ("report", "instruct")
#: Instruction of a correction pair whose reader wrote no dialog message (a direct edit).
DEFAULT_CORRECTION_INSTRUCTION = "Revise the report as the radiologist did."
#: Progress reported at the start of each phase (0..1).
PHASES = {
    "loading data": 0.05,
    "training report": 0.15,
    "training instruct": 0.45,
    "packaging": 0.75,
    "evaluating": 0.8,
    "evaluated": 1.0,
}

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class CorrectionText:
    """One correction pair of a site study (a line of ``corrections.jsonl``)."""

    study_uid: str
    instruction: str | None
    before: str
    after: str


def read_corrections(path: Path) -> list[CorrectionText]:
    """Read ``corrections.jsonl`` (keys ``study_uid``, ``instruction``, ``before``, ``after``).

    Raises
    ------
    DatasetError
        For an unreadable file or a line without those keys (the line is named).
    """
    pairs: list[CorrectionText] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the correction pairs ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append(
                CorrectionText(
                    str(item["study_uid"]),
                    str(item["instruction"]) if item.get("instruction") else None,
                    str(item["before"]),
                    str(item["after"]),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: line {number} is not a correction pair ({exc})") from exc
    return pairs


@dataclass(frozen=True)
class RetrainPlan:
    """What to retrain, from what, on which data, and how long.

    Parameters
    ----------
    base_bundle
        The bundle to start from (the site's active model version).
    base_version
        Its version name (recorded with the candidate's metrics).
    site_dicom, site_reports
        The site's studies: a DICOM folder and its reports CSV.
    corrections
        ``corrections.jsonl`` of the site's studies, or None.
    stages
        Stages to train, a subset of :data:`RETRAIN_STAGES` in that order.
    output_dir
        Checkpoints, logs and the preprocessing cache of the run.
    candidate_dir
        Where the candidate bundle is written (must not exist).
    candidate_version
        Version recorded in the candidate's manifest.
    base_data, base_kind, base_reports, max_base_studies
        The base dataset and its loader; at most `max_base_studies` of its studies (a
        seeded sample) are mixed in. None or 0 = site studies only.
    """

    base_bundle: Path
    base_version: str
    site_dicom: Path
    site_reports: Path
    corrections: Path | None
    stages: tuple[StageName, ...]
    output_dir: Path
    candidate_dir: Path
    candidate_version: str
    base_data: Path | None = None
    base_kind: Literal["phantoms", "mimic", "dicom"] = "phantoms"
    base_reports: Path | None = None
    max_base_studies: int = 2000
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    max_steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-4
    eval_limit: int = 200
    eval_corrections: int = 20
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in RETRAIN_STAGES]
        if unknown or not self.stages:
            raise TrainingConfigError(
                f"retrain stages must be one or more of {', '.join(RETRAIN_STAGES)} "
                f"(got {', '.join(self.stages) or 'none'})"
            )
        order = [RETRAIN_STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise TrainingConfigError(
                f"retrain stages must be distinct and in the order {', '.join(RETRAIN_STAGES)}"
            )


@dataclass(frozen=True)
class RetrainResult:
    """What :func:`retrain` produced."""

    bundle: Path
    #: Validation metrics of each trained stage.
    validation: dict[str, dict[str, float]]
    #: Headline metrics (:func:`training.evaluate.summary`) of the candidate on the held-out
    #: studies, and of the starting bundle on the same studies.
    candidate: dict[str, float]
    baseline: dict[str, float]
    #: Studies used: site and base, and the held-out ones evaluated.
    site_studies: int
    base_studies: int
    held_out_site: int
    held_out_base: int
    site_corrections: int


def load_base_records(
    path: Path,
    kind: Literal["phantoms", "mimic", "dicom"],
    reports: Path | None,
    limit: int,
    seed: int,
) -> list[StudyRecord]:
    """A seeded sample of at most `limit` studies of a base dataset.

    Raises
    ------
    DatasetError
        When the dataset is missing or malformed (the loaders name the file).
    """
    if limit == 0:
        return []
    if kind == "phantoms":
        records = load_phantom_csv(path / "phantoms.csv" if path.is_dir() else path)
    elif kind == "mimic":
        if reports is None:
            raise DatasetError("the MIMIC-CXR base dataset needs its reports root")
        records = load_mimic_cxr(path, reports)
    else:
        if reports is None:
            raise DatasetError("the DICOM base dataset needs its reports CSV")
        records = load_dicom_folder(path, reports)
    if len(records) > limit:
        records = random.Random(seed).sample(records, limit)
    return records


def context_from_splits(
    config: TrainingConfig, splits: dict[str, list[StudyRecord]], *, progress: bool = False
) -> RunContext:
    """A :class:`RunContext` over given splits (what ``build_context`` does after loading)."""
    seed_everything(config.seed)
    model_config = config.model.model_config_obj()
    run_dir = config.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or run_dir / "cache"
    images = {
        name: load_image_cache(
            [r.images[0] for r in splits[name]], model_config.preprocess, cache_dir,
            progress=progress,
        )
        for name in ("train", "val", "test")
    }
    device = resolve_device(config.device)
    tower = VisionTower(model_config)
    if config.model.vision_init is not None:
        from safetensors.torch import load_file

        tower.load_state_dict(load_file(str(config.model.vision_init)), strict=True)
    tower.to(device)
    tokenizer = AutoTokenizer.from_pretrained(
        str(config.model.tokenizer_dir or config.model.llm_dir)
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return RunContext(
        config=config,
        model_config=model_config,
        device=device,
        run_dir=run_dir,
        splits=splits,
        images=images,
        tower=tower,
        tokenizer=tokenizer,
        progress=progress,
    )


def _load_adapters(ctx: RunContext, adapters: dict[str, Path], stages: Sequence[str]) -> None:
    """Wrap the base LLM with the bundle's adapters, trainable, and carry over the others.

    Adapters of stages that are not retrained are copied to ``<run>/<stage>/adapter`` so
    that the candidate bundle contains them unchanged.
    """
    from peft import PeftModel

    names = [name for name in RETRAIN_STAGES if name in adapters]
    if not names:
        return
    first, *rest = names
    model = PeftModel.from_pretrained(
        ctx.llm, str(adapters[first]), adapter_name=first, is_trainable=True
    )
    for name in rest:
        model.load_adapter(str(adapters[name]), adapter_name=name, is_trainable=True)
    model.requires_grad_(False)
    ctx.llm = model
    for name in names:
        if name not in stages:
            target = ctx.stage_dir(name) / "adapter"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(adapters[name], target)


def correction_examples(
    ctx: RunContext, split: str, corrections: Sequence[CorrectionText]
) -> list[TextExample]:
    """Instruct examples of the site's correction pairs whose study is in `split`."""
    index = {r.study_id: i for i, r in enumerate(ctx.splits[split])}
    out = []
    for pair in corrections:
        i = index.get(pair.study_uid)
        if i is None:
            continue
        record = ctx.splits[split][i]
        out.append(
            TextExample(
                split,
                i,
                tuple(record.positive_findings()),
                pair.instruction or DEFAULT_CORRECTION_INSTRUCTION,
                record.indication,
                pair.before,
                (),
                pair.after,
            )
        )
    return out


def run_instruct_with_corrections(
    ctx: RunContext, corrections: Sequence[CorrectionText]
) -> dict[str, float]:
    """Stage 3 with the site's correction pairs added to the task mix of each split."""

    config = ctx.config.stage("instruct")
    if not isinstance(config, InstructStage):
        raise TypeError("the instruct stage needs an InstructStage config")
    peft_model = prepare_instruct_adapter(ctx, config)
    steps_examples = (
        config.max_steps * config.batch_size * config.grad_accum if config.max_steps else None
    )
    site_train = correction_examples(ctx, "train", corrections)
    train = instruct_examples(ctx, "train", config, ctx.config.seed, steps_examples) + site_train
    random.Random(ctx.config.seed).shuffle(train)
    val = instruct_examples(
        ctx, "val", config, ctx.config.seed + 1, config.max_val_examples
    ) + correction_examples(ctx, "val", corrections)
    metrics = _fit_adapter(ctx, "instruct", config, peft_model, train, val, train_vision=False)
    metrics["site_corrections"] = float(len(site_train))
    peft_model.save_pretrained(
        str(ctx.stage_dir("instruct") / "adapter"), selected_adapters=["instruct"]
    )
    return metrics


def _training_config(plan: RetrainPlan, manifest: Any) -> TrainingConfig:
    defaults = StageConfig(
        batch_size=plan.batch_size,
        max_steps=plan.max_steps,
        learning_rate=plan.learning_rate,
        checkpoint_every=max(1, plan.max_steps),
        log_every=max(1, min(10, plan.max_steps)),
    )
    return TrainingConfig(
        seed=plan.seed,
        output_dir=plan.output_dir,
        device=plan.device,
        run_stages=list(plan.stages),
        data=DataConfig(
            kind="dicom",
            path=plan.site_dicom,
            reports=plan.site_reports,
            val_fraction=plan.val_fraction,
            test_fraction=plan.test_fraction,
            split_seed=plan.seed,
        ),
        model=ModelSection(
            config=manifest.config.to_dict(),
            llm_dir=manifest.llm_base,
            tokenizer_dir=manifest.tokenizer,
            vision_init=manifest.vision_weights,
            name=manifest.name,
            version=plan.candidate_version,
        ),
        defaults=defaults,
        stages=StagesConfig(),
    )


def retrain(plan: RetrainPlan, progress: ProgressFn | None = None) -> RetrainResult:
    """Fine-tune a bundle's adapters on site and base studies and evaluate the candidate.

    Parameters
    ----------
    plan
        The run (see :class:`RetrainPlan`).
    progress
        Called with a phase name and the fraction done (0..1) at each phase.

    Returns
    -------
    RetrainResult
        The candidate bundle and the metrics of both bundles on the held-out studies.

    Raises
    ------
    DatasetError
        When the data is missing or malformed, or leaves an empty train, validation or
        held-out split.
    inference.BundleError
        When the starting bundle is missing or damaged.
    """
    from training.evaluate import evaluate_bundle, summary

    def phase(name: str) -> None:
        logger.info("retrain: %s", name)
        if progress is not None:
            progress(name, PHASES[name])

    started = time.perf_counter()
    phase("loading data")
    manifest = load_manifest(plan.base_bundle, verify=True)
    site = load_dicom_folder(plan.site_dicom, plan.site_reports)
    if not site:
        raise DatasetError(f"{plan.site_dicom}: no site study with a report")
    base = (
        load_base_records(plan.base_data, plan.base_kind, plan.base_reports,
                          plan.max_base_studies, plan.seed)
        if plan.base_data is not None
        else []
    )
    split = split_records(
        site + base, val_fraction=plan.val_fraction, test_fraction=plan.test_fraction,
        seed=plan.seed,
    )
    splits = {"train": list(split.train), "val": list(split.val), "test": list(split.test)}
    for name in ("train", "val", "test"):
        if not splits[name]:
            raise DatasetError(
                f"{len(site)} site and {len(base)} base studies leave the {name} split empty; "
                "add studies (retrain.max_base_studies, more sign-offs) or change "
                "retrain.val_fraction / retrain.test_fraction"
            )
    site_ids = {r.study_id for r in site}
    corrections = read_corrections(plan.corrections) if plan.corrections is not None else []
    logger.info(
        "retrain: %d site + %d base studies; %d train / %d val / %d test; %d correction pairs",
        len(site), len(base), len(splits["train"]), len(splits["val"]), len(splits["test"]),
        len(corrections),
    )
    config = _training_config(plan, manifest)
    ctx = context_from_splits(config, splits)
    ctx.thresholds = dict(manifest.thresholds)
    _load_adapters(ctx, dict(manifest.adapters), plan.stages)
    validation: dict[str, dict[str, float]] = {}
    site_corrections = 0
    for stage in plan.stages:
        phase(f"training {stage}")
        mark = time.perf_counter()
        if stage == "report":
            metrics = run_report_stage(ctx)
        else:
            metrics = run_instruct_with_corrections(ctx, corrections)
            site_corrections = int(metrics.get("site_corrections", 0))
        metrics["seconds"] = time.perf_counter() - mark
        validation[stage] = metrics
        logger.info(
            "retrain: stage %s done in %.0f s (%s)", stage, metrics["seconds"],
            ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k != "seconds"),
        )
        (plan.output_dir / METRICS_FILE).write_text(json.dumps(validation, indent=2),
                                                    encoding="utf-8")
    phase("packaging")
    bundle = package_run(ctx, plan.candidate_dir, {"validation": validation})
    held_out = splits["test"][: plan.eval_limit]
    # The training model is not needed any more: free it before two evaluations.
    del ctx
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    phase("evaluating")
    results = {}
    for name, path in (("baseline", plan.base_bundle), ("candidate", bundle)):
        result = evaluate_bundle(
            path, held_out, options=plan.runtime, corrections=plan.eval_corrections,
            seed=plan.seed, progress=False,
        )
        results[name] = summary(result)
        logger.info(
            "retrain: %s %s: CE F1 macro %.3f on %d held-out studies", name,
            plan.base_version if name == "baseline" else plan.candidate_version,
            results[name]["ce_f1_macro"], len(held_out),
        )
    held_site = sum(1 for r in held_out if r.study_id in site_ids)
    _write_candidate_metrics(bundle, plan, validation, results, held_site, len(held_out))
    phase("evaluated")
    logger.info("retrain: finished in %.0f s", time.perf_counter() - started)
    return RetrainResult(
        bundle=bundle,
        validation=validation,
        candidate=results["candidate"],
        baseline=results["baseline"],
        site_studies=len(site),
        base_studies=len(base),
        held_out_site=held_site,
        held_out_base=len(held_out) - held_site,
        site_corrections=site_corrections,
    )


def _write_candidate_metrics(
    bundle: Path,
    plan: RetrainPlan,
    validation: dict[str, dict[str, float]],
    results: dict[str, dict[str, float]],
    held_site: int,
    held_total: int,
) -> None:
    from training.recipes.demo import update_manifest_metrics

    update_manifest_metrics(
        bundle,
        {
            "test": results["candidate"],
            "validation": validation,
            "baseline": {"version": plan.base_version, **results["baseline"]},
            "evaluated_with": {
                "split": f"retrain held-out studies ({held_site} site, "
                f"{held_total - held_site} base)",
                "site_studies": held_site,
            },
            "retrain": {
                "parent_version": plan.base_version,
                "stages": list(plan.stages),
                "max_steps": plan.max_steps,
                "batch_size": plan.batch_size,
                "learning_rate": plan.learning_rate,
                "base_data": str(plan.base_data) if plan.base_data else None,
            },
        },
    )


__all__ = [
    "DEFAULT_CORRECTION_INSTRUCTION",
    "RETRAIN_STAGES",
    "CorrectionText",
    "RetrainPlan",
    "RetrainResult",
    "context_from_splits",
    "correction_examples",
    "load_base_records",
    "read_corrections",
    "retrain",
    "run_instruct_with_corrections",
]
