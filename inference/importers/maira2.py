"""MAIRA-2 (``microsoft/maira-2``) as a node bundle, without running its repository's code.

MAIRA-2 is published with its own Python files (``configuration_maira2.py``,
``modeling_maira2.py``, ``processing_maira2.py``; ``config.json`` maps them through
``auto_map``), so it is imported only when the caller passes ``trust_remote_code``. The node
still does not execute those files: under transformers 5 its modeling file no longer runs
(it builds the tower, projector and language model on the model itself, where 5.x's LLaVA
forward looks for them on ``self.model``), and a node has no business running downloaded
code. What the files define is reproduced from the checkpoint's data:

* **Vision**: a DINOv2 tower read as transformers' ``Dinov2Backbone`` with
  ``apply_layernorm``: the features are the hidden state of the stage named by
  ``out_features[vision_feature_layer]`` with the backbone's final LayerNorm applied. The
  bundle's tower is ``Dinov2Model`` cut after that stage, whose last hidden state is exactly
  that (same weights, same names). ``vision_feature_select_strategy: default`` drops the CLS
  token. To ONNX with the projector.
* **Projector**: ``projector_n_layers`` linear layers with ``projector_hidden_act`` (GELU)
  between them (``multi_modal_projector.layers.{0,2,4,...}``), the aligner kind ``mlp`` with
  ``mlp_layers``.
* **Language model**: the ``llama`` text config, read from the checkpoint's shards with
  LLaVA's key mapping (``language_model.*``); not copied.
* **Image transform**: ``preprocessor_config.json``'s (shortest edge, centre crop, RAD-DINO
  mean and std), after the processor's own step of rescaling every image to its minimum and
  maximum (``preprocess.stretch_display``).
* **Prompt**: the processor's reporting prompt for a study with a current frontal image and
  neither lateral nor prior (the node hands the model the frontal image only): "Given the
  current frontal image only<image> Provide a structured description of the findings ...
  INDICATION: ... TECHNIQUE: N/A COMPARISON: N/A", sent as content parts through the
  checkpoint's own chat template (``chat_template.json``, data, not code), the tokenizer's BOS
  first, as the processor tokenizes it. Missing sections are "N/A", as the processor writes
  them. Grounded reporting (boxes) is not asked for.

Not stored in the files and not needed: nothing; every size comes from ``config.json`` and
the tensors' shapes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from inference.bundle import Provenance
from inference.config import (
    AlignerConfig,
    ClassifierConfig,
    GenerationConfig,
    ModelConfig,
    PreprocessConfig,
    PromptConfig,
    VisionConfig,
)
from inference.errors import CheckpointError, InferenceError
from inference.importers.checkpoints import (
    backbone_prefix,
    load_tokenizer,
    load_weights,
    read_json,
    write_imported_bundle,
)
from inference.importers.hf_files import (
    LLAVA_LLM_KEY_MAPPING,
    current_names,
    find_prefix,
    image_transform,
    read_prefixed,
    typed_config,
    weight_files,
)
from inference.prompt import PromptBuilder
from inference.vision import VisionTower

#: The processor's request for findings, without grounding.
MAIRA2_INSTRUCTION = (
    "Provide a structured description of the findings in the radiology study in comparison "
    "to the prior frontal image."
)
#: The processor's user message for a current frontal image alone; the node sends neither a
#: technique nor a comparison section.
MAIRA2_FIRST_TURN = (
    "Given the current frontal image only{image} {context}{instruction} "
    "INDICATION: {indication} TECHNIQUE: N/A COMPARISON: N/A"
)
#: The files of MAIRA-2's own code, named in the notice and the errors.
REMOTE_FILES = ("configuration_maira2.py", "modeling_maira2.py", "processing_maira2.py")
REMOTE_CODE_NOTICE = (
    "MAIRA-2 is published with its own code ({files}); imported with --trust-remote-code. "
    "The node does not run that code: it reproduces its DINOv2 backbone features, "
    "{layers}-layer projector, Llama language model, image transform and reporting prompt "
    "(frontal image only, no grounding) from the checkpoint's data."
)

def is_maira2(source: Path) -> bool:
    """Whether ``source`` holds a MAIRA-2 checkpoint (``model_type: maira2``)."""
    try:
        return read_json(source / "config.json").get("model_type") == "maira2"
    except CheckpointError:
        return False


def remote_code_notice(source: Path) -> str:
    """What the import of the MAIRA-2 checkpoint in ``source`` says about its code."""
    layers = read_json(source / "config.json").get("projector_n_layers", "?")
    return REMOTE_CODE_NOTICE.format(files=", ".join(REMOTE_FILES), layers=layers)


def _feature_stage(vision: PretrainedConfig, raw: dict[str, Any], path: Path) -> int:
    """How many tower layers feed the features: the stage ``feature_maps[vision_feature_layer]``
    names (``stage{k}`` is the output of layer k; the backbone's LayerNorm follows it)."""
    if not vision.apply_layernorm:
        raise CheckpointError(
            f"{path}: vision_config.apply_layernorm is false; only the normed features "
            "MAIRA-2 publishes are supported"
        )
    if vision.reshape_hidden_states:
        raise CheckpointError(
            f"{path}: vision_config.reshape_hidden_states is true; MAIRA-2 reads the token "
            "sequence (false)"
        )
    stages = list(vision.out_features or [])
    layer = raw.get("vision_feature_layer", -1)
    if not isinstance(layer, int) or not -len(stages) <= layer < len(stages):
        raise CheckpointError(
            f"{path}: vision_feature_layer {layer!r} does not index out_features {stages}"
        )
    stage = stages[layer]
    if not stage.startswith("stage") or not stage[5:].isdigit() or not int(stage[5:]):
        raise CheckpointError(f"{path}: out_features names {stage!r}, not a layer's stage")
    return int(stage[5:])


def maira2_config(
    vision: PretrainedConfig,
    layers: int,
    skip_tokens: int,
    projector_layers: int,
    llm_width: int,
    preprocess: PreprocessConfig,
    instruction: str,
) -> ModelConfig:
    """The bundle config of a MAIRA-2 import."""
    backbone = {"model_type": "dinov2", **vision.to_diff_dict()}
    backbone["num_hidden_layers"] = layers
    for key in ("out_features", "out_indices", "stage_names", "transformers_version"):
        backbone.pop(key, None)  # backbone settings; the tower is a Dinov2Model
    return ModelConfig(
        preprocess=preprocess,
        vision=VisionConfig(backbone=backbone, skip_tokens=skip_tokens),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="mlp", mlp_hidden_size=llm_width, mlp_layers=projector_layers),
        llm_hidden_size=llm_width,
        max_images=1,
        prompt=PromptConfig(
            system_prompt=None,  # the chat template holds MAIRA-2's system text
            image_placeholder="<image>",
            report_instruction=instruction,
            first_turn=MAIRA2_FIRST_TURN,
            no_indication_text="N/A",
            image_tokenization="whole",
            message_parts=True,
            add_bos=True,
            conversation=None,
        ),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )


