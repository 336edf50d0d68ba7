"""LLaVA-Rad (github.com/microsoft/LLaVA-Rad, hub ``microsoft/llava-rad``) as a node bundle.

LLaVA-Rad is written with the original LLaVA code: a LoRA release over Vicuna-7B v1.5 (its
``model_base``), a BiomedCLIP-CXR vision tower trained with open_clip (a timm Vision
Transformer), and an ``mlp2x_gelu`` projector.

================================================  =========================================
published file                                    bundle
================================================  =========================================
``biomedclipcxr_518.json`` (open_clip config)     the tower's geometry and normalisation;
                                                  the head count from ``timm_model_name``
``biomedclipcxr_518_checkpoint.pt``               ``vision.onnx``: ``visual.trunk.*``, the
(open_clip training checkpoint)                   timm ViT, as transformers' ViT with its
                                                  fused ``qkv`` split; cut after the layer
                                                  ``mm_vision_select_layer`` reads, the CLS
                                                  token dropped (``patch`` features)
``non_lora_trainables.bin``                       ``vision.onnx``: ``model.mm_projector.*``
``adapter_model.*``, ``adapter_config.json``      ``adapters/instruct`` in today's peft
                                                  format
``config.json`` (flat LLaMA config, ``mm_*``)     the feature layer, projector type and
                                                  image-token layout it names
Vicuna-7B v1.5 (``--llm``)                        referenced and checksummed
================================================  =========================================

Not stored anywhere in the weights: the tower's head count (read from the timm model name in
the open_clip config) and its LayerNorm epsilon (timm's ViT default, 1e-6). The tower's own
final norm and open_clip's projection head are not run: LLaVA-Rad reads a hidden state. The
image transform is open_clip's evaluation transform: resize the short side to the tower's
size, centre crop, the config's mean and std (CLIP's when it names none).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import ViTConfig

from inference.bundle import Provenance
from inference.config import (
    AlignerConfig,
    ClassifierConfig,
    ConversationConfig,
    GenerationConfig,
    ModelConfig,
    PreprocessConfig,
    PromptConfig,
    VisionConfig,
)
from inference.errors import CheckpointError
from inference.importers.checkpoints import (
    backbone_prefix,
    find_file,
    load_checkpoint,
    load_weights,
    need,
    read_json,
    state_dict,
)
from inference.importers.radialog_llava import (
    llava_llm_config,
    non_lora_weights,
    write_lora_bundle,
)
from inference.vision import VisionTower

#: LLaVA's conv_vicuna_v1, which LLaVA-Rad's evaluation uses (``--conv_mode v1``).
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)
DEFAULT_INSTRUCTION = "Describe the findings of the chest x-ray."
#: CLIP's normalisation, open_clip's default.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: Attention heads of timm's ViT sizes (not stored in the weights).
TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
#: timm ViT parts the node's ViT has no place for.
UNSUPPORTED = {"reg_token": "register tokens", "norm_pre.weight": "a pre-norm",
               "blocks.0.ls1.gamma": "layer scale"}
TRUNK = "visual.trunk."

DEFAULT_PROVENANCE = Provenance(
    source="LLaVA-Rad (microsoft/llava-rad), imported by dicom_node model import",
    licence=(
        "Microsoft Research License Terms: non-commercial research only, no redistribution; "
        "also subject to the LLaMA, Vicuna and GPT-4 terms"
    ),
    intended_use=(
        "Research use only; not for direct clinical care or any clinical decision making."
    ),
)


def _open_clip_config(source: Path) -> tuple[Path, dict[str, Any]]:
    path = find_file(source, ("biomedclipcxr_*.json", "*clip*.json"), "the open_clip config")
    data = read_json(path, "the vision tower's open_clip config")
    vision = data.get("vision_cfg")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: missing key 'vision_cfg'")
    for key in ("timm_model_name", "image_size"):
        if key not in vision:
            raise CheckpointError(f"{path}: missing key 'vision_cfg.{key}'")
    return path, vision


def _heads(name: str, path: Path) -> int:
    match = re.match(r"^(?:vit|deit)_(tiny|small|base|large|huge)_", name)
    if match is None:
        raise CheckpointError(
            f"{path}: vision_cfg.timm_model_name {name!r} is not a timm ViT the importer knows "
            f"({', '.join(TIMM_HEADS)})"
        )
    return TIMM_HEADS[match.group(1)]


def _trunk(path: Path) -> dict[str, torch.Tensor]:
    """The timm ViT's tensors of an open_clip checkpoint (``state_dict``, ``module.``)."""
    checkpoint = load_checkpoint(path)
    wrapped = isinstance(checkpoint, dict) and "state_dict" in checkpoint
    container = "state_dict" if wrapped else None
    raw = state_dict(checkpoint, path, container)
    trunk = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if key.startswith(TRUNK):
            trunk[key[len(TRUNK):]] = value
    if not trunk:
        raise CheckpointError(f"{path}: missing key '{TRUNK}patch_embed.proj.weight'")
    for key, what in UNSUPPORTED.items():
        if key in trunk:
            raise CheckpointError(f"{path}: {TRUNK + key!r}: a ViT with {what} is not supported")
    return trunk


