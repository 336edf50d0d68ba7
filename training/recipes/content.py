"""Fit a bundle's content check on its own vision side: training chest images against
synthetic negatives, thresholds chosen on the validation split (see
:mod:`inference.content_check`).

The embeddings come from the packaged bundle's ONNX vision model, run the way inference runs
it (precision ``auto``), so the check sees exactly what the node will compute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from inference.bundle import attach_file, load_manifest
from inference.content_check import (
    CONTENT_CHECK_FILE,
    ContentCheck,
    fit_content_check,
    pool_embeddings,
)
from inference.model import select_vision_onnx
from inference.onnx_runtime import OnnxVisionRunner, OrtOptions
from inference.preprocessing import preprocess_display_image
from training.phantoms.negatives import negative_images

logger = logging.getLogger(__name__)

#: Most chest images of a split used to fit the check.
MAX_POSITIVES = {"train": 400, "val": 200}
#: Fewest chest images per split the check is fitted on.
MIN_IMAGES = 16
#: Synthetic negatives per split.
NEGATIVES = {"train": 280, "val": 140}


def _pooled(runner: OnnxVisionRunner, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    out = [pool_embeddings(runner(pixels[i : i + batch])[1]) for i in range(0, len(pixels), batch)]
    return np.concatenate(out)


def fit_bundle_content_check(
    bundle: Path,
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    seed: int = 0,
) -> ContentCheck | None:
    """Fit the content check of ``bundle`` and write it into the bundle (checksummed).

    Returns None, and writes nothing, when a split has fewer than :data:`MIN_IMAGES`
    images: a check fitted on so few would refuse what it has not seen by chance.

    Parameters
    ----------
    bundle
        A packaged bundle.
    train_images, val_images
        Preprocessed frontal chest images ``(N, C, S, S)`` of the training and validation
        splits (the run's image cache).
    seed
        Seed of the negatives and of the subsample.
    """
    if len(train_images) < MIN_IMAGES or len(val_images) < MIN_IMAGES:
        logger.warning(
            "no content check for %s: %d training and %d validation images, fewer than %d",
            bundle, len(train_images), len(val_images), MIN_IMAGES,
        )
        return None
    manifest = load_manifest(bundle, verify=False)
    ort = OrtOptions()
    onnx_file = select_vision_onnx(manifest, "auto", ort)
    runner = OnnxVisionRunner(onnx_file, ort, per_image=onnx_file == manifest.vision_onnx_int8)
    config = manifest.config.preprocess
    rng = np.random.default_rng(seed)
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, images in (("train", train_images), ("val", val_images)):
        take = min(len(images), MAX_POSITIVES[split])
        chosen = np.sort(rng.choice(len(images), size=take, replace=False))
        negatives = np.stack([
            preprocess_display_image(image, config)
            for image in negative_images(NEGATIVES[split], seed=seed + (split == "val"))
        ])
        pooled[split] = (
            _pooled(runner, np.asarray(images[chosen], dtype=np.float32)),
            _pooled(runner, negatives.astype(np.float32)),
        )
    check = fit_content_check(*pooled["train"], *pooled["val"])
    check.save(bundle / CONTENT_CHECK_FILE)
    attach_file(bundle, CONTENT_CHECK_FILE, "vision", "content_check")
    logger.info(
        "content check: balanced accuracy %.3f on the validation split, probe threshold "
        "%.2f, distance threshold %.3f",
        check.provenance["validation_balanced_accuracy"], check.probe_threshold,
        check.ood_threshold,
    )
    return check


__all__ = ["MAX_POSITIVES", "MIN_IMAGES", "NEGATIVES", "fit_bundle_content_check"]
