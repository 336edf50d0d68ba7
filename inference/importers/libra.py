"""Libra (github.com/X-iZhang/Libra, hub ``X-iZhang/libra-v1.0-7b``) as a node bundle.

Libra is written in the original LLaVA layout: a Llama language model (Meditron-7B based)
saved whole with its connector, a frozen RAD-DINO tower loaded from its own repository
(``mm_vision_tower``: ``microsoft/rad-dino``), and a temporal alignment connector (TAC)
that reads every RAD-DINO layer of the current image and of a prior one.

================================================  =========================================
published file                                    bundle
================================================  =========================================
``config.json`` (flat LLaMA config, ``mm_*``)     the LLM's config (``llm_config/``), the
                                                  connector's head count
                                                  (``num_attention_heads``), the feature
                                                  selection and the image padding
``model*.safetensors`` / ``pytorch_model*.bin``   ``vision.onnx``: ``model.mm_projector.*``
                                                  (the TAC, aligner kind ``tac``); the LLM
                                                  itself, referenced and checksummed
RAD-DINO (``--vision-tower``: ``config.json``,    ``vision.onnx``: the Dinov2 tower, all its
``model.safetensors``, ``preprocessor_config``)   layers' hidden states, CLS dropped
                                                  (``patch``); the image transform
================================================  =========================================

Sizes come from the files: the tower's from its config, the connector's layer count from
``LFE.0.fc1.weight`` (RAD-DINO's 12), its widths from its tensors. Not stored in the weights:
the connector's attention heads, which Libra takes from the LLM's ``num_attention_heads``.

Prompt: Libra's ``libra_v1`` conversation (its system text, ``USER``/``ASSISTANT``, ``" "``
and ``"</s>"``), ``<image>`` then a newline then the request, tokenized around the image as
LLaVA's ``tokenizer_image_token`` does; an indication goes after the request as its demo
writes it ("Following clinical context: Indication: ..."). Images: LLaVA's ``pad``
(``image_aspect_ratio``: square with the processor's mean colour) or the processor's crop,
after Libra's DICOM loading rescales each image to its own range. Libra compares the current
image with a prior; the node hands it none yet, so the current image is its own prior, as
Libra's code does for a study without one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

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
    load_tokenizer,
    load_weights,
    read_json,
    write_imported_bundle,
)
from inference.importers.hf_files import (
    current_names,
    image_transform,
    read_prefixed,
    typed_config,
    weight_files,
)
from inference.importers.radialog_llava import llava_llm_config
from inference.vision import VisionTower

#: Libra's ``conv_libra_v1`` system text.
SYSTEM = (
    "The assistant specialized in comparing Chest X-ray images, identifying differences, and "
    "noting temporal changes."
)
#: The request of Libra's README and demo.
DEFAULT_INSTRUCTION = "Provide a detailed description of the findings in the radiology image."
INDICATION_LINE = " Following clinical context: Indication: {indication}"
PROJECTOR = "model.mm_projector."


def _tower(vision_tower: Path) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    """RAD-DINO's config and weights (its repository, as Libra loads it)."""
    config_path = vision_tower / "config.json"
    config = typed_config(read_json(config_path, "the vision tower (RAD-DINO)"), "dinov2",
                          config_path)
    published = read_prefixed(weight_files(vision_tower), "")
    return config, current_names(config, published, vision_tower)


def _connector_layers(projector: dict[str, torch.Tensor], where: Path) -> int:
    key = "LFE.0.fc1.weight"
    if key not in projector:
        raise CheckpointError(f"{where}: missing key {PROJECTOR + key!r} (a TAC connector)")
    return int(projector[key].shape[1])


def libra_config(
    vision: PretrainedConfig,
    raw: dict[str, Any],
    layers: int,
    llm_width: int,
    preprocess: PreprocessConfig,
    instruction: str,
) -> ModelConfig:
    """The bundle config of a Libra import."""
    backbone = {"model_type": "dinov2", **vision.to_diff_dict()}
    for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype"):
        backbone.pop(key, None)
    select = raw.get("mm_vision_select_feature", "patch")
    return ModelConfig(
        preprocess=preprocess,
        vision=VisionConfig(backbone=backbone, skip_tokens=1 if select == "patch" else 0,
                            all_layers=True),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="tac", attention_heads=int(raw["num_attention_heads"]),
                              feature_layers=layers),
        llm_hidden_size=llm_width,
        max_images=1,
        prompt=PromptConfig(
            system_prompt=SYSTEM,
            image_placeholder="<image>",
            report_instruction=instruction,
            first_turn="{image}\n{instruction}{context}",
            indication_line=INDICATION_LINE,
            image_tokenization="separate",  # LLaVA's tokenizer_image_token
            conversation=ConversationConfig(style="two", roles=("USER", "ASSISTANT"),
                                            sep=" ", sep2="</s>"),
        ),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )


