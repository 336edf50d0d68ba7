"""Stages 2 and 3: the report-generation and instruct LoRA adapters.

Both train a peft LoRA adapter on the frozen LLM with the loss on answer tokens only, on
prompts built by the inference prompt builder (image tokens + positive findings + indication
+ instruction). Stage 2 also trains the aligner's projection into the LLM's space (RaDialog
trains it with the LLM). Stage 3 trains a second adapter, initialised from the first, on the
instruct task mix with a share of report-generation examples replayed so that the dialog
adapter still writes reports. Stage 2 also writes the n-gram table of its training targets
that the bundle ships for speculative decoding (:mod:`inference.speculative`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from inference import EncodedPrompt, NgramTable, Turn
from inference.bundle import LOOKUP_TABLE
from inference.vision import QFormerAligner
from report_language.labels import NO_FINDING
from training.config import InstructStage, LoraStage
from training.engine.context import RunContext
from training.engine.lm_loss import answer_loss
from training.instruct import InstructConfig, build_instruct_examples
from training.stages.classifier import predict_probabilities
from training.text.report_order import TargetOrder, order_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextExample:
    """One training prompt: which study's image, and the texts around it."""

    split: str
    image_index: int
    findings: tuple[str, ...]
    instruction: str
    indication: str | None
    report: str | None
    history: tuple[Turn, ...]
    answer: str


def lora_config(config: LoraStage) -> LoraConfig:
    """The peft LoRA config of a stage."""
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )


def predicted_findings(ctx: RunContext, split: str) -> list[tuple[str, ...]]:
    """Positive findings per study of a split, from the classifier and its thresholds.

    Listed in the classifier's label order, as :attr:`inference.StudyAnalysis.positive_labels`
    lists them at inference.
    """
    probabilities = predict_probabilities(ctx, split)
    labels = ctx.model_config.classifier.labels
    return [
        tuple(
            label
            for label, p in zip(labels, row, strict=True)
            if label != NO_FINDING and p >= ctx.thresholds[label]
        )
        for row in probabilities
    ]


def report_examples(
    ctx: RunContext, split: str, source: str, order: TargetOrder = "as_written"
) -> list[TextExample]:
    """Report-generation prompts for every study of a split (targets in ``order``)."""
    records = ctx.splits[split]
    findings = (
        predicted_findings(ctx, split)
        if source == "predicted"
        else [tuple(r.positive_findings()) for r in records]
    )
    instruction = ctx.model_config.prompt.report_instruction
    return [
        TextExample(
            split, i, findings[i], instruction, r.indication, None, (),
            order_report(r, findings[i], order),
        )
        for i, r in enumerate(records)
    ]


def instruct_examples(
    ctx: RunContext, split: str, config: InstructStage, seed: int, limit: int | None = None
) -> list[TextExample]:
    """The instruct task mix for a split, plus report-generation replay.

    With ``limit``, examples are built from a seeded sample of just enough studies (building
    correction examples runs the labeler several times per report).
    """
    all_records = ctx.splits[split]
    index = {r.study_id: i for i, r in enumerate(all_records)}
    records = list(all_records)
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    source: object = "labels"
    if config.findings_source == "predicted":
        predicted = predicted_findings(ctx, split)
        source = {r.study_id: list(predicted[index[r.study_id]]) for r in records}
    examples = build_instruct_examples(
        records,
        config.mix,
        seed=seed,
        findings_source=source,  # type: ignore[arg-type]
        config=InstructConfig(
            image_placeholder=ctx.model_config.prompt.image_placeholder,
            target_order=config.target_order,
        ),
    )
    out = [
        TextExample(
            split,
            index[e.study_id],
            tuple(e.findings),
            e.instruction,
            e.indication,
            e.report,
            tuple(e.history),
            e.answer,
        )
        for e in examples
    ]
    replay = report_examples(ctx, split, config.findings_source, config.target_order)
    n_replay = int(round(len(out) * config.replay_fraction / (1 - config.replay_fraction)))
    rng = random.Random(seed)
    out.extend(rng.sample(replay, min(n_replay, len(replay))))
    rng.shuffle(out)
    return out


class _LoraNet(nn.Module):
    """The peft-wrapped LLM plus the vision parts a stage trains, as one module."""

    def __init__(self, llm: PeftModel, aligner: nn.Module) -> None:
        super().__init__()
        self.llm = llm
        self.aligner = aligner


def _image_tokens(ctx: RunContext, split: str, indices: Sequence[int]) -> torch.Tensor:
    """Image tokens of the given studies; gradients reach only trainable aligner parts."""
    tower = ctx.tower
    pixels = torch.from_numpy(np.asarray(ctx.images[split][list(indices)], dtype=np.float32))
    with torch.no_grad():
        features = tower.encoder(pixels.to(ctx.device))
        if isinstance(tower.aligner, QFormerAligner):
            queries = tower.aligner.query_outputs(features)
    if isinstance(tower.aligner, QFormerAligner):
        return tower.aligner.projection(queries)
    return tower.aligner(features)


def _encode(ctx: RunContext, example: TextExample) -> EncodedPrompt:
    return ctx.prompts.encode(
        findings=example.findings,
        instruction=example.instruction,
        indication=example.indication,
        report=example.report,
        history=example.history,
        answer=example.answer,
    )