def _chat_template(source: Path) -> str:
    """The processor's chat template: ``chat_template.json`` or ``chat_template.jinja``."""
    jinja = source / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    path = source / "chat_template.json"
    template = read_json(path, "the chat template").get("chat_template")
    if not isinstance(template, str) or not template.strip():
        raise CheckpointError(f"{path}: missing key 'chat_template'")
    return template


def import_maira2(
    source: Path,
    out: Path,
    *,
    provenance: Provenance,
    name: str,
    version: str = "1",
    instruction: str = MAIRA2_INSTRUCTION,
) -> Path:
    """Turn a MAIRA-2 checkpoint into a bundle at ``out`` (its own code is not run).

    Parameters
    ----------
    source
        The checkpoint directory as ``microsoft/maira-2`` publishes it.
    out
        The new bundle directory (must not exist).
    provenance
        The model's source, licence and intended use (MAIRA-2: research use only).
    name, version
        The bundle's identification.
    instruction
        The request after the image (the processor's findings request by default).

    Raises
    ------
    CheckpointError
        For a missing file or key, a configuration MAIRA-2 does not use, or a shape that does
        not fit, naming the file and the key.
    """
    config_path = source / "config.json"
    raw = read_json(config_path)
    vision = typed_config(raw.get("vision_config"), "dinov2", config_path, "vision_config")
    text = typed_config(raw.get("text_config"), "llama", config_path, "text_config")
    layers = _feature_stage(vision, raw, config_path)
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise CheckpointError(f"{config_path}: vision_feature_select_strategy {strategy!r}")
    projector_layers = raw.get("projector_n_layers")
    if not isinstance(projector_layers, int) or projector_layers < 1:
        raise CheckpointError(f"{config_path}: missing key 'projector_n_layers' (>= 1)")
    if raw.get("projector_hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{config_path}: projector_hidden_act {raw['projector_hidden_act']!r}; the "
            "bundle's MLP projector uses 'gelu'"
        )

    files = weight_files(source)
    vision_prefix = find_prefix(
        files, ("vision_tower.", "model.vision_tower."),
        "embeddings.patch_embeddings.projection.weight", source,
    )
    projector_prefix = find_prefix(
        files, ("multi_modal_projector.", "model.multi_modal_projector."), "layers.0.weight",
        source,
    )
    tower_weights = read_prefixed(files, vision_prefix)
    projector = read_prefixed(files, projector_prefix)
    for index in range(projector_layers):  # before anything of that depth is built
        for part in ("weight", "bias"):
            key = f"layers.{2 * index}.{part}"
            if key not in projector:
                raise CheckpointError(f"{source}: missing key {projector_prefix + key!r}")
    llm_width = int(text.hidden_size)
    preprocess = replace(image_transform(source), stretch_display=True)
    bundle_config = maira2_config(
        vision, layers, 1 if strategy == "default" else 0, projector_layers, llm_width,
        preprocess, instruction,
    )
    tower = VisionTower(bundle_config).eval()
    seq_length = raw.get("image_seq_length")
    if isinstance(seq_length, int) and seq_length != tower.encoder.num_tokens:
        raise CheckpointError(
            f"{config_path}: image_seq_length {seq_length}, but the tower gives "
            f"{tower.encoder.num_tokens} tokens at the image processor's size"
        )
    inner = backbone_prefix(tower)
    # the layers after the feature stage are never run
    cut = typed_config(bundle_config.vision.backbone, "dinov2", config_path)
    weights = {
        inner + key: value
        for key, value in current_names(cut, tower_weights, source).items()
    }
    for index in range(projector_layers):
        for part in ("weight", "bias"):
            weights[f"aligner.mlp.{2 * index}.{part}"] = projector[f"layers.{2 * index}.{part}"]
    load_weights(tower, weights, lambda key: source)

    tokenizer = load_tokenizer(source)
    image_token_id = raw.get("image_token_index", raw.get("image_token_id"))
    if not isinstance(image_token_id, int) or tokenizer.convert_ids_to_tokens(
        image_token_id
    ) != "<image>":
        raise CheckpointError(
            f"{config_path}: image_token_index {image_token_id!r} is not '<image>' in the "
            "tokenizer"
        )
    tokenizer.chat_template = _chat_template(source)
    try:  # the template must put the image where the node expects it
        PromptBuilder(tokenizer, bundle_config.prompt).encode(
            findings=None, instruction=instruction
        )
    except (InferenceError, ValueError) as exc:
        raise CheckpointError(
            f"{source / 'chat_template.json'}: the chat template does not render MAIRA-2's "
            f"reporting prompt with one image ({exc})"
        ) from exc
    return write_imported_bundle(
        out, config=bundle_config, tower=tower, tokenizer=tokenizer, llm=source,
        provenance=provenance, name=name, version=version,
        llm_config=text, llm_key_mapping=LLAVA_LLM_KEY_MAPPING,
    )


__all__ = [
    "MAIRA2_FIRST_TURN",
    "MAIRA2_INSTRUCTION",
    "REMOTE_FILES",
    "import_maira2",
    "is_maira2",
    "maira2_config",
    "remote_code_notice",
]
