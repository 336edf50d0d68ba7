"""A tiny XrayGPT download in the published formats (docs/model_formats/xraygpt_hf.md).

XrayGPT is MiniGPT-4 on LAVIS: the EVA ViT-g of BLIP-2 (``eva_vit_g.pth``, a flat state dict
with ``q_bias``/``v_bias``), BLIP-2's Q-Former (``blip2_pretrained_flant5xxl.pth``,
``{"model": ...}``), XrayGPT's stage-2 ``checkpoint_0.pth`` holding the trained
``llama_proj`` and the buffers LAVIS keeps, and the fine-tuned Vicuna as a Hugging Face LLaMA
folder with ``pytorch_model.bin`` shards. Sizes: EVA width 176 (two heads of EVA's 88), patch
14 on 28 px, three blocks of which BLIP-2 reads two; Q-Former width 128 (two BERT heads).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from support.published.radialog import TinySizes, qformer_state, write_sentencepiece_tokenizer

EVA_FILE = "eva_vit_g.pth"
QFORMER_FILE = "blip2_pretrained_flant5xxl.pth"
STAGE2_FILE = "checkpoint_0.pth"
VICUNA_DIR = "Vicuna_Radiology_fp16"
EVA_WIDTH, EVA_PATCH, EVA_IMAGE, EVA_BLOCKS = 176, 14, 28, 3


def eva_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A flat EVA ViT state dict (LAVIS ``VisionTransformer`` names)."""
    w, hidden = EVA_WIDTH, int(EVA_WIDTH * 4.3637)
    tokens = (EVA_IMAGE // EVA_PATCH) ** 2 + 1
    state = {
        "cls_token": 0.5 * torch.randn(1, 1, w, generator=gen),
        "pos_embed": 0.5 * torch.randn(1, tokens, w, generator=gen),
        "patch_embed.proj.weight": torch.randn(w, 3, EVA_PATCH, EVA_PATCH, generator=gen) * 0.05,
        "patch_embed.proj.bias": 0.1 * torch.randn(w, generator=gen),
    }
    for block in range(EVA_BLOCKS):
        p = f"blocks.{block}."
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"] = 1 + 0.1 * torch.randn(w, generator=gen)
            state[p + norm + ".bias"] = 0.1 * torch.randn(w, generator=gen)
        state[p + "attn.qkv.weight"] = torch.randn(3 * w, w, generator=gen) * w**-0.5
        state[p + "attn.q_bias"] = 0.1 * torch.randn(w, generator=gen)
        state[p + "attn.v_bias"] = 0.1 * torch.randn(w, generator=gen)
        state[p + "attn.proj.weight"] = torch.randn(w, w, generator=gen) * w**-0.5
        state[p + "attn.proj.bias"] = 0.1 * torch.randn(w, generator=gen)
        state[p + "mlp.fc1.weight"] = torch.randn(hidden, w, generator=gen) * w**-0.5
        state[p + "mlp.fc1.bias"] = 0.1 * torch.randn(hidden, generator=gen)
        state[p + "mlp.fc2.weight"] = torch.randn(w, hidden, generator=gen) * hidden**-0.5
        state[p + "mlp.fc2.bias"] = 0.1 * torch.randn(w, generator=gen)
    return state


def write_xraygpt(root: Path, *, seed: int = 0) -> Path:
    """Write the tiny XrayGPT files under ``root`` and return it."""
    sizes = TinySizes()
    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(eva_state(gen), root / EVA_FILE)
    blip2 = qformer_state(sizes, {}, gen, encoder_width=EVA_WIDTH)
    blip2["t5_proj.weight"] = torch.randn(16, sizes.qformer_hidden, generator=gen)
    torch.save({"model": blip2}, root / QFORMER_FILE)
    stage2 = {
        "llama_proj.weight": torch.randn(sizes.llm_hidden, sizes.qformer_hidden, generator=gen)
        * sizes.qformer_hidden**-0.5,
        "llama_proj.bias": 0.1 * torch.randn(sizes.llm_hidden, generator=gen),
        "Qformer.bert.embeddings.position_ids": torch.arange(16, dtype=torch.int64)[None],
    }
    for layer in range(2):
        stage2[f"llama_model.model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save({"model": stage2, "optimizer": {}, "config": {"model": {"arch": "mini_gpt4"}},
                "scaler": None, "epoch": 0}, root / STAGE2_FILE)

    torch.manual_seed(seed)
    vicuna = root / VICUNA_DIR
    tokenizer = write_sentencepiece_tokenizer(vicuna)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.llm_hidden, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    config.save_pretrained(str(vicuna))
    # The published folder has pytorch_model-0000N-of-0000M.bin shards and their index.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, vicuna / file)
    (vicuna / "pytorch_model.bin.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": {k: file for file, keys in shards.items() for k in keys},
    }))
    return root


__all__ = ["EVA_FILE", "QFORMER_FILE", "STAGE2_FILE", "VICUNA_DIR", "write_xraygpt"]
