"""A tiny MAIRA-2 checkpoint in the layout ``microsoft/maira-2`` is published in.

The hub repository holds ``config.json`` (``model_type: maira2``, an ``auto_map`` onto its
own ``configuration_maira2.py`` / ``modeling_maira2.py``; a ``dinov2`` vision config read as
a backbone with ``apply_layernorm``, ``out_features`` of the last stage and no reshaping; a
``llama`` text config; ``projector_n_layers`` 4; ``image_token_index``), the three Python
files of its own code, ``preprocessor_config.json`` (BitImageProcessor: shortest edge 518,
centre crop 518, mean and std 0.5307 / 0.2583), ``processor_config.json`` (an ``auto_map``
onto ``processing_maira2.Maira2Processor``), ``chat_template.json``, the LLaMA tokenizer
with ``<image>`` and the grounding tokens added, and safetensors shards in the transformers
4.46 layout: ``vision_tower.*`` (Dinov2Backbone's names), ``multi_modal_projector.layers.
{0,2,4,6}.*``, ``language_model.model.*`` and ``language_model.lm_head.weight``.

The tiny model is built from transformers' ``Dinov2Backbone`` and ``LlamaForCausalLM`` and a
four-layer projector, saved in two shards with an index. The three Python files are written
under their published names but raise when executed: the node must import the checkpoint
without running them. The chat template is this module's own, of the shape the processor's
messages need (content as parts, ``<image>`` for an image part, the system text inside).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    Dinov2Backbone,
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from support.published.radialog import write_sentencepiece_tokenizer

IMAGE_TOKEN = "<image>"
GROUNDING_TOKENS = ["<obj>", "</obj>", "<box>", "</box>"]
#: RAD-DINO's normalisation, as MAIRA-2's BitImageProcessor states it.
RAD_DINO_MEAN, RAD_DINO_STD = 0.5307, 0.2583
SYSTEM = "You are an expert radiology assistant tasked with interpreting a chest X-ray study."
CHAT_TEMPLATE = (
    "{{ '" + SYSTEM + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' }}"
    "{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)
REMOTE_FILES = ("configuration_maira2.py", "modeling_maira2.py", "processing_maira2.py")
PROJECTOR_LAYERS = 4


def projector(vision_width: int, text_width: int, layers: int = PROJECTOR_LAYERS) -> nn.Sequential:
    """MAIRA-2's projector: ``layers`` linear layers, GELU between them."""
    modules: list[nn.Module] = [nn.Linear(vision_width, text_width)]
    for _ in range(layers - 1):
        modules += [nn.GELU(), nn.Linear(text_width, text_width)]
    return nn.Sequential(*modules)


def published(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A model's tensors under the names transformers saves them with (the published ones:
    transformers 5 writes Dinov2's attention as ``attention.attention.query``, its 4.x name,
    though its module calls it ``attention.q_proj``)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return load_file(str(Path(tmp) / "model.safetensors"))


def write_maira2(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny MAIRA-2 (3-layer Dinov2 backbone, 4-layer projector, 2-layer Llama with
    linear RoPE scaling) and return its directory."""
    torch.manual_seed(seed)
    tokenizer = write_sentencepiece_tokenizer(directory)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TOKEN, *GROUNDING_TOKENS], "pad_token": "<pad>"}
    )
    tokenizer.save_pretrained(str(directory))
    vision = Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
        image_size=image_size, patch_size=8, apply_layernorm=True,
        reshape_hidden_states=False, out_features=["stage3"],
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
        max_position_embeddings=2048, rope_scaling={"rope_type": "linear", "factor": 1.5},
    )
    backbone = Dinov2Backbone(vision).eval()
    with torch.no_grad():  # widen the features of the default init
        for parameter in backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    head = projector(vision.hidden_size, text.hidden_size)
    language = LlamaForCausalLM(text).eval()

    vision_and_projector = {f"vision_tower.{k}": v for k, v in published(backbone).items()}
    vision_and_projector.update(
        {f"multi_modal_projector.layers.{k}": v for k, v in head.state_dict().items()}
    )
    llm = {f"language_model.{k}": v for k, v in published(language).items()}
    shards = {"model-00001-of-00002.safetensors": vision_and_projector,
              "model-00002-of-00002.safetensors": llm}
    weight_map = {}
    for file, tensors in shards.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / file),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["Maira2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_maira2.Maira2Config",
                     "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration"},
        "model_type": "maira2",
        "image_token_index": image_token_id,
        "image_seq_length": (image_size // 8) ** 2,
        "projector_hidden_act": "gelu",
        "projector_n_layers": PROJECTOR_LAYERS,
        "multimodal_projector_bias": True,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "pad_token_id": tokenizer.pad_token_id,
        "text_config": {"model_type": "llama", **text.to_diff_dict()},
        "vision_config": {"model_type": "dinov2", **vision.to_diff_dict()},
        "torch_dtype": "float32",
        "transformers_version": "4.46.0.dev0",
    }, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True,
        "image_mean": [RAD_DINO_MEAN] * 3, "image_std": [RAD_DINO_STD] * 3,
        "image_processor_type": "BitImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": image_size},
    }, indent=2))
    (directory / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_maira2.Maira2Processor"},
        "processor_class": "Maira2Processor", "patch_size": 8,
        "vision_feature_select_strategy": "default", "num_box_coord_bins": 100,
    }, indent=2))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    for name in REMOTE_FILES:
        (directory / name).write_text(
            '"""The published file\'s name only: importing MAIRA-2 must not run it."""\n'
            f'raise RuntimeError("{name} was executed")\n'
        )
    return directory


__all__ = [
    "CHAT_TEMPLATE",
    "GROUNDING_TOKENS",
    "IMAGE_TOKEN",
    "RAD_DINO_MEAN",
    "RAD_DINO_STD",
    "REMOTE_FILES",
    "SYSTEM",
    "projector",
    "published",
    "write_maira2",
]
