"""The optimisation loop every stage shares.

A stage supplies its trainable module, a function that turns a list of example indices into
a loss, and optionally a validation function returning a metric. The loop owns the rest:
deterministic batch order, AdamW with warm-up and cosine decay, gradient accumulation and
clipping, bf16 autocast, a progress bar, the loss CSV and PNG, periodic checkpoints, keeping
the best weights by the validation metric, and resuming.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.config import StageConfig
from training.engine.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointState,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from training.engine.curves import plot_loss_curves

logger = logging.getLogger(__name__)

LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[], dict[str, float]]

LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"


def bf16_enabled(setting: Literal["auto", "on", "off"], device: torch.device) -> bool:
    """Whether to autocast to bf16: ``auto`` = on CUDA, and on CPUs with native bf16."""
    if setting == "off":
        return False
    if setting == "on":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported())


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the ``step``-th batch: epochs are seeded permutations, concatenated.

    The order depends only on ``(n, batch_size, step, seed)``, so a resumed run sees the
    batches an uninterrupted run would have seen.
    """
    start = step * batch_size
    indices: list[int] = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - len(indices), n - offset)
        indices.extend(int(i) for i in order[offset : offset + take])
    return indices


#: Batches of a length-grouped "megabatch": examples are sorted by length within it.
MEGABATCH_BATCHES: int = 32


