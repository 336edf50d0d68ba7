"""Vision tower: backbones x aligners, and ONNX Runtime vs torch parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference import ModelConfig, OnnxVisionRunner, VisionTower, export_vision_onnx
from inference.config import AlignerConfig
from inference.tiny import tiny_config

PARITY_TOLERANCE = 1e-4

# (backbone, aligner): every aligner on ViT, every other backbone with one aligner.
CASES = [
    ("vit", "qformer"),
    ("vit", "linear"),
    ("vit", "mlp"),
    ("resnet", "qformer"),
    ("swin", "linear"),
    ("dinov2", "mlp"),
]


def _tower(backbone: str, aligner: str) -> tuple[ModelConfig, VisionTower]:
    torch.manual_seed(0)
    config = tiny_config(aligner, backbone)  # type: ignore[arg-type]
    return config, VisionTower(config).eval()


@pytest.mark.parametrize(("backbone", "aligner"), CASES)
def test_onnx_runtime_matches_torch(tmp_path: Path, backbone: str, aligner: str) -> None:
    config, tower = _tower(backbone, aligner)
    path = tmp_path / "vision.onnx"
    export_vision_onnx(tower, path, config.preprocess.image_size, config.preprocess.channels)
    runner = OnnxVisionRunner(path)
    for batch in (1, 3):  # the batch axis is dynamic
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():
            probs, embeds = tower(torch.from_numpy(pixels))
        onnx_probs, onnx_embeds = runner(pixels)
        assert onnx_probs.shape == (batch, 14)
        assert onnx_embeds.shape == (batch, tower.num_image_tokens, config.llm_hidden_size)
        assert np.abs(onnx_probs - probs.numpy()).max() < PARITY_TOLERANCE
        assert np.abs(onnx_embeds - embeds.numpy()).max() < PARITY_TOLERANCE
        # I/O binding writes the same outputs straight into torch tensors (on a GPU: into
        # GPU memory, for the LLM), whatever sizes the exporter left symbolic.
        bound_probs, bound_embeds = runner.run_on(pixels, torch.device("cpu"))
        assert torch.equal(bound_probs, torch.from_numpy(onnx_probs))
        assert torch.equal(bound_embeds, torch.from_numpy(onnx_embeds))


def test_qformer_gives_32_image_tokens_and_is_bidirectional() -> None:
    config, tower = _tower("vit", "qformer")
    assert tower.num_image_tokens == 32
    features = tower.encoder(torch.randn(1, 3, 64, 64))
    aligner = tower.aligner
    with torch.no_grad():
        before = aligner.query_outputs(features)[0, 0].clone()
        # change only the LAST query (randomly: a constant shift would vanish in LayerNorm)
        aligner.query_tokens[0, -1] += torch.randn_like(aligner.query_tokens[0, -1])
        after = aligner.query_outputs(features)[0, 0]
    # In a causal model the first query could not see the last one.
    assert not torch.allclose(before, after)


def test_patch_aligners_pool_to_max_image_tokens() -> None:
    config = tiny_config("linear", "swin")
    config.aligner = AlignerConfig(kind="linear", max_image_tokens=5)
    tower = VisionTower(config)
    _, embeds = tower(torch.randn(2, 3, 64, 64))
    assert embeds.shape == (2, 5, 64) and tower.num_image_tokens == 5


def test_probabilities_are_probabilities() -> None:
    _, tower = _tower("vit", "mlp")
    with torch.no_grad():
        probs, _ = tower(torch.randn(4, 3, 64, 64) * 10)
    assert probs.shape == (4, 14)
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0


def test_pretrained_backbone_from_a_local_directory_round_trips(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    from inference import load_vision_tower
    from inference.packaging import save_vision_weights

    backbone = dict(tiny_config().vision.backbone)
    model_type = backbone.pop("model_type")
    pretrained = AutoModel.from_config(AutoConfig.for_model(model_type, **backbone))
    pretrained.save_pretrained(tmp_path / "vit")
    config = tiny_config()
    config.vision.backbone = {"model_type": "vit"}  # replaced by the directory's config
    tower = VisionTower.from_pretrained_backbone(config, tmp_path / "vit").eval()
    assert config.vision.backbone["hidden_size"] == 32
    for name, value in pretrained.state_dict().items():
        assert torch.equal(tower.encoder.backbone.state_dict()[name], value)
    save_vision_weights(tower, tmp_path / "vision.safetensors")
    rebuilt = load_vision_tower(
        ModelConfig.from_dict(config.to_dict()), tmp_path / "vision.safetensors"
    )
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(pixels)[1], tower(pixels)[1])


def test_meanmax_pooling_sees_a_single_hot_patch_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config("linear", "resnet")
    config.classifier.pooling = "meanmax"
    tower = VisionTower(ModelConfig.from_dict(config.to_dict())).eval()
    features = torch.zeros(1, 16, tower.encoder.hidden_size)
    hot = features.clone()
    hot[0, 3, 0] = 16.0  # one patch lights up: the mean moves by 1, the max by 16
    pooled = tower.classifier.norm.normalized_shape[0]
    assert pooled == 2 * tower.encoder.hidden_size
    assert not torch.equal(tower.classifier(features), tower.classifier(hot))
    path = tmp_path / "vision.onnx"
    export_vision_onnx(tower, path, config.preprocess.image_size, config.preprocess.channels)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        probs, _ = tower(torch.from_numpy(pixels))
    onnx_probs, _ = OnnxVisionRunner(path)(pixels)
    assert np.abs(onnx_probs - probs.numpy()).max() < PARITY_TOLERANCE
