"""A tiny LLaVA-1.5 checkpoint in the layout of the ``llava-hf`` repositories on the hub.

``llava-hf/llava-1.5-7b-hf`` (and LLaVA-style fine-tunes saved with transformers, such as
LLaVA-Rad's exports) hold ``config.json`` (``model_type: llava`` with a CLIP vision config and
a Llama text config), ``preprocessor_config.json`` (CLIPImageProcessor), the tokenizer with an
``<image>`` token, and safetensors whose keys are ``vision_tower.vision_model.*``,
``multi_modal_projector.linear_{1,2}.*``, ``language_model.model.*`` and
``language_model.lm_head.weight``. The model is built with transformers at tiny size and its
weights are renamed to that published layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from support.published.radialog import vicuna_tokenizer

IMAGE_TOKEN = "<image>"
#: CLIP's normalisation, as CLIPImageProcessor writes it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def published_key(key: str) -> str:
    """A transformers 5 state-dict key under the name the hub's LLaVA-family files use."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("language_model.model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("vision_tower.vision_model.", "vision_tower.vision_model."),
        ("vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def tiny_llava_parts(
    image_size: int,
) -> tuple[PreTrainedTokenizerFast, CLIPVisionConfig, LlamaConfig]:
    """The tokenizer (with ``<image>`` and a pad token), a 3-layer CLIP config with 8-pixel
    patches and a 2-layer Llama config of the tiny LLaVA-family checkpoints."""
    tokenizer = vicuna_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=image_size, patch_size=8, projection_dim=16,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
        max_position_embeddings=2048,
    )
    return tokenizer, vision, text


def write_llava_hf(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny LLaVA-1.5 (3-layer CLIP, 2-layer Llama) and return its directory."""
    torch.manual_seed(seed)
    tokenizer, vision, text = tiny_llava_parts(image_size)
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=(image_size // 8) ** 2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # CLIP's default init keeps the features near zero: widen them
        for name, parameter in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(str(directory))
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    save_file({published_key(k): v.contiguous() for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_processor_type": "CLIPImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": image_size},
    }, indent=2))
    return directory


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_TOKEN",
    "published_key",
    "tiny_llava_parts",
    "write_llava_hf",
]
