"""transformers-native image-text-to-text checkpoints as node bundles (``kind hf``).

Supported today: LLaVA-1.5-style checkpoints (``model_type: llava``: a CLIP vision tower,
a two-layer GELU projector, a Llama language model), as ``llava-hf`` publishes them and as
LLaVA-style fine-tunes save them with transformers. The vision tower and the projector go
to ONNX; the language model stays in the checkpoint's own safetensors, referenced by path
and checksummed, and is read with a key mapping onto its own config (``llm_config/``), so a
7B model is never copied.

Sizes come from ``config.json`` and the tensors. ``vision_feature_layer`` (-2 in LLaVA-1.5:
the penultimate layer) is reproduced by building the CLIP tower with the layers up to that
one: its last hidden state is then the layer LLaVA reads, and the layers after it are not
run. ``vision_feature_select_strategy: default`` drops the CLS token. The image transform is
``preprocessor_config.json``'s (resize, centre crop, CLIP mean and std). LLaVA has no
findings head: the bundle's classifier is ``none``, so the prompt has no findings line and
the SR's 14 codes come from the report text alone.

Gemma 3 checkpoints (``model_type: gemma3``, MedGemma 4B): the SigLIP tower (all its
layers, no pooling head) and Gemma 3's projector (the patch grid average-pooled to
``mm_tokens_per_image``, RMS norm, matrix product) go to ONNX. The language model is the
checkpoint's own ``Gemma3ForConditionalGeneration``, read from its shards where they are: it
takes the node's image features through its own merge, because Gemma 3 lets the image tokens
of one image attend to each other both ways (``token_type_ids``) and its ``generate`` does not
start from embeddings (:func:`~inference.multimodal.assemble_feature_batch`); its torch
vision tower is released after loading. The prompt is the tokenizer's chat template with the
processor's expansion of ``<start_of_image>``; the image transform is the processor's
(stretch to the square size, mean and std 0.5). One image per study.

LLaVA-NeXT checkpoints (``model_type: llava_next``) are LLaVA's parts plus any-resolution
tiles: ``image_grid_pinpoints`` go to the bundle's preprocessing and the learned
``image_newline`` vector to its aligner config; each image is seen whole and as tiles
(:mod:`inference.anyres`), and the tiles' tokens are packed after the ONNX tower.

MAIRA-2 (``model_type: maira2``) is published with its own code and is imported only with
``trust_remote_code``; the node reproduces that code rather than running it
(:mod:`inference.importers.maira2`). Other checkpoints with their own code (CheXagent) are
refused, with the reason. Checkpoints in the original LLaVA repository's layout have their
own kind (``llava-rad``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
from inference.errors import CheckpointError, ConfigError
from inference.importers.checkpoints import (
    backbone_prefix,
    hf_config,
    load_tokenizer,
    load_weights,
    read_json,
    write_imported_bundle,
)
from inference.importers.hf_files import (
    LLAVA_LLM_KEY_MAPPING,
    find_prefix,
    image_transform,
    read_prefixed,
    weight_files,
)
from inference.importers.maira2 import MAIRA2_INSTRUCTION, REMOTE_FILES, import_maira2
from inference.vision import VisionTower

#: LLaVA-1.5's conversation (conv_vicuna_v1 in the LLaVA repository).
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
DEFAULT_INSTRUCTION = "Write the findings section of a radiology report for this chest X-ray."
#: The system text of MedGemma's model card.
GEMMA3_SYSTEM = "You are an expert radiologist."
#: Where each part's weights are, in the layouts transformers has saved LLaVA with.
VISION_PREFIXES = ("vision_tower.vision_model.", "model.vision_tower.vision_model.",
                   "model.vision_tower.", "vision_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
#: Model types whose code lives in their own repositories and that the node has not
#: reproduced (MAIRA-2's is reproduced: :mod:`inference.importers.maira2`).
UNSUPPORTED_REMOTE_CODE_TYPES = {"chexagent"}


def _kept_layers(layers: int, feature_layer: Any, config_path: Path) -> int:
    if not isinstance(feature_layer, int):
        raise CheckpointError(
            f"{config_path}: vision_feature_layer {feature_layer!r} (several layers) is not "
            "supported"
        )
    kept = layers + feature_layer + 1 if feature_layer < 0 else feature_layer
    if not 1 <= kept <= layers:
        raise CheckpointError(
            f"{config_path}: vision_feature_layer {feature_layer} is outside the tower's "
            f"{layers} layers"
        )
    return kept


def llava_config(
    vision: PretrainedConfig,
    kept_layers: int,
    skip_tokens: int,
    projector_hidden: int,
    llm_width: int,
    preprocess: PreprocessConfig,
    instruction: str,
) -> ModelConfig:
    """The bundle config of a LLaVA-1.5-style import."""
    backbone = {"model_type": "clip_vision_model", **vision.to_diff_dict()}
    backbone["num_hidden_layers"] = kept_layers
    backbone.pop("transformers_version", None)
    return ModelConfig(
        preprocess=preprocess,
        vision=VisionConfig(backbone=backbone, skip_tokens=skip_tokens),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="mlp", mlp_hidden_size=projector_hidden),
        llm_hidden_size=llm_width,
        prompt=PromptConfig(
            system_prompt=LLAVA_SYSTEM,
            image_placeholder="<image>",
            report_instruction=instruction,
            first_turn="{image}\n{context}{instruction}",
            image_tokenization="whole",
            conversation=ConversationConfig(style="two", roles=("USER", "ASSISTANT"),
                                            sep=" ", sep2="</s>"),
        ),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )


def import_hf(
    source: Path,
    out: Path,
    *,
    provenance: Provenance,
    name: str,
    version: str = "1",
    instruction: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Turn a transformers image-text-to-text checkpoint into a bundle at ``out``.

    Parameters
    ----------
    source
        The checkpoint directory (``config.json``, safetensors, tokenizer, image processor).
    out
        The new bundle directory (must not exist).
    provenance
        The model's source, licence and intended use (from its model card).
    name, version
        The bundle's identification.
    instruction
        The request the drafting step sends with each image; unset, the model's own
        (MAIRA-2's processor's) or :data:`DEFAULT_INSTRUCTION`.
    trust_remote_code
        Acknowledges a model published with its own code. MAIRA-2 is then imported (its
        code reproduced, not run: :mod:`inference.importers.maira2`); other such models are
        refused, with the reason.

    Raises
    ------
    CheckpointError
        For an unsupported model type, a missing file or key, or a shape that does not fit.
    """
    config_path = source / "config.json"
    raw = read_json(config_path)
    model_type = raw.get("model_type")
    if model_type == "maira2":
        if not trust_remote_code:
            raise CheckpointError(
                f"{config_path}: model_type 'maira2' is published with its own code "
                f"({', '.join(REMOTE_FILES)}): import it with --trust-remote-code (the node "
                "reproduces that code from the checkpoint's data and does not run it)"
            )
        return import_maira2(source, out, provenance=provenance, name=name,
                             version=version, instruction=instruction or MAIRA2_INSTRUCTION)
    if model_type in UNSUPPORTED_REMOTE_CODE_TYPES or "auto_map" in raw:
        flag = "" if trust_remote_code else " (and would need --trust-remote-code)"
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is defined by code in its own "
            f"repository{flag}; the node has no implementation of that code and does not "
            "run downloaded code"
        )
    instruction = instruction or DEFAULT_INSTRUCTION
    if model_type in ("llava", "llava_next"):
        return _import_llava(source, out, provenance, name, version, instruction)
    if model_type == "gemma3":
        return _import_gemma3(source, out, provenance, name, version, instruction)
    raise CheckpointError(
        f"{config_path}: model_type {model_type!r} is not supported by 'hf' yet "
        "(llava, llava_next, gemma3)"
    )