def vit_from_timm(
    trunk: dict[str, torch.Tensor], heads: int, image_size: int, select_layer: int, path: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """transformers ViT config (as ``vision.backbone``) and weights for a timm ViT (its
    fused ``qkv`` split; the names of transformers 5's ``ViTModel``).

    Parameters
    ----------
    trunk
        The timm model's state dict.
    heads
        Its attention heads.
    image_size
        Its input side.
    select_layer
        The hidden state read (LLaVA's ``mm_vision_select_layer``: 0 is the embedding
        output, ``i`` the output of block ``i``, negative from the end); the blocks after it
        are left out.
    path
        The checkpoint, for the errors.
    """
    patch = need(trunk, "patch_embed.proj.weight", path)
    width, _, side, _ = patch.shape
    positions = need(trunk, "pos_embed", path)
    grid = image_size // side
    if positions.shape[1] != grid * grid + 1:
        raise CheckpointError(
            f"{path}: key {TRUNK + 'pos_embed'!r} has {positions.shape[1]} positions; "
            f"{image_size}-pixel images of {side}-pixel patches need {grid * grid + 1}"
        )
    layers = 1 + max(int(k.split(".")[1]) for k in trunk if k.startswith("blocks."))
    kept_layers = select_layer + layers + 1 if select_layer < 0 else select_layer
    if not 1 <= kept_layers <= layers:
        raise CheckpointError(f"{path}: the tower has {layers} blocks, {kept_layers} wanted")
    backbone = ViTConfig(
        hidden_size=int(width), num_hidden_layers=kept_layers, num_attention_heads=heads,
        intermediate_size=int(need(trunk, "blocks.0.mlp.fc1.weight", path).shape[0]),
        image_size=image_size, patch_size=int(side), num_channels=3, qkv_bias=True,
        layer_norm_eps=1e-6, hidden_act="gelu",
    ).to_diff_dict()
    backbone.pop("transformers_version", None)
    weights = {
        "embeddings.cls_token": need(trunk, "cls_token", path),
        "embeddings.position_embeddings": positions,
        "embeddings.patch_embeddings.projection.weight": patch,
        "embeddings.patch_embeddings.projection.bias": need(trunk, "patch_embed.proj.bias", path),
        "layernorm.weight": need(trunk, "norm.weight", path),
        "layernorm.bias": need(trunk, "norm.bias", path),
    }
    for i in range(kept_layers):
        block, ours = f"blocks.{i}.", f"layers.{i}."
        qkv_w = need(trunk, block + "attn.qkv.weight", path).chunk(3)
        qkv_b = need(trunk, block + "attn.qkv.bias", path).chunk(3)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            weights[f"{ours}attention.{name}.weight"] = qkv_w[j]
            weights[f"{ours}attention.{name}.bias"] = qkv_b[j]
        for theirs, mine in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                             ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"),
                             ("mlp.fc2", "mlp.fc2")):
            for n in ("weight", "bias"):
                weights[f"{ours}{mine}.{n}"] = need(trunk, f"{block}{theirs}.{n}", path)
    return {"model_type": "vit", **backbone}, weights


