"""The training run configuration: one TOML (or JSON) file per run, overrides per stage.

Layout of a run file::

    seed = 0
    output_dir = "runs/demo"
    device = "auto"                 # auto | cpu | cuda | cuda:N
    run_stages = ["classifier", "alignment", "report", "instruct"]

    [data]
    kind = "phantoms"               # phantoms | mimic | dicom
    path = "data/phantoms"

    [model]
    llm_dir = "models/base/smollm2-135m-instruct"
    qformer_init_dir = "models/base/minilm-l6"     # optional BERT to initialise the Q-Former
    config = { ... }                # an inference.ModelConfig as a dict (saved in the bundle)

    [defaults]                      # every stage starts from these
    batch_size = 16
    learning_rate = 3e-4

    [stages.classifier]             # per-stage overrides of [defaults] plus stage keys
    epochs = 6

Unknown keys are refused and every error names the key (``stages.report.lora_r``, ...).
"""

from __future__ import annotations

import json
import tomllib
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference import ModelConfig
from inference.errors import ConfigError
from training.errors import TrainingConfigError

StageName = Literal["classifier", "alignment", "report", "instruct"]
STAGE_ORDER: tuple[StageName, ...] = ("classifier", "alignment", "report", "instruct")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageConfig(_Strict):
    """Optimisation settings shared by every stage (``[defaults]`` and ``[stages.X]``)."""

    batch_size: int = Field(default=16, ge=1, description="Examples per optimiser step.")
    grad_accum: int = Field(default=1, ge=1, description="Micro-batches per optimiser step.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training set.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimiser steps (wins over epochs)."
    )
    learning_rate: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up, then cosine decay.")
    max_grad_norm: float = Field(default=1.0, gt=0)
    log_every: int = Field(default=10, ge=1, description="Steps between loss CSV rows.")
    eval_every: int | None = Field(
        default=None, ge=1, description="Steps between validations (default: end of stage)."
    )
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints.")
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="bf16 autocast: auto = on CUDA, and on CPUs with native bf16 support.",
    )
    max_train_examples: int | None = Field(
        default=None, ge=1, description="Use at most this many training examples (smoke runs)."
    )
    max_val_examples: int | None = Field(default=None, ge=1)


class ClassifierStage(StageConfig):
    """Stage 0: the findings classifier (BCE with pos_weight, then per-label thresholds)."""

    pos_weight: Literal["auto", "none"] = Field(
        default="auto", description="auto = negatives/positives per label, clipped to [1, 20]."
    )
    train_backbone: bool = Field(default=True, description="Also train the vision backbone.")
    augment: bool = Field(default=True, description="Random shifts and contrast jitter.")


class AlignmentStage(StageConfig):
    """Stage 1: aligner training (ITC + ITM + captioning for the Q-Former, LM for others)."""

    itc_weight: float = Field(default=1.0, ge=0, description="Image-text contrastive loss.")
    itm_weight: float = Field(default=1.0, ge=0, description="Image-text matching loss.")
    lm_weight: float = Field(
        default=1.0, ge=0, description="Captioning loss through the frozen LLM."
    )
    contrastive_dim: int = Field(default=256, ge=8)
    max_text_tokens: int = Field(default=96, ge=8, description="Report tokens for ITC/ITM.")


class LoraStage(StageConfig):
    """Stages 2 and 3: a LoRA adapter on the LLM, loss on answer tokens only."""

    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="LLM linear layers that get LoRA weights.",
    )
    findings_source: Literal["labels", "predicted"] = Field(
        default="labels",
        description="Findings listed in training prompts: the ground-truth labels, or the "
        "classifier's predictions (as at inference).",
    )
    eval_generate: int = Field(
        default=0, ge=0, description="Validation studies to generate for at the end (0 = loss)."
    )
    target_order: Literal["as_written", "findings_first"] = Field(
        default="as_written",
        description="Report targets as written, or with the sentences stating the listed "
        "findings first, in the prompt's order (training.text.report_order).",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch prompts of similar length together (less padding per step).",
    )


class InstructStage(LoraStage):
    """Stage 3: instruct LoRA on the task mix, with report-generation replay."""

    mix: dict[str, float] = Field(
        default_factory=lambda: {
            "findings_qa_binary": 1.0,
            "findings_qa_list": 0.5,
            "correction": 2.0,
            "summary": 0.5,
            "easy_language": 0.5,
            "explanation": 0.5,
        },
        description="Relative weight of each instruct task family.",
    )
    replay_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="Share of report-generation examples (replay)."
    )
    init_from_report: bool = Field(
        default=True, description="Start from the report adapter's weights."
    )


_STAGE_MODELS: dict[str, type[StageConfig]] = {
    "classifier": ClassifierStage,
    "alignment": AlignmentStage,
    "report": LoraStage,
    "instruct": InstructStage,
}


