"""The shared training loop, run configuration and stage helpers, on tiny models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inference import PromptBuilder, PromptConfig
from inference.tiny import tiny_llm, train_tiny_tokenizer
from training import TrainingConfigError
from training.config import LoraStage, StageConfig, parse_training_config
from training.engine.checkpoint import load_checkpoint
from training.engine.lm_loss import answer_loss
from training.engine.loop import (
    MEGABATCH_BATCHES,
    StageTrainer,
    batch_indices,
    length_grouped_batch_indices,
    total_steps,
)
from training.stages import f1_scores, pos_weights, tune_thresholds

MINIMAL = {
    "data": {"path": "data"},
    "model": {"llm_dir": "llm"},
}


def _linear_task(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(40)
    return nn.Linear(3, 1), x, y


def _fit(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, stage_dir: Path, **kwargs: object
) -> StageTrainer:
    config = StageConfig(
        batch_size=8, max_steps=6, checkpoint_every=2, log_every=1, learning_rate=0.05, bf16="off"
    )
    trainer = StageTrainer(
        "toy", module, config, stage_dir, torch.device("cpu"), seed=3, metric="neg_mse",
        progress=False,
    )
    crash_at = kwargs.get("crash_at")
    calls = {"n": 0}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return nn.functional.mse_loss(module(x[indices]).squeeze(1), y[indices]), {}

    def evaluate() -> dict[str, float]:
        return {"neg_mse": -float(nn.functional.mse_loss(module(x).squeeze(1), y))}

    trainer.fit(len(x), loss_fn, evaluate, resume=bool(kwargs.get("resume")))
    return trainer


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    module, x, y = _linear_task()
    _fit(module, x, y, tmp_path / "straight")

    crashed, _, _ = _linear_task()
    with pytest.raises(KeyboardInterrupt):
        _fit(crashed, x, y, tmp_path / "crashed", crash_at=5)  # dies during step 5
    saved = load_checkpoint(tmp_path / "crashed" / "checkpoint.pt", "toy")
    assert saved.step == 4 and not saved.done  # last checkpoint before the crash
    resumed, _, _ = _linear_task(seed=99)  # fresh weights: all state must come from disk
    _fit(resumed, x, y, tmp_path / "crashed", resume=True)
    for a, b in zip(module.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resuming_a_finished_stage_restores_batchnorm_statistics(tmp_path: Path) -> None:
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    trained, x, y = net(), *_linear_task()[1:]
    _fit(trained, x, y, tmp_path / "stage")
    batchnorm = trained[1]
    assert isinstance(batchnorm, nn.BatchNorm1d)
    assert not torch.allclose(batchnorm.running_mean, torch.zeros(4))  # training moved them
    restored = net()  # initial statistics: mean 0, variance 1
    _fit(restored, x, y, tmp_path / "stage", resume=True)  # finished: only loads
    # left in eval mode, as a run that just finished: a later stage that runs it frozen
    # (the encoder under the LoRA stages) must not move its statistics
    assert not trained.training and not restored.training
    restored(x)
    torch.testing.assert_close(restored(x), trained(x))


def test_stage_writes_loss_csv_png_and_a_complete_checkpoint(tmp_path: Path) -> None:
    module, x, y = _linear_task()
    _fit(module, x, y, tmp_path)
    with (tmp_path / "loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    train_steps = [int(r["step"]) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    losses = [float(r["value"]) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
    assert losses[-1] < losses[0]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    saved = load_checkpoint(tmp_path / "checkpoint.pt", "toy")
    assert saved.done and saved.step == 6
    assert saved.best_metric is not None and saved.best_metric < 0
    assert saved.optimizer["state"] and saved.scheduler["last_epoch"] == 6
    assert saved.config["batch_size"] == 8


def test_checkpoint_of_another_stage_is_refused(tmp_path: Path) -> None:
    module, x, y = _linear_task()
    _fit(module, x, y, tmp_path)
    with pytest.raises(Exception, match="stage 'toy', not 'report'"):
        load_checkpoint(tmp_path / "checkpoint.pt", "report")


def test_batch_order_is_seeded_and_covers_each_epoch() -> None:
    first_epoch = [i for step in range(5) for i in batch_indices(10, 2, step, seed=1)]
    assert sorted(first_epoch) == list(range(10))
    assert batch_indices(10, 4, 7, seed=1) == batch_indices(10, 4, 7, seed=1)
    assert batch_indices(10, 4, 0, seed=1) != batch_indices(10, 4, 0, seed=2)
    assert total_steps(StageConfig(batch_size=4, epochs=2.0), 10) == 5
    assert total_steps(StageConfig(batch_size=4, max_steps=3), 10) == 3


def test_length_grouped_batches_cover_each_epoch_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 400, size=1000).tolist()
    batch = 8
    per_epoch = -(-len(lengths) // batch)
    epoch = [length_grouped_batch_indices(lengths, batch, s, seed=3) for s in range(per_epoch)]
    assert sorted(i for b in epoch for i in b) == list(range(len(lengths)))
    # padded tokens per batch: far fewer than with random batches
    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)
    plain = [batch_indices(len(lengths), batch, s, seed=3) for s in range(per_epoch)]
    assert padding(epoch) < 0.25 * padding(plain)
    # deterministic by step (resume), different per seed, the next epoch is another order
    assert length_grouped_batch_indices(lengths, batch, 5, 3) == epoch[5]
    assert length_grouped_batch_indices(lengths, batch, 5, 4) != epoch[5]
    assert length_grouped_batch_indices(lengths, batch, per_epoch, 3) != epoch[0]
    assert MEGABATCH_BATCHES * batch < len(lengths)  # several megabatches were exercised


def test_run_config_names_bad_keys() -> None:
    with pytest.raises(TrainingConfigError, match=r"stages\.report\.lora_rr"):
        parse_training_config({**MINIMAL, "stages": {"report": {"lora_rr": 4}}})
    with pytest.raises(TrainingConfigError, match=r"stages\.classifier\.batch_size"):
        parse_training_config({**MINIMAL, "stages": {"classifier": {"batch_size": 0}}})
    with pytest.raises(TrainingConfigError, match=r"data\.kind"):
        parse_training_config({**MINIMAL, "data": {"path": "x", "kind": "png"}})
    with pytest.raises(TrainingConfigError, match="run_stages"):
        parse_training_config({**MINIMAL, "run_stages": ["report", "classifier"]})
    with pytest.raises(TrainingConfigError, match=r"model\.config"):
        parse_training_config({**MINIMAL, "model": {"llm_dir": "x", "config": {"alinger": {}}}})


def test_stage_settings_merge_defaults_and_overrides() -> None:
    config = parse_training_config(
        {**MINIMAL, "defaults": {"batch_size": 4}, "stages": {"report": {"lora_r": 4}}}
    )
    report = config.stage("report")
    instruct = config.stage("instruct")
    assert isinstance(report, LoraStage) and isinstance(instruct, LoraStage)
    assert report.batch_size == 4 and report.lora_r == 4
    assert instruct.lora_r == 16


def test_thresholds_maximise_f1_per_label() -> None:
    probabilities = np.array([[0.9, 0.2], [0.6, 0.4], [0.3, 0.35], [0.1, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)
    thresholds, f1 = tune_thresholds(probabilities, targets)
    # Label 0 separates at any threshold in (0.3, 0.6]; label 1 needs <= 0.35 and > 0.2.
    assert 0.3 < thresholds[0] <= 0.6 and 0.2 < thresholds[1] <= 0.35
    assert f1.tolist() == [1.0, 1.0]
    # Hand-computed F1: tp=1, fp=1, fn=1 -> 2/(2+1+1) = 0.5.
    assert f1_scores(np.array([[1.0], [1.0], [0.0]]), np.array([[1.0], [0.0], [1.0]]))[0] == 0.5
    # pos_weight = negatives / positives, clipped to [1, 20]; never-positive labels get 1.
    weights = pos_weights(np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]], np.float32))
    assert weights.tolist() == [3.0, 1.0, 1.0]


def test_answer_loss_scores_only_answer_tokens() -> None:
    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(0)
    llm = tiny_llm(tokenizer).eval()
    builder = PromptBuilder(tokenizer, PromptConfig())
    prompts = [
        builder.encode(findings=["Edema"], instruction="Write it.", answer="Mild edema."),
        builder.encode(findings=[], instruction="Write it.", answer="No acute disease at all."),
    ]
    hidden = llm.config.hidden_size
    images = [torch.randn(3, hidden), torch.randn(3, hidden)]
    loss = answer_loss(llm, prompts, images, pad_token_id=tokenizer.pad_token_id)
    # Reference: the model's own loss with labels on the same spliced batch.
    from inference import assemble_batch

    batch = assemble_batch(
        llm.get_input_embeddings(), prompts, images, pad_token_id=tokenizer.pad_token_id,
        padding_side="right", with_targets=True,
    )
    reference = llm(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
        labels=batch.labels,
    ).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    answer_tokens = sum(len(p.target_ids) for p in prompts)
    assert int((batch.labels != -100).sum()) == answer_tokens