def import_libra(
    source: Path,
    out: Path,
    *,
    vision_tower: Path,
    provenance: Provenance,
    name: str = "libra",
    version: str = "1",
    instruction: str = DEFAULT_INSTRUCTION,
) -> Path:
    """Turn a Libra download into a bundle at ``out`` (written whole, or not at all).

    Parameters
    ----------
    source
        The hub repository's files (``config.json``, the weights with ``model.mm_projector.*``,
        the tokenizer).
    out
        The new bundle directory (must not exist).
    vision_tower
        RAD-DINO's Hugging Face directory (``microsoft/rad-dino``, ``mm_vision_tower``).
    provenance
        The model's source, licence and intended use (from its model card).
    name, version
        The bundle's identification.
    instruction
        The request after the image (Libra's findings request by default).

    Raises
    ------
    CheckpointError
        For a missing file or key, a connector or layout other than Libra's, or a shape that
        does not fit, naming the file and the key.
    """
    config_path = source / "config.json"
    raw = read_json(config_path)
    if raw.get("mm_projector_type") != "TAC":
        raise CheckpointError(
            f"{config_path}: mm_projector_type {raw.get('mm_projector_type')!r}; the libra "
            "kind reads Libra's TAC connector"
        )
    if raw.get("mm_vision_select_layer") != "all":
        raise CheckpointError(
            f"{config_path}: mm_vision_select_layer {raw.get('mm_vision_select_layer')!r}; "
            "the TAC reads 'all' layers"
        )
    if raw.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise CheckpointError(
            f"{config_path}: mm_vision_select_feature {raw['mm_vision_select_feature']!r}"
        )
    if raw.get("mm_use_im_start_end"):
        raise CheckpointError(f"{config_path}: mm_use_im_start_end (image start/end tokens) "
                              "is not supported")
    heads = raw.get("num_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        raise CheckpointError(f"{config_path}: missing key 'num_attention_heads'")

    vision, tower_weights = _tower(vision_tower)
    if vision.hidden_size % heads:
        raise CheckpointError(
            f"{config_path}: num_attention_heads {heads} (the connector's heads) does not "
            f"divide the tower's width {vision.hidden_size}"
        )
    projector = read_prefixed(weight_files(source), PROJECTOR)
    layers = _connector_layers(projector, source)
    if layers != vision.num_hidden_layers:
        raise CheckpointError(
            f"{source}: key {PROJECTOR + 'LFE.0.fc1.weight'!r} reads {layers} layers, the "
            f"tower in {vision_tower} has {vision.num_hidden_layers}"
        )
    llm_config = llava_llm_config(source)
    llm_width = int(llm_config.hidden_size)
    preprocess = replace(image_transform(vision_tower), stretch_display=True)
    if raw.get("image_aspect_ratio") == "pad":  # LLaVA's expand2square, with the mean colour
        preprocess = replace(preprocess, resize_mode="pad", pad_fill="mean")
    config = libra_config(vision, raw, layers, llm_width, preprocess, instruction)
    tower = VisionTower(config).eval()
    inner = backbone_prefix(tower)
    weights = {inner + k: v for k, v in tower_weights.items()}
    weights |= {f"aligner.{k}": v for k, v in projector.items()}
    load_weights(tower, weights,
                 lambda key: source if key.startswith("aligner.") else vision_tower)

    tokenizer = load_tokenizer(source)
    if raw.get("mm_use_im_patch_token", True):  # Libra's loader adds it before resizing
        tokenizer.add_tokens(["<im_patch>"], special_tokens=True)
    if len(tokenizer) > int(llm_config.vocab_size):
        raise CheckpointError(
            f"{config_path}: vocab_size {llm_config.vocab_size} is smaller than the "
            f"tokenizer's {len(tokenizer)} tokens"
        )
    return write_imported_bundle(
        out, config=config, tower=tower, tokenizer=tokenizer, llm=source,
        provenance=provenance, name=name, version=version, llm_config=llm_config,
    )


__all__ = ["DEFAULT_INSTRUCTION", "SYSTEM", "import_libra", "libra_config"]