class StagesConfig(_Strict):
    """Per-stage sections (only the keys a stage overrides)."""

    classifier: dict[str, Any] = Field(default_factory=dict)
    alignment: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)
    instruct: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Strict):
    """Where the training data is and how it splits."""

    kind: Literal["phantoms", "mimic", "dicom"] = "phantoms"
    path: Path = Field(description="Phantom folder or CSV, MIMIC-CXR-JPG root, or DICOM folder.")
    reports: Path | None = Field(
        default=None, description="MIMIC reports root, or the DICOM reports CSV."
    )
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    split_seed: int = 0
    cache_dir: Path | None = Field(
        default=None, description="Preprocessed-image cache (default: <output_dir>/cache)."
    )


class ModelSection(_Strict):
    """The model to train: architecture and the pretrained parts it starts from."""

    config: dict[str, Any] = Field(
        default_factory=dict, description="inference.ModelConfig as a dict."
    )
    llm_dir: Path = Field(description="Base causal LM (local Hugging Face directory).")
    tokenizer_dir: Path | None = Field(default=None, description="Default: llm_dir.")
    qformer_init_dir: Path | None = Field(
        default=None, description="BERT directory whose weights initialise the Q-Former."
    )
    vision_init: Path | None = Field(
        default=None, description="vision.safetensors to start from (e.g. a previous bundle)."
    )
    name: str = "cxr-vlm"
    version: str = "0.1.0"
    licence: str = Field(
        default="Apache-2.0 (SmolLM2-135M-Instruct and all-MiniLM-L6-v2 weights)",
        description="Licence of the trained weights, written to the bundle's provenance.",
    )
    intended_use: str = Field(
        default="Research and demonstration only; not for clinical use.",
        description="Intended-use notice, written to the bundle's provenance and every SR.",
    )

    def model_config_obj(self) -> ModelConfig:
        """The :class:`inference.ModelConfig` this section describes."""
        try:
            return ModelConfig.from_dict(dict(self.config))
        except ConfigError as exc:
            raise TrainingConfigError(f"model.config: {exc}") from exc


class TrainingConfig(_Strict):
    """A complete training run."""

    seed: int = 0
    output_dir: Path = Path("runs/default")
    device: str = "auto"
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")
    run_stages: list[StageName] = Field(
        default_factory=lambda: list(STAGE_ORDER), description="Stages to run, in order."
    )
    data: DataConfig
    model: ModelSection
    defaults: StageConfig = Field(default_factory=StageConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        order = [STAGE_ORDER.index(stage) for stage in self.run_stages]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ValueError(f"run_stages must be distinct and in the order {list(STAGE_ORDER)}")
        return self

    def stage(self, name: StageName) -> StageConfig:
        """The settings of one stage: ``[defaults]`` overridden by ``[stages.<name>]``.

        Raises
        ------
        TrainingConfigError
            When an override key is unknown or has a bad value (the key is named).
        """
        model = _STAGE_MODELS[name]
        merged = {**self.defaults.model_dump(exclude_unset=True), **getattr(self.stages, name)}
        try:
            return model.model_validate(merged)
        except ValidationError as exc:
            raise TrainingConfigError(_describe(exc, prefix=f"stages.{name}")) from exc


def _describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        key = f"{prefix}.{key}" if prefix and key else prefix or key
        parts.append(f"{key}: {error['msg']}")
    return "; ".join(parts)


def parse_training_config(data: dict[str, Any]) -> TrainingConfig:
    """Validate a run configuration given as a dict (the parsed TOML/JSON).

    The ``[stages.<name>]`` tables are per-stage overrides; ``run_stages`` names the stages
    to run.

    Raises
    ------
    TrainingConfigError
        Naming every bad key.
    """
    try:
        config = TrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainingConfigError(_describe(exc)) from exc
    for name in STAGE_ORDER:
        config.stage(name)  # surface bad override keys now, not hours into a run
    config.model.model_config_obj()
    return config


def load_training_config(
    path: str | PathLike[str], overrides: dict[str, Any] | None = None
) -> TrainingConfig:
    """Read a run configuration from a TOML or JSON file.

    Parameters
    ----------
    path
        ``.toml`` or ``.json`` file.
    overrides
        Top-level keys that replace the file's (e.g. ``output_dir`` from the command line).

    Raises
    ------
    TrainingConfigError
        For an unreadable file or a bad key (named).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TrainingConfigError(f"{file}: cannot read the training config ({exc})") from exc
    data.update(overrides or {})
    try:
        return parse_training_config(data)
    except TrainingConfigError as exc:
        raise TrainingConfigError(f"{file}: {exc}") from exc


__all__ = [
    "STAGE_ORDER",
    "AlignmentStage",
    "ClassifierStage",
    "DataConfig",
    "InstructStage",
    "LoraStage",
    "ModelSection",
    "StageConfig",
    "StageName",
    "TrainingConfig",
    "load_training_config",
    "parse_training_config",
]
