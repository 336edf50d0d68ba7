"""A tiny Libra download in the layout ``X-iZhang/libra-v1.0-7b`` and ``microsoft/rad-dino``
are published in.

Libra's repository (``libra-v1.0-7b/``) holds ``config.json``: a flat LLaMA config with
LLaVA's ``mm_*`` keys (``model_type: libra``, ``mm_projector_type: TAC``,
``mm_vision_select_layer: all``, ``mm_vision_select_feature: patch``, ``image_aspect_ratio:
pad``, ``mm_vision_tower: microsoft/rad-dino``), LLaMA's SentencePiece tokenizer, and the
whole model in ``pytorch_model-*.bin`` shards with an index: ``model.*`` and ``lm_head.*`` for
the Llama, ``model.mm_projector.*`` for the TAC (``LFE.*``, ``LFE_prior_bias``,
``cur_self_attention.*``, ``prior_self_attention.*``, ``cros_attention.*`` with
``add_bias_kv``, ``norm1-4``, ``mlp_attn.{0,3}``, ``mlp_final.{0,2,4,6}``). RAD-DINO
(``rad-dino/``) is a transformers ``Dinov2Model`` with its ``preprocessor_config.json``
(BitImageProcessor). The TAC's tensors are written by shape from Libra's module definition;
the tower and the Llama are built with transformers at tiny size (12 tower layers, as the TAC
reads RAD-DINO's 12).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

from support.published.maira2 import RAD_DINO_MEAN, RAD_DINO_STD
from support.published.radialog import write_sentencepiece_tokenizer

REPO_DIR, RAD_DINO_DIR = "libra-v1.0-7b", "rad-dino"
LAYERS, WIDTH, LLM_WIDTH, LLM_HEADS = 12, 32, 64, 4


def tac_state(gen: torch.Generator, width: int = WIDTH, llm: int = LLM_WIDTH,
              layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """Random TAC weights under Libra's names and shapes."""

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen)

    state: dict[str, torch.Tensor] = {}
    channels = [layers, layers // 2, layers // 4, 1]
    squeeze = [layers // 2, layers // 4, 1]
    for step in range(3):
        c, q = channels[step], squeeze[step]
        p = f"LFE.{2 * step}."
        state |= {p + "fc1.weight": rand(q, c, 1, 1, scale=0.5), p + "fc1.bias": rand(q),
                  p + "fc2.weight": rand(c, q, 1, 1, scale=0.5), p + "fc2.bias": rand(c)}
        state[f"LFE.{2 * step + 1}.weight"] = rand(channels[step + 1], c, 1, 1, scale=0.5)
    state["LFE_prior_bias"] = torch.tensor(0.3)
    for name in ("cur_self_attention", "prior_self_attention", "cros_attention"):
        p = f"{name}."
        state |= {p + "in_proj_weight": rand(3 * width, width), p + "in_proj_bias": rand(3 * width),
                  p + "bias_k": rand(1, 1, width), p + "bias_v": rand(1, 1, width),
                  p + "out_proj.weight": rand(width, width), p + "out_proj.bias": rand(width)}
    for index in range(1, 5):
        state[f"norm{index}.weight"] = 1 + rand(width)
        state[f"norm{index}.bias"] = rand(width)
    for index in (0, 3):
        state[f"mlp_attn.{index}.weight"] = rand(width, width)
        state[f"mlp_attn.{index}.bias"] = rand(width)
    for index, fan_in in ((0, width), (2, llm), (4, llm), (6, llm)):
        state[f"mlp_final.{index}.weight"] = rand(llm, fan_in, scale=fan_in**-0.5)
        state[f"mlp_final.{index}.bias"] = rand(llm)
    return state


def write_rad_dino(directory: Path, image_size: int) -> Dinov2Config:
    """RAD-DINO's repository at tiny size (12 layers, 8-pixel patches)."""
    config = Dinov2Config(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
                          mlp_ratio=2, image_size=image_size, patch_size=8)
    tower = Dinov2Model(config).eval()
    with torch.no_grad():  # widen the features of the default init
        for parameter in tower.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tower.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [RAD_DINO_MEAN] * 3, "image_std": [RAD_DINO_STD] * 3,
        "image_processor_type": "BitImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": image_size},
    }, indent=2))
    return config


def write_libra(root: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write ``root/libra-v1.0-7b`` and ``root/rad-dino``; return ``root``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    write_rad_dino(root / RAD_DINO_DIR, image_size)
    repo = root / REPO_DIR
    tokenizer = write_sentencepiece_tokenizer(repo)
    text = LlamaConfig(
        vocab_size=len(tokenizer) + 1,  # <im_patch>, added by Libra's loader
        hidden_size=LLM_WIDTH, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=LLM_HEADS, num_key_value_heads=LLM_HEADS, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, initializer_range=0.2, max_position_embeddings=2048,
    )
    llm = LlamaForCausalLM(text).eval()
    state = dict(llm.state_dict())
    state |= {f"model.mm_projector.{k}": v for k, v in tac_state(gen).items()}
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for index, part in enumerate((names[:half], names[half:]), start=1):
        file = f"pytorch_model-0000{index}-of-00002.bin"
        torch.save({k: state[k].contiguous() for k in part}, repo / file)
        weight_map.update(dict.fromkeys(part, file))
    (repo / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )
    config = text.to_diff_dict()
    config.update(
        architectures=["LibraLlamaForCausalLM"], model_type="libra",
        mm_vision_tower="microsoft/rad-dino", mm_projector_type="TAC", mm_hidden_size=WIDTH,
        mm_vision_select_layer="all", mm_vision_select_feature="patch",
        mm_use_im_start_end=False, mm_use_im_patch_token=True, image_aspect_ratio="pad",
        use_mm_proj=True, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False,
    )
    (repo / "config.json").write_text(json.dumps(config, indent=2))
    return root


__all__ = [
    "LAYERS",
    "LLM_HEADS",
    "RAD_DINO_DIR",
    "REPO_DIR",
    "tac_state",
    "write_libra",
    "write_rad_dino",
]
