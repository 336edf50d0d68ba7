"""Is an image a frontal chest radiograph like the ones the model learned from?

The findings head and the report adapter answer for any image they are given: the demo model
coded "pulmonary edema, p = 0.99998" on a real chest CR unlike its phantoms, and would draft a
skull film or an ultrasound screenshot as a chest X-ray. A bundle may therefore carry a
:class:`ContentCheck` (``content_check.json``, checksummed like every file), fitted on the
pooled image embedding of the vision side (the aligner's output, averaged over its tokens):

* a **content probe**: a logistic regression trained on the training split's frontal chest
  images against synthetic negatives (skull, hand, abdomen, ultrasound and text screenshots,
  noise); ``chest_probability`` below ``probe_threshold`` means "not a frontal chest
  radiograph";
* an **out-of-distribution distance**: the Mahalanobis distance of the embedding to the
  training images, in their principal subspace plus a residual term; its threshold is a high
  quantile of the validation split's distances (chosen on validation, never on test).

Both are plain numpy on the embeddings ONNX Runtime already computes: the check costs
microseconds per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import BundleError, InferenceError

#: File name of the check in a bundle.
CONTENT_CHECK_FILE = "content_check.json"
CHECK_FORMAT = "content-check"
CHECK_VERSION = 1


@dataclass(frozen=True)
class ContentScore:
    """What the check says of one image."""

    #: Probability that the image is a frontal chest radiograph (the content probe).
    chest_probability: float
    #: Distance of the image embedding to the training images (1.0 = the threshold).
    ood_ratio: float
    is_chest: bool
    in_distribution: bool

    def describe(self) -> str:
        """A short reason for a log, a job or an SR."""
        parts = []
        if not self.is_chest:
            parts.append(f"not a frontal chest radiograph (p = {self.chest_probability:.2f})")
        if not self.in_distribution:
            parts.append(
                f"outside the model's training distribution ({self.ood_ratio:.1f}x the "
                "threshold distance)"
            )
        return "; ".join(parts) or "passed"


def pool_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``(B, T, D)`` image tokens -> ``(B, D)`` float64 mean over the tokens."""
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 3:
        raise InferenceError(f"expected image tokens (B, T, D), got shape {array.shape}")
    return array.mean(axis=1)