def _import_llava(
    source: Path, out: Path, provenance: Provenance, name: str, version: str, instruction: str
) -> Path:
    config_path = source / "config.json"
    config = hf_config(source)
    if config.projector_hidden_act != "gelu":
        raise CheckpointError(
            f"{config_path}: projector_hidden_act {config.projector_hidden_act!r}; the "
            "bundle's MLP projector uses 'gelu'"
        )
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise CheckpointError(f"{config_path}: vision_feature_select_strategy {strategy!r}")
    vision_config = config.vision_config
    if vision_config.model_type != "clip_vision_model":
        raise CheckpointError(
            f"{config_path}: vision_config.model_type {vision_config.model_type!r} (clip only)"
        )
    kept = _kept_layers(vision_config.num_hidden_layers, config.vision_feature_layer, config_path)

    files = weight_files(source)
    vision_prefix = find_prefix(files, VISION_PREFIXES, "embeddings.patch_embedding.weight", source)
    projector_prefix = find_prefix(files, PROJECTOR_PREFIXES, "linear_1.weight", source)
    vision = read_prefixed(files, vision_prefix)
    projector = read_prefixed(files, projector_prefix)
    for key in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"):
        if key not in projector:
            raise CheckpointError(f"{source}: missing key {projector_prefix + key!r}")
    llm_width = int(config.text_config.hidden_size)
    bundle_config = llava_config(
        vision_config, kept, 1 if strategy == "default" else 0,
        int(projector["linear_1.weight"].shape[0]), llm_width, image_transform(source), instruction,
    )
    if config.model_type == "llava_next":
        bundle_config = _with_tiles(bundle_config, config, files, source)
    tower = VisionTower(bundle_config).eval()
    weights = {}
    for key, value in vision.items():
        if key.startswith("encoder.layers.") and int(key.split(".")[2]) >= kept:
            continue  # after the feature layer: never run
        weights[backbone_prefix(tower) + key] = value
    for ours, theirs in (("0", "linear_1"), ("2", "linear_2")):
        for n in ("weight", "bias"):
            weights[f"aligner.mlp.{ours}.{n}"] = projector[f"{theirs}.{n}"]
    load_weights(tower, weights, lambda key: source)

    tokenizer = load_tokenizer(source)
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
    if image_token != "<image>":
        raise CheckpointError(
            f"{config_path}: image_token_index {config.image_token_id} is {image_token!r} in "
            "the tokenizer, not '<image>'"
        )
    return write_imported_bundle(
        out, config=bundle_config, tower=tower, tokenizer=tokenizer, llm=source,
        provenance=provenance, name=name, version=version,
        llm_config=config.text_config, llm_key_mapping=LLAVA_LLM_KEY_MAPPING,
    )


