"""A complete training run: the configured stages in order, then the model bundle.

Each stage writes ``<output_dir>/<stage>/`` (checkpoint, ``loss.csv``, ``loss.png``) and
its metrics to ``<output_dir>/metrics.json``; with ``resume`` a finished stage is reloaded
from its checkpoint instead of being trained again, and an interrupted one continues.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference import NgramTable, package_bundle
from inference.bundle import LOOKUP_TABLE, Provenance
from training.config import TrainingConfig
from training.engine.context import RunContext, build_context
from training.errors import CheckpointError
from training.recipes.content import fit_bundle_content_check
from training.stages import (
    run_alignment_stage,
    run_classifier_stage,
    run_instruct_stage,
    run_report_stage,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
THRESHOLDS_FILE = "thresholds.json"

STAGE_RUNNERS: dict[str, Callable[[RunContext], dict[str, float]]] = {
    "classifier": run_classifier_stage,
    "alignment": run_alignment_stage,
    "report": run_report_stage,
    "instruct": run_instruct_stage,
}


def run_stages(
    ctx: RunContext, on_stage: Callable[[str], object] | None = None
) -> dict[str, dict[str, float]]:
    """Run the configured stages in order; returns each stage's validation metrics.

    ``on_stage`` is called with each stage's name before it runs (build progress).
    """
    metrics_path = ctx.run_dir / METRICS_FILE
    metrics: dict[str, dict[str, float]] = {}
    thresholds_path = ctx.run_dir / THRESHOLDS_FILE
    if thresholds_path.is_file() and "classifier" not in ctx.config.run_stages:
        ctx.thresholds = json.loads(thresholds_path.read_text(encoding="utf-8"))
    for stage in ctx.config.run_stages:
        logger.info("stage %s", stage)
        if on_stage is not None:
            on_stage(stage)
        started = time.perf_counter()
        metrics[stage] = STAGE_RUNNERS[stage](ctx)
        metrics[stage]["seconds"] = time.perf_counter() - started
        if stage == "classifier":
            thresholds_path.write_text(json.dumps(ctx.thresholds, indent=2), encoding="utf-8")
        metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _adapter_dir(stage_dir: Path, name: str) -> Path:
    """Where peft saved adapter ``name`` (peft nests non-default adapters in a sub-folder)."""
    for candidate in (stage_dir / "adapter" / name, stage_dir / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise CheckpointError(f"{stage_dir}: no saved adapter {name!r}; run the stage first")


def package_run(ctx: RunContext, out_dir: Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write the run's model as a bundle (vision ONNX + int8, weights, LLM, adapters, the
    report stage's n-gram table for lookup decoding, and the content check fitted on the
    training and validation images, :mod:`training.recipes.content`)."""
    adapters = {
        name: _adapter_dir(ctx.stage_dir(name), name)
        for name in ("report", "instruct")
        if (ctx.stage_dir(name) / "adapter").is_dir()
    }
    table_path = ctx.stage_dir("report") / LOOKUP_TABLE
    ctx.tower.eval()
    bundle = package_bundle(
        out_dir,
        config=ctx.model_config,
        tower=ctx.tower.cpu(),
        thresholds=ctx.thresholds,
        tokenizer=ctx.tokenizer,
        llm=ctx.config.model.llm_dir,
        adapters=adapters,
        name=ctx.config.model.name,
        version=ctx.config.model.version,
        metrics=metrics,
        lookup_table=NgramTable.load(table_path) if table_path.is_file() else None,
        provenance=Provenance(
            source=f"{ctx.config.model.name}, trained by this project's training pipeline",
            source_version=ctx.config.model.version,
            licence=ctx.config.model.licence,
            intended_use=ctx.config.model.intended_use,
        ),
    )
    # Which images the model should not draft: fitted on the bundle's own vision model.
    fit_bundle_content_check(bundle, ctx.images["train"], ctx.images["val"], seed=ctx.config.seed)
    return bundle


def train(
    config: TrainingConfig,
    bundle_dir: Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_stage: Callable[[str], object] | None = None,
) -> tuple[RunContext, dict[str, dict[str, float]], Path | None]:
    """Run a training configuration and optionally package the result.

    Parameters
    ----------
    config
        The run.
    bundle_dir
        Write the trained model as a bundle here (must not exist); ``None`` skips it.
    resume
        Continue from the run's checkpoints.
    progress
        Show progress bars.
    on_stage
        Called with each stage's name before it runs, then with ``"packaging"``.

    Returns
    -------
    tuple
        The run context (with the trained parts), the metrics per stage, the bundle path.
    """
    ctx = build_context(config, resume=resume, progress=progress)
    metrics = run_stages(ctx, on_stage)
    bundle = None
    if bundle_dir is not None:
        if on_stage is not None:
            on_stage("packaging")
        bundle = package_run(ctx, bundle_dir, {"validation": metrics})
    return ctx, metrics, bundle


__all__ = ["METRICS_FILE", "STAGE_RUNNERS", "package_run", "run_stages", "train"]
