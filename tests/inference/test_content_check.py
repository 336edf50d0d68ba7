"""The content check: fitting, files, and what it says of chest and non-chest images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import ChestXrayVLM, RuntimeOptions
from inference.bundle import load_manifest
from inference.content_check import CONTENT_CHECK_FILE, ContentCheck, fit_content_check
from inference.errors import BundleError
from inference.model import NotChestError
from training.phantoms._generate import PhantomConfig, generate_phantom
from training.phantoms.negatives import NEGATIVE_KINDS, negative_images


def test_a_fitted_check_separates_its_classes_and_flags_far_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chest = rng.normal(0.0, 1.0, size=(200, 24)) + 3.0 * np.eye(24)[0]
    other = rng.normal(0.0, 1.0, size=(200, 24)) - 3.0 * np.eye(24)[0]
    check = fit_content_check(chest[:150], other[:150], chest[150:], other[150:],
                              components=8)
    scores = check.score(np.concatenate([chest[150:], other[150:]])[:, None, :])
    assert sum(s.is_chest for s in scores[:50]) >= 48
    assert sum(not s.is_chest for s in scores[50:]) >= 48
    # a chest-side embedding far from every training one is out of distribution
    (far,) = check.score((chest[:1] + 40.0)[:, None, :])
    assert not far.in_distribution and far.ood_ratio > 3
    assert check.provenance["validation_balanced_accuracy"] > 0.95
    check.save(tmp_path / "c.json")
    again = ContentCheck.load(tmp_path / "c.json")
    assert np.allclose(again.distances(chest[:5]), check.distances(chest[:5]))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BundleError, match="bad.json"):
        ContentCheck.load(tmp_path / "bad.json")


def test_the_negatives_cover_every_kind_and_are_images() -> None:
    images = negative_images(len(NEGATIVE_KINDS) * 2, size=64, seed=3)
    assert len(images) == 14
    assert all(i.shape == (64, 64) and 0.0 <= i.min() and i.max() <= 1.0 for i in images)
    assert not np.allclose(images[0], negative_images(1, size=64, seed=4)[0])


def test_a_screened_bundle_knows_a_phantom_from_a_skull_or_a_screenshot(
    screened_bundle: Path,
) -> None:
    manifest = load_manifest(screened_bundle)  # checksummed like every file
    assert manifest.content_check == screened_bundle / CONTENT_CHECK_FILE
    model = ChestXrayVLM.from_bundle(screened_bundle, RuntimeOptions(device="cpu"))
    chest = generate_phantom(99, 3, PhantomConfig(size=256)).image
    skull, _, _, ultrasound, screenshot = negative_images(5, size=256, seed=42)
    analysis = model.analyse([chest, skull, ultrasound, screenshot])
    verdicts = [score.is_chest for score in analysis.content]
    assert verdicts == [True, False, False, False]
    # drafting leaves the non-chest images out, naming them
    kept = model.analyse([skull, chest], skip_unusable=True)
    assert [i for i, _ in kept.unusable] == [0]
    assert "not a frontal chest radiograph" in kept.unusable[0][1]
    with pytest.raises(NotChestError, match="not a frontal chest radiograph"):
        model.analyse([skull, screenshot], skip_unusable=True)