def _with_tiles(
    config: ModelConfig, hf: PretrainedConfig, files: Mapping[str, Path], source: Path
) -> ModelConfig:
    """A LLaVA bundle config made LLaVA-NeXT's: its grid pinpoints and learned row-end
    vector (``image_newline``)."""
    pinpoints = getattr(hf, "image_grid_pinpoints", None)
    if not pinpoints:
        raise CheckpointError(f"{source / 'config.json'}: missing key 'image_grid_pinpoints'")
    key = next((k for k in ("image_newline", "model.image_newline") if k in files), None)
    if key is None:
        raise CheckpointError(f"{source}: missing key 'image_newline'")
    newline = read_prefixed(files, key)[""]
    if tuple(newline.shape) != (config.llm_hidden_size,):
        raise CheckpointError(
            f"{files[key]}: {key!r} has shape {tuple(newline.shape)}, the language model's "
            f"width is {config.llm_hidden_size}"
        )
    data = config.to_dict()
    data["preprocess"]["grid_pinpoints"] = [[int(h), int(w)] for h, w in pinpoints]
    data["aligner"]["image_newline"] = [float(v) for v in newline.float().tolist()]
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{source / 'config.json'}: {exc}") from exc


def gemma3_config(
    vision: PretrainedConfig,
    tokens_per_image: int,
    llm_width: int,
    preprocess: PreprocessConfig,
    boi: str,
    eoi: str,
    image_token: str,
    instruction: str,
) -> ModelConfig:
    """The bundle config of a Gemma 3 import (MedGemma)."""
    backbone = {"model_type": "siglip_vision_model", **vision.to_diff_dict()}
    backbone["vision_use_head"] = False  # Gemma 3 reads the last hidden state
    backbone.pop("transformers_version", None)
    return ModelConfig(
        preprocess=preprocess,
        vision=VisionConfig(backbone=backbone),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="gemma3", max_image_tokens=tokens_per_image,
                              norm_eps=float(vision.layer_norm_eps)),
        llm_hidden_size=llm_width,
        max_images=1,
        prompt=PromptConfig(
            system_prompt=GEMMA3_SYSTEM,
            image_placeholder=boi,
            report_instruction=instruction,
            first_turn="{context}{instruction}{image}",
            image_tokenization="whole",
            image_expansion=f"\n\n{boi}{{image}}{eoi}\n\n",
            image_token=image_token,
            conversation=None,  # the tokenizer's chat template
        ),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )


