"""A tiny RaDialog-LLaVA (RaDialog v2) download and its LLaVA-1.5 base, in the published
formats (docs/model_formats/radialog.md section 2).

Hub repository files (bf16 pickles, as published)::

    adapter_config.json          peft 0.4 LoraConfig, r / alpha, the 7 LLaMA projections
    adapter_model.bin            base_model.model.model.layers.N.{self_attn,mlp}.*.lora_{A,B}
    non_lora_trainables.bin      base_model.model.model.mm_projector.{0,2}.*, the fine-tuned
                                 BioViL-T under base_model.model.model.vision_tower.* (with
                                 BN statistics, num_batches_tracked int64, the pooler's
                                 pos_embed) and the LLaMA rotary buffers
    config.json                  the LLaVA config of the fine-tune
    findings_classifier/checkpoints/chexpert_train/ChexpertClassifier.ckpt

The base ``llava-v1.5-7b/`` is in the original LLaVA layout: ``config.json`` with
``model_type: llava`` and the LLaMA fields at its top level, ``pytorch_model-0000N-of-00002.bin``
with LLaMA keys (``model.layers.*``, ``lm_head.weight``) plus its own CLIP projector
(``model.mm_projector.*``), and a SentencePiece ``tokenizer.model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from support.published.radialog import (
    TinySizes,
    image_model_state,
    write_classifier,
    write_sentencepiece_tokenizer,
)

BASE_DIR = "llava-v1.5-7b"
REPO_DIR = "RaDialog-interactive-radiology-report-generation"
CLASSIFIER_V2 = "findings_classifier/checkpoints/chexpert_train/ChexpertClassifier.ckpt"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_llava_base(directory: Path, sizes: TinySizes, seed: int) -> LlamaConfig:
    """LLaVA-1.5 in the original repository's layout (tiny)."""
    torch.manual_seed(seed)
    tokenizer = write_sentencepiece_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.llm_hidden, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2, tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).eval()
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    state["model.mm_projector.0.weight"] = torch.randn(sizes.llm_hidden, 24).half()
    state["model.mm_projector.0.bias"] = torch.zeros(sizes.llm_hidden).half()
    state["model.mm_projector.2.weight"] = torch.randn(sizes.llm_hidden, sizes.llm_hidden).half()
    state["model.mm_projector.2.bias"] = torch.zeros(sizes.llm_hidden).half()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, directory / file)
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
        "weight_map": {k: file for file, keys in shards.items() for k in keys},
    }))
    raw = config.to_dict()
    raw.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava",
               mm_hidden_size=24, mm_projector_type="mlp2x_gelu",
               mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_layer=-2,
               mm_use_im_start_end=False, mm_use_im_patch_token=False,
               image_aspect_ratio="pad", torch_dtype="float16")
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return config


def write_radialog_llava(root: Path, *, seed: int = 0) -> Path:
    """Write the tiny base and hub files under ``root``; returns ``root``."""
    sizes = TinySizes()
    gen = torch.Generator().manual_seed(seed)
    base = root / BASE_DIR
    base.mkdir(parents=True)
    config = write_llava_base(base, sizes, seed)
    repo = root / REPO_DIR
    repo.mkdir()
    d, r, f = sizes.llm_hidden, 4, config.intermediate_size
    lora = {}
    for layer in range(config.num_hidden_layers):
        for target in TARGETS:
            part = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            inp = f if target == "down_proj" else d
            out = f if target in ("gate_proj", "up_proj") else d
            p = f"base_model.model.model.layers.{layer}.{part}.{target}."
            lora[p + "lora_A.weight"] = (torch.randn(r, inp, generator=gen) * 0.2).bfloat16()
            lora[p + "lora_B.weight"] = (torch.randn(out, r, generator=gen) * 0.2).bfloat16()
    torch.save(lora, repo / "adapter_model.bin")
    (repo / "adapter_config.json").write_text(json.dumps({
        "auto_mapping": None, "base_model_name_or_path": "liuhaotian/llava-v1.5-7b",
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "lora_alpha": 2 * r, "lora_dropout": 0.05, "modules_to_save": None,
        "peft_type": "LORA", "r": r, "revision": None, "target_modules": list(TARGETS),
        "task_type": "CAUSAL_LM",
    }, indent=2, sort_keys=True))

    tower = image_model_state(sizes, 16, gen)
    tower["encoder.vit_pooler.pos_embed"] = torch.randn(1, 196, sizes.vit, generator=gen)
    fused = 2 * sizes.vit
    prefix = "base_model.model.model."
    non_lora = {f"{prefix}vision_tower.{k}": v for k, v in tower.items()}
    non_lora[f"{prefix}mm_projector.0.weight"] = torch.randn(d, fused, generator=gen) * fused**-0.5
    non_lora[f"{prefix}mm_projector.0.bias"] = 0.1 * torch.randn(d, generator=gen)
    non_lora[f"{prefix}mm_projector.2.weight"] = torch.randn(d, d, generator=gen) * d**-0.5
    non_lora[f"{prefix}mm_projector.2.bias"] = 0.1 * torch.randn(d, generator=gen)
    for layer in range(config.num_hidden_layers):
        non_lora[f"{prefix}layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save({k: (v if v.dtype == torch.int64 else v.bfloat16()) for k, v in non_lora.items()},
               repo / "non_lora_trainables.bin")
    (repo / "config.json").write_text(json.dumps({
        "model_type": "llava", "mm_vision_tower": "biovil", "mv_type": "concat",
        "mm_hidden_size": fused, "mm_projector_type": "mlp2x_gelu", "use_mm_proj": True,
        "hidden_size": d, "tokenizer_model_max_length": 1300,
    }, indent=2))
    write_classifier(repo / CLASSIFIER_V2, sizes, gen)
    return root


__all__ = ["BASE_DIR", "CLASSIFIER_V2", "REPO_DIR", "write_radialog_llava"]
