"""A tiny LLaVA-NeXT checkpoint in the layout of the ``llava-hf`` repositories on the hub.

``llava-hf/llava-v1.6-vicuna-7b-hf`` holds what a LLaVA-1.5 repository holds (see
:mod:`support.published.llava`), with ``model_type: llava_next``, ``image_grid_pinpoints`` in
``config.json`` and ``preprocessor_config.json`` (LlavaNextImageProcessor), and one more
tensor, ``image_newline`` (the language model's width), the learned vector that ends each row
of tile tokens. The model is built with transformers at tiny size (32-pixel tiles of 8-pixel
patches: 16 tokens a tile) and its weights are renamed to that published layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from support.published.llava import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_TOKEN,
    published_key,
    tiny_llava_parts,
)

TILE = 32
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]


def write_llava_next_hf(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny LLaVA-NeXT (3-layer CLIP, 2-layer Llama) and return its directory."""
    torch.manual_seed(seed)
    tokenizer, vision, text = tiny_llava_parts(TILE)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_grid_pinpoints=PINPOINTS,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # CLIP's default init keeps the features near zero: widen them
        for name, parameter in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
            if "image_newline" in name:
                parameter.copy_(torch.randn_like(parameter))
    model.save_pretrained(str(directory))
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    save_file({published_key(k): v.contiguous() for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": TILE, "width": TILE}, "do_center_crop": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "do_pad": True,
        "do_convert_rgb": True, "image_grid_pinpoints": PINPOINTS,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_processor_type": "LlavaNextImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": TILE},
    }, indent=2))
    return directory


__all__ = ["PINPOINTS", "TILE", "write_llava_next_hf"]
