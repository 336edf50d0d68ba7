"""A tiny LLaVA-Rad download and its Vicuna-7B v1.5 base, in the published formats
(docs/model_formats/xraygpt_hf.md section 2.4, github.com/microsoft/LLaVA-Rad).

Hub repository ``microsoft/llava-rad`` (written by the original LLaVA code's LoRA training)::

    config.json                        a flat LLaMA config, model_type "llava", with the
                                       mm_* fields (tower, its config and checkpoint, select
                                       layer -2, select feature "patch", mlp2x_gelu)
    adapter_config.json                peft LoraConfig over the LLaMA projections
    adapter_model.bin                  base_model.model.model.layers.N.*.lora_{A,B}.weight
    non_lora_trainables.bin            base_model.model.model.mm_projector.{0,2}.*
    biomedclipcxr_518.json             the open_clip config (vision_cfg: timm_model_name,
                                       image_size; text_cfg)
    biomedclipcxr_518_checkpoint.pt    an open_clip training checkpoint: {"epoch", "name",
                                       "state_dict": {"module.visual.trunk.*" (timm ViT),
                                       "module.visual.head.*", "module.text.*",
                                       "module.logit_scale"}}

The base ``vicuna-7b-v1.5/`` is a plain transformers LLaMA with a SentencePiece tokenizer.
The tiny tower is a timm-layout ViT of width 48 (3 heads, "tiny"), 8-pixel patches on 32-pixel
images, three blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from support.published.radialog import write_sentencepiece_tokenizer

BASE_DIR = "vicuna-7b-v1.5"
REPO_DIR = "llava-rad"
CLIP_CONFIG = "biomedclipcxr_518.json"
CLIP_CHECKPOINT = "biomedclipcxr_518_checkpoint.pt"
TIMM_NAME = "vit_tiny_patch8_32"
WIDTH, HEADS, PATCH, IMAGE, BLOCKS, LLM = 48, 3, 8, 32, 3, 64
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def timm_vit_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A timm ``VisionTransformer``'s state dict (class token, fused qkv with bias)."""
    d, n = WIDTH, (IMAGE // PATCH) ** 2

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "cls_token": rand(1, 1, d), "pos_embed": rand(1, n + 1, d),
        "patch_embed.proj.weight": rand(d, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": rand(d), "norm.weight": 1 + rand(d), "norm.bias": rand(d),
        "head.weight": rand(10, d), "head.bias": rand(10),  # reset by open_clip; unused
    }
    for i in range(BLOCKS):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": 1 + rand(d), p + "norm1.bias": rand(d),
            p + "attn.qkv.weight": rand(3 * d, d), p + "attn.qkv.bias": rand(3 * d),
            p + "attn.proj.weight": rand(d, d), p + "attn.proj.bias": rand(d),
            p + "norm2.weight": 1 + rand(d), p + "norm2.bias": rand(d),
            p + "mlp.fc1.weight": rand(4 * d, d), p + "mlp.fc1.bias": rand(4 * d),
            p + "mlp.fc2.weight": rand(d, 4 * d), p + "mlp.fc2.bias": rand(d),
        }
    return state


def write_vicuna_base(directory: Path, seed: int) -> LlamaConfig:
    """Vicuna-7B v1.5 as transformers saves it (tiny): LLaMA config, safetensors, tokenizer."""
    torch.manual_seed(seed)
    tokenizer = write_sentencepiece_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=LLM, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    LlamaForCausalLM(config).eval().to(torch.float16).save_pretrained(str(directory))
    return config


def write_llava_rad(root: Path, *, seed: int = 0) -> Path:
    """Write the tiny base and hub files under ``root``; returns ``root``."""
    gen = torch.Generator().manual_seed(seed)
    base = root / BASE_DIR
    base.mkdir(parents=True)
    llama = write_vicuna_base(base, seed)
    repo = root / REPO_DIR
    repo.mkdir()
    d, f, r = LLM, llama.intermediate_size, 4
    lora = {}
    for layer in range(llama.num_hidden_layers):
        for target in TARGETS:
            part = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            inp = f if target == "down_proj" else d
            out = f if target in ("gate_proj", "up_proj") else d
            p = f"base_model.model.model.layers.{layer}.{part}.{target}."
            lora[p + "lora_A.weight"] = (torch.randn(r, inp, generator=gen) * 0.2).half()
            lora[p + "lora_B.weight"] = (torch.randn(out, r, generator=gen) * 0.2).half()
    torch.save(lora, repo / "adapter_model.bin")
    (repo / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "lora_alpha": 2 * r,
        "lora_dropout": 0.05, "peft_type": "LORA", "r": r, "target_modules": list(TARGETS),
        "task_type": "CAUSAL_LM",
    }, indent=2, sort_keys=True))
    prefix = "base_model.model.model.mm_projector."
    torch.save({
        prefix + "0.weight": (torch.randn(d, WIDTH, generator=gen) * WIDTH**-0.5).half(),
        prefix + "0.bias": (0.1 * torch.randn(d, generator=gen)).half(),
        prefix + "2.weight": (torch.randn(d, d, generator=gen) * d**-0.5).half(),
        prefix + "2.bias": (0.1 * torch.randn(d, generator=gen)).half(),
    }, repo / "non_lora_trainables.bin")
    raw = llama.to_dict()
    raw.update(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava",
        mm_vision_tower="biomedclip_cxr_518", mm_vision_tower_config=CLIP_CONFIG,
        mm_vision_tower_checkpoint=CLIP_CHECKPOINT, mm_hidden_size=WIDTH,
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, image_aspect_ratio="pad", torch_dtype="float16",
    )
    (repo / "config.json").write_text(json.dumps(raw, indent=2))
    (repo / CLIP_CONFIG).write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": IMAGE},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }, indent=2))
    trunk = timm_vit_state(gen)
    state = {f"module.visual.trunk.{k}": v for k, v in trunk.items()}
    state["module.visual.head.proj.weight"] = torch.randn(32, WIDTH, generator=gen)
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.randn(
        50, 16, generator=gen)
    state["module.logit_scale"] = torch.tensor(4.6)
    torch.save({"epoch": 10, "name": "biomedclip_cxr_518", "state_dict": state},
               repo / CLIP_CHECKPOINT)
    return root


__all__ = ["BASE_DIR", "CLIP_CHECKPOINT", "CLIP_CONFIG", "HEADS", "REPO_DIR",
           "timm_vit_state", "write_llava_rad"]
