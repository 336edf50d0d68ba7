"""A tiny Gemma 3 image-text checkpoint in the layout MedGemma 4B is published in.

``google/medgemma-4b-it`` holds ``config.json`` (``model_type: gemma3``, a SigLIP vision
config, a ``gemma3_text`` config, ``mm_tokens_per_image``, the ``<start_of_image>`` /
``<end_of_image>`` / ``<image_soft_token>`` ids), ``preprocessor_config.json``
(Gemma3ImageProcessor: 896 x 896, mean and std 0.5), ``processor_config.json``
(``image_seq_length``), the tokenizer with its chat template, and safetensors shards in
the transformers 4.x layout: ``vision_tower.vision_model.*``, ``multi_modal_projector.*``
(``mm_input_projection_weight`` stored ``[vision, text]``, ``mm_soft_emb_norm.weight``
zero-centred), ``language_model.model.*`` and no ``lm_head`` (tied to the embedding). The
model is built with transformers at tiny size, its zero-initialised projector perturbed, and
its weights renamed to that layout in two bf16 shards with an index.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from support.published.radialog import CORPUS

BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
START_TURN, END_TURN = "<start_of_turn>", "<end_of_turn>"
#: Gemma's special tokens in its own order: pad 0, eos 1, bos 2, unk 3.
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", START_TURN, END_TURN, BOI, EOI, IMAGE_SOFT]
#: Gemma 3's chat template as its converter describes it: the system text folded into the
#: first user turn, ``model`` as the answering role, text trimmed.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Gemma 3's special tokens and chat template."""
    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    model.train_from_iterator(CORPUS * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=4096,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT,
                              "start_of_turn": START_TURN, "end_of_turn": END_TURN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _published_key(key: str) -> str:
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def write_gemma3(
    directory: Path, *, seed: int = 0, image_size: int = 28, patch_size: int = 7,
    tokens_per_image: int = 4,
) -> Path:
    """Write a tiny Gemma 3 (2-layer SigLIP, 2-layer text model) and return its directory."""
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
        max_position_embeddings=4096, pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"],
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids[BOI], eoi_token_index=ids[EOI], image_token_index=ids[IMAGE_SOFT],
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # zero-initialised projector and norms: give them content
        for name, parameter in model.named_parameters():
            if "multi_modal_projector" in name or "vision_tower" in name or "norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    state = {
        _published_key(k): v.to(torch.bfloat16).contiguous()
        for k, v in model.state_dict().items() if k != "lm_head.weight"  # tied
    }
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(str(directory))
    (directory / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<bos>"], "pad_token_id": ids["<pad>"],
        "eos_token_id": [ids["<eos>"], ids[END_TURN]], "do_sample": False,
    }))
    tokenizer.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "do_convert_rgb": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": image_size, "width": image_size},
        "do_pan_and_scan": False,
    }, indent=2))
    (directory / "processor_config.json").write_text(json.dumps(
        {"image_seq_length": tokens_per_image, "processor_class": "Gemma3Processor"}))
    return directory


__all__ = ["BOI", "CHAT_TEMPLATE", "EOI", "IMAGE_SOFT", "gemma_tokenizer", "write_gemma3"]
