"""Model config: JSON round trip and errors that name the key."""

from __future__ import annotations

import json

import pytest

from inference import ConfigError, ModelConfig, PreprocessConfig
from inference.tiny import tiny_config
from report_language import CHEXPERT_LABELS


def test_config_round_trips_through_json() -> None:
    config = tiny_config("mlp", "resnet")
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.classifier.labels == CHEXPERT_LABELS
    assert isinstance(restored.preprocess.mean, tuple)


def test_chexpert_has_the_fourteen_labels() -> None:
    assert len(CHEXPERT_LABELS) == 14
    assert {"No Finding", "Pleural Effusion", "Support Devices"} <= set(CHEXPERT_LABELS)


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"aligner": {"kind": "perceiver"}}, "aligner.kind"),
        ({"preprocess": {"image_size": "large"}}, "preprocess.image_size"),
        ({"preprocess": {"windowing": "dicom"}}, "preprocess.windowing"),
        ({"generation": {"num_beams": 0}}, "generation.num_beams"),
        ({"llm_hidden": 64}, "llm_hidden"),
    ],
)
def test_bad_config_names_the_key(patch: dict, key: str) -> None:
    data = tiny_config().to_dict()
    for section, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section].update(value)
        else:
            data[section] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig.from_dict(data)


def test_channel_count_must_match_the_backbone() -> None:
    data = tiny_config().to_dict()
    data["preprocess"].update(channels=1, mean=[0.5], std=[0.5])
    with pytest.raises(ConfigError, match="num_channels"):
        ModelConfig.from_dict(data)


def test_normalisation_needs_one_value_per_channel() -> None:
    with pytest.raises(ConfigError, match="preprocess.mean"):
        PreprocessConfig(channels=3, mean=(0.5,), std=(0.5, 0.5, 0.5))
