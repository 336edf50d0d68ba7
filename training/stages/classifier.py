"""Stage 0: the CheXpert findings classifier.

Binary cross-entropy over the 14 labels (uncertain and absent count as negative), with a
``pos_weight`` per label of negatives / positives in the training split so that rare
findings are not drowned out. After training, one decision threshold per label is chosen on
the validation split to maximise that label's F1; the thresholds go into the bundle.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from inference.vision import FindingsClassifier, VisionTower
from report_language import CHEXPERT_LABELS
from training.config import ClassifierStage
from training.engine.context import RunContext
from training.errors import TrainingConfigError

logger = logging.getLogger(__name__)

THRESHOLD_GRID = np.linspace(0.02, 0.98, 49)


class _ClassifierNet(nn.Module):
    """Encoder + findings head of the vision tower, as one trainable module."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))


def f1_scores(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """F1 per column of binary ``predictions`` vs ``targets``; 0 where undefined."""
    tp = (predictions * targets).sum(axis=0)
    fp = (predictions * (1 - targets)).sum(axis=0)
    fn = ((1 - predictions) * targets).sum(axis=0)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def tune_thresholds(
    probabilities: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label threshold maximising F1 on a validation set.

    Labels with no positive in ``targets`` keep 0.5 (nothing to tune on).

    Returns
    -------
    tuple of numpy.ndarray
        ``(thresholds, f1 at those thresholds)``, one entry per label.
    """
    scores = np.stack(
        [f1_scores((probabilities >= t).astype(np.float32), targets) for t in THRESHOLD_GRID]
    )
    best = scores.argmax(axis=0)
    thresholds = THRESHOLD_GRID[best]
    has_positive = targets.sum(axis=0) > 0
    thresholds = np.where(has_positive, thresholds, 0.5)
    f1 = f1_scores((probabilities >= thresholds).astype(np.float32), targets)
    return thresholds, f1


def pos_weights(targets: np.ndarray) -> np.ndarray:
    """negatives / positives per label, clipped to [1, 20] (1 for labels never positive)."""
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    return np.clip(np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0), 1.0, 20.0)


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (up to 4 % of the side) and contrast/brightness jitter, per image."""
    batch, _, size, _ = pixels.shape
    limit = max(1, size // 25)
    shifts = torch.randint(-limit, limit + 1, (batch, 2), generator=generator)
    out = torch.stack(
        [
            torch.roll(img, (int(dy), int(dx)), dims=(1, 2))
            for img, (dy, dx) in zip(pixels, shifts, strict=True)
        ]
    )
    scale = 1 + 0.1 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    offset = 0.1 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    return out * scale + offset


def _head(tower: VisionTower) -> FindingsClassifier:
    """The tower's linear findings head: the one kind of classifier this stage trains."""
    if not isinstance(tower.classifier, FindingsClassifier):
        raise TrainingConfigError(
            "the classifier stage trains a 'head' findings classifier; this model's "
            "classifier.kind is not 'head'"
        )
    return tower.classifier


def predict_probabilities(ctx: RunContext, split: str, batch_size: int = 64) -> np.ndarray:
    """Classifier probabilities ``(N, 14)`` for a split's cached images (eval mode)."""
    tower = ctx.tower
    head = _head(tower)
    was_training = tower.training
    tower.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(ctx.images[split]), batch_size):
            pixels = torch.from_numpy(
                np.asarray(ctx.images[split][start : start + batch_size], dtype=np.float32)
            ).to(ctx.device)
            logits = head(tower.encoder(pixels))
            outputs.append(torch.sigmoid(logits.float()).cpu().numpy())
    tower.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(CHEXPERT_LABELS)))


def run_classifier_stage(ctx: RunContext) -> dict[str, float]:
    """Train the findings classifier and tune its thresholds; returns validation metrics."""
    config = ctx.config.stage("classifier")
    assert isinstance(config, ClassifierStage)
    tower = ctx.tower
    head = _head(tower)
    tower.requires_grad_(False)
    head.requires_grad_(True)
    tower.encoder.requires_grad_(config.train_backbone)
    # channels-last convolutions: a quarter less time per step on CPU (oneDNN); the
    # weights go back to the default layout after training (safetensors needs it)
    net = _ClassifierNet(tower.encoder, head).to(ctx.device)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in the stub

    n_train = ctx.train_size(config)
    targets = torch.from_numpy(ctx.targets("train")[:n_train]).to(ctx.device)
    weight = (
        torch.from_numpy(pos_weights(ctx.targets("train")[:n_train])).float().to(ctx.device)
        if config.pos_weight == "auto"
        else None
    )
    criterion = nn.BCEWithLogitsLoss(pos_weight=weight)
    generator = torch.Generator().manual_seed(ctx.config.seed)
    images = ctx.images["train"]

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = torch.from_numpy(np.asarray(images[indices], dtype=np.float32))
        if config.augment:
            pixels = _augment(pixels, generator)
        pixels = pixels.to(ctx.device).contiguous(memory_format=torch.channels_last)
        logits = net(pixels).float()
        return criterion(logits, targets[indices]), {}

    val_targets = ctx.targets("val")

    def evaluate() -> dict[str, float]:
        probabilities = predict_probabilities(ctx, "val")
        _, f1 = tune_thresholds(probabilities, val_targets)
        present = val_targets.sum(axis=0) > 0
        return {"macro_f1": float(f1[present].mean()) if present.any() else 0.0}

    trainer = ctx.trainer("classifier", net, config, metric="macro_f1", mode="max")
    outcome = trainer.fit(n_train, loss_fn, evaluate, resume=ctx.resume)
    net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    probabilities = predict_probabilities(ctx, "val")
    thresholds, f1 = tune_thresholds(probabilities, val_targets)
    ctx.thresholds = {label: float(t) for label, t in zip(CHEXPERT_LABELS, thresholds, strict=True)}
    tower.requires_grad_(False)
    metrics = {"val_macro_f1_tuned": float(f1[val_targets.sum(axis=0) > 0].mean())}
    metrics.update(
        {f"val_f1/{label}": float(v) for label, v in zip(CHEXPERT_LABELS, f1, strict=True)}
    )
    logger.info(
        "classifier: %d steps, validation macro F1 %.3f",
        outcome.steps,
        metrics["val_macro_f1_tuned"],
    )
    return metrics


__all__ = [
    "f1_scores",
    "pos_weights",
    "predict_probabilities",
    "run_classifier_stage",
    "tune_thresholds",
]