def length_grouped_batch_indices(
    lengths: Sequence[int], batch_size: int, step: int, seed: int
) -> list[int]:
    """Indices of the ``step``-th batch, with examples of similar length batched together.

    Each epoch is a seeded permutation cut into megabatches of ``MEGABATCH_BATCHES``
    batches; each megabatch is sorted by length and cut into batches, and the batches of
    the epoch are shuffled (as ``group_by_length`` in transformers' Trainer). A batch is
    then padded to a length close to that of its examples. Like :func:`batch_indices`,
    the order depends only on the arguments, so a resumed run sees the same batches; the
    last batch of an epoch may be short.
    """
    n = len(lengths)
    per_epoch = math.ceil(n / batch_size)
    epoch, position = divmod(step, per_epoch)
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(n)
    mega = batch_size * MEGABATCH_BATCHES
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(order[start : start + mega].tolist(), key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = rng.permutation(len(batches))
    return [int(i) for i in batches[int(shuffled[position])]]


def total_steps(config: StageConfig, n_examples: int) -> int:
    """Optimiser steps of a stage: ``max_steps``, else ``epochs`` over the examples."""
    if config.max_steps is not None:
        return config.max_steps
    per_step = config.batch_size * config.grad_accum
    return max(1, math.ceil(config.epochs * n_examples / per_step))


@dataclass
class StageOutcome:
    """What a finished stage reports."""

    steps: int
    best_metric: float | None
    last_metrics: dict[str, float]
    resumed_from: int


class StageTrainer:
    """Runs one stage's optimisation with checkpoints and logs in ``stage_dir``.

    Parameters
    ----------
    name
        Stage name (recorded in checkpoints).
    module
        Module whose parameters with ``requires_grad`` are trained and checkpointed.
    config
        The stage's optimisation settings.
    stage_dir
        Folder for ``checkpoint.pt``, ``loss.csv`` and ``loss.png``.
    device
        Where the module runs.
    seed
        Seed of the batch order.
    metric
        Name of the validation metric to keep the best weights by; ``None`` keeps the last.
    mode
        ``"max"`` or ``"min"``: which direction of ``metric`` is better.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        config: StageConfig,
        stage_dir: Path,
        device: torch.device,
        *,
        seed: int,
        metric: str | None = None,
        mode: Literal["max", "min"] = "max",
        progress: bool = True,
    ) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.stage_dir = stage_dir
        self.device = device
        self.seed = seed
        self.metric = metric
        self.mode = mode
        self.progress = progress
        self.autocast = bf16_enabled(config.bf16, device)
        self.checkpoint_path = stage_dir / CHECKPOINT_NAME

    # ------------------------------------------------------------------------- helpers
    def _trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def _buffers(self) -> dict[str, torch.Tensor]:
        """Floating buffers of the trained submodules (BatchNorm running statistics).

        They change in training without being parameters; a checkpoint without them
        restores a ResNet's convolutions with its initial normalisation statistics.
        """
        trained = {n.rsplit(".", 1)[0] for n in self._trainable()}
        return {
            name: buffer
            for name, buffer in self.module.named_buffers()
            if buffer.is_floating_point()
            and (name.rsplit(".", 1)[0] in trained or "running_" in name)
        }

    def _state(self) -> dict[str, torch.Tensor]:
        tensors = {**self._trainable(), **self._buffers()}
        return {n: t.detach().to("cpu").clone() for n, t in tensors.items()}

    def load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy saved trainable weights (and the buffers saved with them) into the module."""
        params = self._trainable()
        missing = set(params) - set(state)
        if missing:
            raise ValueError(f"saved state lacks {sorted(missing)[:3]}...")
        buffers = self._buffers()
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name].to(param.device, param.dtype))
            for name, buffer in buffers.items():
                if name in state:
                    buffer.copy_(state[name].to(buffer.device, buffer.dtype))

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def autocast_context(self) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast when enabled for this stage, else a no-op context."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------------- main loop
    def fit(
        self,
        n_examples: int,
        loss_fn: LossFn,
        evaluate: EvalFn | None = None,
        *,
        resume: bool = False,
        lengths: Sequence[int] | None = None,
    ) -> StageOutcome:
        """Train until the stage's step budget is spent, then load the best weights.

        Parameters
        ----------
        n_examples
            Size of the training set (indices ``0..n-1`` are passed to ``loss_fn``).
        loss_fn
            Computes the mean loss of a micro-batch of example indices and named parts.
        evaluate
            Returns validation metrics (run every ``eval_every`` steps and at the end).
        resume
            Continue from ``checkpoint.pt`` when it exists.
        lengths
            Length of each example (tokens): batches group examples of similar length
            (:func:`length_grouped_batch_indices`). ``None`` draws plain random batches.
        """
        if lengths is not None and len(lengths) != n_examples:
            raise ValueError(f"stage {self.name}: {len(lengths)} lengths for {n_examples} examples")
        if n_examples < 1:
            raise ValueError(f"stage {self.name}: no training examples")
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        params = list(self._trainable().values())
        if not params:
            raise ValueError(f"stage {self.name}: nothing to train")
        config = self.config
        steps = total_steps(config, n_examples)
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_cosine(config.warmup_steps, steps)
        )
        step, best, best_state = 0, None, None
        last_metrics: dict[str, float] = {}
        if resume and self.checkpoint_path.is_file():
            saved = load_checkpoint(self.checkpoint_path, self.name)
            self.load_trainable(saved.trainable)
            optimizer.load_state_dict(saved.optimizer)
            scheduler.load_state_dict(saved.scheduler)
            restore_rng(saved.rng)
            step, best, best_state = saved.step, saved.best_metric, saved.best_trainable
            _truncate_log(self.stage_dir / LOSS_CSV, step)
            logger.info("stage %s: resuming at step %d of %d", self.name, step, steps)
            if saved.done:
                # as a run that just finished: eval mode, so that later stages that use
                # this module frozen do not move its BatchNorm statistics
                self.module.eval()
                if best_state is not None:
                    self.load_trainable(best_state)
                return StageOutcome(step, best, {}, resumed_from=step)
        elif not resume:
            (self.stage_dir / LOSS_CSV).unlink(missing_ok=True)
        resumed_from = step
        micro = config.batch_size
        eval_every = config.eval_every or steps
        self.module.train()
        with (
            _LossLog(self.stage_dir / LOSS_CSV) as log,
            tqdm(
                total=steps, initial=step, desc=f"stage {self.name}", disable=not self.progress
            ) as bar,
        ):
            while step < steps:
                totals: dict[str, float] = {}
                for part in range(config.grad_accum):
                    micro_step = step * config.grad_accum + part
                    indices = (
                        batch_indices(n_examples, micro, micro_step, self.seed)
                        if lengths is None
                        else length_grouped_batch_indices(lengths, micro, micro_step, self.seed)
                    )
                    with self.autocast_context():
                        loss, parts = loss_fn(indices)
                    (loss / config.grad_accum).backward()
                    for key, value in {"loss": float(loss.detach()), **parts}.items():
                        totals[key] = totals.get(key, 0.0) + value / config.grad_accum
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss']:.4f}")
                if step % config.log_every == 0 or step == steps:
                    log.write(step, "train", {**totals, "lr": float(scheduler.get_last_lr()[0])})
                if evaluate is not None and (step % eval_every == 0 or step == steps):
                    self.module.eval()
                    with torch.no_grad(), self.autocast_context():
                        last_metrics = evaluate()
                    self.module.train()
                    log.write(step, "val", last_metrics)
                    if self.metric is not None:
                        value = last_metrics[self.metric]
                        if self._better(value, best):
                            best, best_state = value, self._state()
                if step % config.checkpoint_every == 0 or step == steps:
                    save_checkpoint(
                        self.checkpoint_path,
                        CheckpointState(
                            stage=self.name,
                            step=step,
                            best_metric=best,
                            done=step == steps,
                            config=config.model_dump(),
                            trainable=self._state(),
                            optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(),
                            best_trainable=best_state,
                            rng=capture_rng(),
                        ),
                    )
        self.module.eval()
        if best_state is not None:
            self.load_trainable(best_state)
        plot_loss_curves(self.stage_dir / LOSS_CSV, self.stage_dir / LOSS_PNG, title=self.name)
        return StageOutcome(steps, best, last_metrics, resumed_from)


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop loss rows logged after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0], *(row for row in rows[1:] if int(row[0]) <= last_step)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)


class _LossLog:
    """Appends rows ``step, split, key, value`` to the stage's loss CSV."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _LossLog:
        new = not self.path.is_file()
        self.file = self.path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", "split", "metric", "value"])
        return self

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.writerow([step, split, key, f"{value:.6g}"])
        self.file.flush()

    def __exit__(self, *exc: object) -> None:
        self.file.close()


__all__ = [
    "LOSS_CSV",
    "LOSS_PNG",
    "StageOutcome",
    "StageTrainer",
    "batch_indices",
    "length_grouped_batch_indices",
    "bf16_enabled",
    "total_steps",
]