@dataclass
class ContentCheck:
    """The fitted check (see the module docstring)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    ood_threshold: float
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    probe_weights: np.ndarray
    probe_bias: float
    probe_threshold: float
    provenance: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- scoring
    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each pooled embedding ``(B, D)`` to the training images."""
        centred = np.asarray(pooled, dtype=np.float64) - self.mean
        projected = centred @ self.components.T
        residual = centred - projected @ self.components
        squared = (projected**2 / self.variances).sum(axis=1) + (residual**2).sum(
            axis=1
        ) / self.residual_variance
        return np.sqrt(squared / centred.shape[1])

    def chest_probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """The content probe's probability of "frontal chest radiograph" for each image."""
        features = (np.asarray(pooled, dtype=np.float64) - self.feature_mean) / self.feature_scale
        logits = features @ self.probe_weights + self.probe_bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))

    def score(self, embeddings: np.ndarray) -> list[ContentScore]:
        """Score image tokens ``(B, T, D)``, one :class:`ContentScore` per image."""
        pooled = pool_embeddings(embeddings)
        ratios = self.distances(pooled) / self.ood_threshold
        probabilities = self.chest_probabilities(pooled)
        return [
            ContentScore(float(p), float(r), bool(p >= self.probe_threshold), bool(r <= 1.0))
            for p, r in zip(probabilities, ratios, strict=True)
        ]

    # ----------------------------------------------------------------- files
    def save(self, path: str | PathLike[str]) -> None:
        """Write the check as JSON."""
        payload = {
            "format": CHECK_FORMAT,
            "format_version": CHECK_VERSION,
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "variances": self.variances.tolist(),
            "residual_variance": self.residual_variance,
            "ood_threshold": self.ood_threshold,
            "feature_mean": self.feature_mean.tolist(),
            "feature_scale": self.feature_scale.tolist(),
            "probe_weights": self.probe_weights.tolist(),
            "probe_bias": self.probe_bias,
            "probe_threshold": self.probe_threshold,
            "provenance": self.provenance,
        }
        Path(path).write_text(json.dumps(payload) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> ContentCheck:
        """Read a check written by :meth:`save`.

        Raises
        ------
        BundleError
            For a file that is not a readable check of this format.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != CHECK_FORMAT or data.get("format_version") != CHECK_VERSION:
                raise ValueError("not a content check of this format")
            check = cls(
                mean=np.asarray(data["mean"], dtype=np.float64),
                components=np.asarray(data["components"], dtype=np.float64),
                variances=np.asarray(data["variances"], dtype=np.float64),
                residual_variance=float(data["residual_variance"]),
                ood_threshold=float(data["ood_threshold"]),
                feature_mean=np.asarray(data["feature_mean"], dtype=np.float64),
                feature_scale=np.asarray(data["feature_scale"], dtype=np.float64),
                probe_weights=np.asarray(data["probe_weights"], dtype=np.float64),
                probe_bias=float(data["probe_bias"]),
                probe_threshold=float(data["probe_threshold"]),
                provenance=dict(data.get("provenance", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: unreadable content check ({exc})") from exc
        return check


def fit_content_check(
    positives: np.ndarray,
    negatives: np.ndarray,
    validation_positives: np.ndarray,
    validation_negatives: np.ndarray,
    *,
    components: int = 16,
    ood_quantile: float = 0.99,
    l2: float = 1e-2,
    steps: int = 600,
) -> ContentCheck:
    """Fit the check on pooled embeddings ``(N, D)`` (see the module docstring).

    Parameters
    ----------
    positives, negatives
        Training split: frontal chest images, and synthetic non-chest images.
    validation_positives, validation_negatives
        Validation split: the distance threshold is the ``ood_quantile`` of the validation
        positives' distances; the probe threshold maximises balanced accuracy on them.
    components
        Principal directions kept for the distance.
    ood_quantile
        Share of validation chest images the distance accepts.
    l2, steps
        Ridge penalty and gradient steps of the probe.
    """
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if len(pos) < 4 or len(neg) < 4:
        raise InferenceError("the content check needs at least 4 positive and 4 negative images")
    mean = pos.mean(axis=0)
    centred = pos - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(components, len(pos) - 1, vt.shape[0]))
    variances = np.maximum(singular[:k] ** 2 / max(1, len(pos) - 1), 1e-12)
    basis = vt[:k]
    residual = centred - (centred @ basis.T) @ basis
    residual_variance = float(max((residual**2).mean(), 1e-12))
    check = ContentCheck(
        mean=mean,
        components=basis,
        variances=variances,
        residual_variance=residual_variance,
        ood_threshold=1.0,
        feature_mean=np.zeros(pos.shape[1]),
        feature_scale=np.ones(pos.shape[1]),
        probe_weights=np.zeros(pos.shape[1]),
        probe_bias=0.0,
        probe_threshold=0.5,
    )
    check.ood_threshold = float(
        max(np.quantile(check.distances(validation_positives), ood_quantile), 1e-9)
    )
    # The probe: logistic regression on standardised features, full-batch gradient descent.
    features = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    check.feature_mean = features.mean(axis=0)
    check.feature_scale = features.std(axis=0) + 1e-6
    x = (features - check.feature_mean) / check.feature_scale
    weights = np.zeros(x.shape[1])
    bias = 0.0
    balance = np.where(labels == 1, 0.5 / len(pos), 0.5 / len(neg))
    # Step 1/L, L the gradient's Lipschitz constant: 0.25 x the largest eigenvalue of the
    # weighted Gram matrix (bias column included), plus the ridge.
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1) * np.sqrt(balance)[:, None]
    rate = 1.0 / (0.25 * float(np.linalg.norm(design, 2)) ** 2 + l2)
    for _ in range(steps):
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(x @ weights + bias, -60, 60)))
        error = (probabilities - labels) * balance
        weights -= rate * (x.T @ error + l2 * weights)
        bias -= rate * float(error.sum())
    check.probe_weights, check.probe_bias = weights, bias
    val_p = check.chest_probabilities(validation_positives)
    val_n = check.chest_probabilities(validation_negatives)
    candidates = np.unique(np.concatenate([val_p, val_n, [0.5]]))
    accuracy = [((val_p >= t).mean() + (val_n < t).mean()) / 2 for t in candidates]
    check.probe_threshold = float(candidates[int(np.argmax(accuracy))])
    check.provenance = {
        "train_positives": int(len(pos)),
        "train_negatives": int(len(neg)),
        "validation_positives": int(len(validation_positives)),
        "validation_negatives": int(len(validation_negatives)),
        "components": int(k),
        "ood_quantile": ood_quantile,
        "validation_balanced_accuracy": float(max(accuracy)),
    }
    return check


__all__ = [
    "CONTENT_CHECK_FILE",
    "ContentCheck",
    "ContentScore",
    "fit_content_check",
    "pool_embeddings",
]