def _fit_adapter(
    ctx: RunContext,
    stage: str,
    config: LoraStage,
    peft_model: PeftModel,
    train: list[TextExample],
    val: list[TextExample],
    train_vision: bool,
) -> dict[str, float]:
    tower = ctx.tower
    tower.requires_grad_(False)
    if train_vision:
        trainable = (
            tower.aligner.projection if isinstance(tower.aligner, QFormerAligner) else tower.aligner
        )
        trainable.requires_grad_(True)
    net = _LoraNet(peft_model, tower.aligner)
    pad_id = int(ctx.tokenizer.pad_token_id)
    if config.max_train_examples:
        train = train[: config.max_train_examples]
    if config.max_val_examples:
        val = val[: config.max_val_examples]

    # Tokenised once: every step and every evaluation reuses the encodings.
    train_encoded = [_encode(ctx, e) for e in train]
    val_encoded = [_encode(ctx, e) for e in val]

    def loss_on(
        examples: Sequence[TextExample], encoded: Sequence[EncodedPrompt]
    ) -> torch.Tensor:
        tokens = _image_tokens(ctx, examples[0].split, [e.image_index for e in examples])
        return answer_loss(peft_model, list(encoded), list(tokens), pad_id)

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_on([train[i] for i in indices], [train_encoded[i] for i in indices]), {}

    def evaluate() -> dict[str, float]:
        losses, weights = [], []
        for start in range(0, len(val), config.batch_size):
            end = start + config.batch_size
            chunk = val[start:end]
            losses.append(float(loss_on(chunk, val_encoded[start:end])))
            weights.append(len(chunk))
        return {"loss": float(np.average(losses, weights=weights)) if losses else 0.0}

    trainer = ctx.trainer(stage, net, config, metric="loss" if val else None, mode="min")
    lengths = (
        [len(p.prefix_ids) + len(p.suffix_ids) + len(p.target_ids) for p in train_encoded]
        if config.group_by_length
        else None
    )
    outcome = trainer.fit(
        len(train), loss_fn, evaluate if val else None, resume=ctx.resume, lengths=lengths
    )
    tower.requires_grad_(False)
    peft_model.requires_grad_(False)
    return {f"val_{k}": v for k, v in outcome.last_metrics.items()}


def run_report_stage(ctx: RunContext) -> dict[str, float]:
    """Stage 2: the report-generation adapter (``report``) and the LLM projection."""
    config = ctx.config.stage("report")
    assert isinstance(config, LoraStage)
    llm = ctx.llm
    peft_model = (
        llm
        if isinstance(llm, PeftModel)
        else get_peft_model(llm, lora_config(config), adapter_name="report")
    )
    ctx.llm = peft_model
    peft_model.set_adapter("report")
    train = report_examples(ctx, "train", config.findings_source, config.target_order)
    val = report_examples(ctx, "val", config.findings_source, config.target_order)
    metrics = _fit_adapter(ctx, "report", config, peft_model, train, val, train_vision=True)
    peft_model.save_pretrained(
        str(ctx.stage_dir("report") / "adapter"), selected_adapters=["report"]
    )
    table = NgramTable.build(_encode(ctx, example).target_ids for example in train)
    table.save(ctx.stage_dir("report") / LOOKUP_TABLE)
    return metrics


def prepare_instruct_adapter(ctx: RunContext, config: InstructStage) -> PeftModel:
    """Add the ``instruct`` adapter to the run's LLM (from the report adapter when
    ``init_from_report``) unless it has one, and make it the active adapter."""
    llm = ctx.llm
    if isinstance(llm, PeftModel):
        peft_model = llm
        if "instruct" not in peft_model.peft_config:
            peft_model.add_adapter("instruct", lora_config(config))
            if config.init_from_report and "report" in peft_model.peft_config:
                _copy_adapter(peft_model, "report", "instruct")
    else:
        peft_model = get_peft_model(llm, lora_config(config), adapter_name="instruct")
    ctx.llm = peft_model
    peft_model.set_adapter("instruct")
    return peft_model


def run_instruct_stage(ctx: RunContext) -> dict[str, float]:
    """Stage 3: the dialog adapter (``instruct``) on the task mix with report replay."""
    config = ctx.config.stage("instruct")
    assert isinstance(config, InstructStage)
    peft_model = prepare_instruct_adapter(ctx, config)
    steps_examples = (
        config.max_steps * config.batch_size * config.grad_accum if config.max_steps else None
    )
    train = instruct_examples(ctx, "train", config, ctx.config.seed, steps_examples)
    val = instruct_examples(ctx, "val", config, ctx.config.seed + 1, config.max_val_examples)
    metrics = _fit_adapter(ctx, "instruct", config, peft_model, train, val, train_vision=False)
    peft_model.save_pretrained(
        str(ctx.stage_dir("instruct") / "adapter"), selected_adapters=["instruct"]
    )
    return metrics


def _copy_adapter(model: PeftModel, source: str, target: str) -> None:
    """Copy LoRA weights between adapters of the same shape (instruct starts from report)."""
    state = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in state.items():
            marker = f".{target}."
            if marker in name:
                twin = name.replace(marker, f".{source}.")
                if twin in state and state[twin].shape == param.shape:
                    param.copy_(state[twin])


__all__ = [
    "TextExample",
    "instruct_examples",
    "lora_config",
    "predicted_findings",
    "prepare_instruct_adapter",
    "report_examples",
    "run_instruct_stage",
    "run_report_stage",
]