def _import_gemma3(
    source: Path, out: Path, provenance: Provenance, name: str, version: str, instruction: str
) -> Path:
    config_path = source / "config.json"
    config = hf_config(source)
    vision_config = config.vision_config
    if vision_config.model_type != "siglip_vision_model":
        raise CheckpointError(
            f"{config_path}: vision_config.model_type {vision_config.model_type!r} (siglip only)"
        )
    files = weight_files(source)
    vision_prefix = find_prefix(
        files, VISION_PREFIXES, "embeddings.patch_embedding.weight", source
    )
    projector_prefix = find_prefix(
        files, PROJECTOR_PREFIXES, "mm_input_projection_weight", source
    )
    vision = {
        k: v for k, v in read_prefixed(files, vision_prefix).items()
        if not k.startswith("head.")
    }
    projector = read_prefixed(files, projector_prefix)
    if "mm_soft_emb_norm.weight" not in projector:
        raise CheckpointError(
            f"{source}: missing key {projector_prefix + 'mm_soft_emb_norm.weight'!r}"
        )

    tokenizer = load_tokenizer(source)
    token_ids = {
        "boi_token_id": config.boi_token_id, "eoi_token_id": config.eoi_token_id,
        "image_token_id": config.image_token_id,
    }
    tokens = {}
    for key, token_id in token_ids.items():
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if not isinstance(token, str):
            raise CheckpointError(
                f"{config_path}: {key} {token_id} is not a token of the tokenizer"
            )
        tokens[key] = token
    if not tokenizer.chat_template:
        raise CheckpointError(f"{source}: the tokenizer has no chat template (chat_template.jinja)")

    bundle_config = gemma3_config(
        vision_config, int(config.mm_tokens_per_image), int(config.text_config.hidden_size),
        image_transform(source, crop=False), tokens["boi_token_id"], tokens["eoi_token_id"],
        tokens["image_token_id"], instruction,
    )
    tower = VisionTower(bundle_config).eval()
    inner = backbone_prefix(tower)
    weights = {inner + key: value for key, value in vision.items()}
    weights["aligner.mm_soft_emb_norm_weight"] = projector["mm_soft_emb_norm.weight"]
    weights["aligner.mm_input_projection_weight"] = projector["mm_input_projection_weight"]
    load_weights(tower, weights, lambda key: source)
    return write_imported_bundle(
        out, config=bundle_config, tower=tower, tokenizer=tokenizer, llm=source,
        provenance=provenance, name=name, version=version,
    )


__all__ = [
    "DEFAULT_INSTRUCTION",
    "GEMMA3_SYSTEM",
    "gemma3_config",
    "import_hf",
    "llava_config",
]