def import_llava_rad(
    source: Path,
    out: Path,
    *,
    llm: Path,
    name: str = "llava-rad",
    version: str = "1",
    provenance: Provenance = DEFAULT_PROVENANCE,
    instruction: str = DEFAULT_INSTRUCTION,
) -> Path:
    """Turn a LLaVA-Rad download into a bundle at ``out`` (written whole, or not at all).

    Parameters
    ----------
    source
        The hub repository's files (``config.json``, the adapter,
        ``non_lora_trainables.bin``, the open_clip config and checkpoint).
    out
        The new bundle directory (must not exist).
    llm
        Vicuna-7B v1.5 (referenced, not copied).
    instruction
        The request sent with each image (LLaVA-Rad's evaluation asks for the findings).

    Raises
    ------
    CheckpointError
        For a missing file or key, a shape that does not fit, or a layout it cannot run.
    """
    config_path = source / "config.json"
    model_config = read_json(config_path)
    if model_config.get("mm_use_im_start_end"):
        raise CheckpointError(f"{config_path}: mm_use_im_start_end (image start/end tokens) "
                              "is not supported")
    if model_config.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise CheckpointError(f"{config_path}: mm_projector_type "
                              f"{model_config.get('mm_projector_type')!r} (mlp2x_gelu only)")
    select = model_config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise CheckpointError(f"{config_path}: mm_vision_select_feature {select!r}")
    layer = model_config.get("mm_vision_select_layer")
    if not isinstance(layer, int):
        raise CheckpointError(f"{config_path}: missing key 'mm_vision_select_layer'")

    clip_path, clip = _open_clip_config(source)
    checkpoint = find_file(source, ("biomedclipcxr_*checkpoint*.pt", "*checkpoint*.pt"),
                           "the vision tower's open_clip checkpoint")
    backbone, tower_weights = vit_from_timm(
        _trunk(checkpoint), _heads(str(clip["timm_model_name"]), clip_path),
        int(clip["image_size"]), layer, checkpoint,
    )
    state, non_lora = non_lora_weights(source)
    projector = {f"{i}.{n}": need(state, f"model.mm_projector.{i}.{n}", non_lora)
                 for i in (0, 2) for n in ("weight", "bias")}
    if projector["0.weight"].shape[1] != backbone["hidden_size"]:
        raise CheckpointError(
            f"{non_lora}: key 'model.mm_projector.0.weight' takes "
            f"{projector['0.weight'].shape[1]} inputs, the tower gives {backbone['hidden_size']}"
        )
    llm_config = llava_llm_config(llm)
    llm_width = int(projector["2.weight"].shape[0])
    if llm_config.hidden_size != llm_width:
        raise CheckpointError(
            f"{non_lora}: key 'model.mm_projector.2.weight' projects to {llm_width}, the LLM in "
            f"{llm} is {llm_config.hidden_size} wide"
        )
    mean = tuple(float(v) for v in clip.get("image_mean") or OPENAI_MEAN)
    std = tuple(float(v) for v in clip.get("image_std") or OPENAI_STD)
    config = ModelConfig(
        preprocess=PreprocessConfig(image_size=int(clip["image_size"]), resize_mode="crop",
                                    voi="dicom", channels=3, mean=mean, std=std),
        vision=VisionConfig(backbone=backbone, skip_tokens=1 if select == "patch" else 0,
                            feature_layer=-1),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="mlp", mlp_hidden_size=int(projector["0.weight"].shape[0])),
        llm_hidden_size=llm_width,
        prompt=PromptConfig(
            system_prompt=SYSTEM,
            image_placeholder="<image>",
            report_instruction=instruction,
            first_turn="{image}\n{context}{instruction}",
            image_tokenization="separate",  # LLaVA's tokenizer_image_token
            conversation=ConversationConfig(style="two", roles=("USER", "ASSISTANT"),
                                            sep=" ", sep2="</s>"),
        ),
        generation=GenerationConfig(max_new_tokens=256, num_beams=1),
    )
    tower = VisionTower(config).eval()
    inner = backbone_prefix(tower)
    weights = {inner + k: v for k, v in tower_weights.items()}
    # transformers' ViTModel carries a pooler that timm's ViT has not: it is never run
    # (the features are a hidden state), so it is kept at zero.
    for key, value in tower.state_dict().items():
        if key.startswith(inner + "pooler."):
            weights[key] = torch.zeros_like(value)
    weights |= {f"aligner.mlp.{k}": v for k, v in projector.items()}
    load_weights(tower, weights,
                 lambda key: non_lora if key.startswith("aligner.") else checkpoint)

    return write_lora_bundle(out, source, config=config, tower=tower, llm=llm,
                             llm_config=llm_config, provenance=provenance, name=name,
                             version=version)


__all__ = ["DEFAULT_INSTRUCTION", "import_llava_rad", "vit_from_timm"]
