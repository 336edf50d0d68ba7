"""BLIP-2 parts as LAVIS saves them, renamed for transformers' BLIP-2 classes.

RaDialog v1 and XrayGPT (MiniGPT-4) both carry LAVIS's BERT Q-Former; XrayGPT also its EVA
ViT-g. The renames follow transformers' BLIP-2 conversion (``Qformer.bert`` -> the Q-Former,
``attention.self`` -> ``attention.attention``; EVA's ``blocks`` -> ``encoder.layers``, its
``q_bias``/``v_bias`` -> one ``qkv.bias`` with a zero key bias).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from inference.errors import CheckpointError
from inference.importers.checkpoints import need

#: BERT's attention head width: the Q-Former's heads are its width / 64 (not stored).
BERT_HEAD_WIDTH = 64
#: EVA ViT-g's attention head width (``create_eva_vit_g``: 1408 // 88 heads; not stored).
EVA_HEAD_WIDTH = 88


def convert_qformer(
    state: Mapping[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, int], int]:
    """LAVIS's BLIP-2 Q-Former keys as transformers' ``Blip2QFormerModel`` keys.

    Returns
    -------
    tuple
        The renamed state dict (query path only), the ``Blip2QFormerConfig`` keyword
        arguments read from the shapes, and the encoder (image feature) width.

    Raises
    ------
    CheckpointError
        For a missing key or a layout the transformers model cannot hold.
    """
    prefix = "Qformer.bert."
    layer = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.(.+)$")
    converted: dict[str, torch.Tensor] = {}
    layers: set[int] = set()
    crossing: set[int] = set()
    for key, value in state.items():
        if key.startswith(prefix + "embeddings.LayerNorm."):
            converted["layernorm." + key.rsplit(".", 1)[1]] = value
            continue
        match = layer.match(key)
        if not match:
            continue
        index, rest = int(match.group(1)), match.group(2)
        layers.add(index)
        if rest.startswith(("intermediate.", "output.")):
            continue  # the text FFN: stage-1 text losses only
        if rest.startswith("crossattention."):
            crossing.add(index)
        rest = rest.replace("attention.self.", "attention.attention.")
        converted[f"encoder.layer.{index}.{rest}"] = value
    if not layers:
        raise CheckpointError(f"{path}: missing keys {prefix + 'encoder.layer.*'!r}")
    count = max(layers) + 1
    if layers != set(range(count)):
        raise CheckpointError(f"{path}: Q-Former layers {sorted(layers)} are not 0..{count - 1}")
    ordered = sorted(crossing)
    frequency = min((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=count)
    if not crossing or crossing != set(range(0, count, frequency)):
        raise CheckpointError(
            f"{path}: cross-attention in layers {sorted(crossing)}; transformers' Q-Former "
            "needs it every k-th layer from layer 0"
        )
    hidden = int(need(state, "query_tokens", path).shape[-1])
    if hidden % BERT_HEAD_WIDTH:
        raise CheckpointError(
            f"{path}: Q-Former width {hidden} is not a multiple of BERT's head width "
            f"{BERT_HEAD_WIDTH} (the heads are not stored)"
        )
    first = f"{prefix}encoder.layer.0."
    need(state, prefix + "embeddings.LayerNorm.weight", path)
    width = int(need(state, first + "crossattention.self.key.weight", path).shape[1])
    inter = int(need(state, first + "intermediate_query.dense.weight", path).shape[0])
    kwargs = {
        "hidden_size": hidden,
        "num_hidden_layers": count,
        "num_attention_heads": hidden // BERT_HEAD_WIDTH,
        "intermediate_size": inter,
        "cross_attention_frequency": frequency,
    }
    return converted, kwargs, width


def convert_eva_vit(
    state: Mapping[str, torch.Tensor], path: Path, *, drop_last_block: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """LAVIS's EVA ViT (a flat ``eva_vit_g.pth``) as ``Blip2VisionModel`` weights and config.

    BLIP-2 reads the penultimate block: ``create_eva_vit_g`` builds 39 of the file's 40
    blocks. With ``drop_last_block`` the last block of the file is left out the same way.
    The vision model's ``post_layernorm`` is left to the caller (BLIP-2's ``ln_vision``).

    Returns
    -------
    tuple
        The renamed weights (without ``post_layernorm``) and the ``Blip2VisionConfig``
        keyword arguments read from the shapes.
    """
    cls = need(state, "cls_token", path)
    positions = need(state, "pos_embed", path)
    patch = need(state, "patch_embed.proj.weight", path)
    width, patch_size = int(cls.shape[-1]), int(patch.shape[-1])
    grid = round((positions.shape[1] - 1) ** 0.5)
    if grid * grid + 1 != positions.shape[1]:
        raise CheckpointError(f"{path}: key 'pos_embed' has {positions.shape[1]} positions, "
                              "not a square grid plus CLS")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{path}: missing keys 'blocks.N.*'")
    used = len(blocks) - 1 if drop_last_block else len(blocks)
    if used < 1:
        raise CheckpointError(f"{path}: {len(blocks)} block(s); BLIP-2 reads the penultimate")
    if width % EVA_HEAD_WIDTH:
        raise CheckpointError(f"{path}: width {width} is not a multiple of EVA's head width "
                              f"{EVA_HEAD_WIDTH} (the heads are not stored)")
    weights = {
        "embeddings.class_embedding": cls,
        "embeddings.position_embedding": positions,
        "embeddings.patch_embedding.weight": patch,
        "embeddings.patch_embedding.bias": need(state, "patch_embed.proj.bias", path),
    }
    renames = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.projection",
               "attn.qkv": "self_attn.qkv", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for index in range(used):
        p = f"blocks.{index}."
        for theirs, ours in renames.items():
            for n in ("weight", "bias"):
                if theirs == "attn.qkv" and n == "bias":
                    q = need(state, p + "attn.q_bias", path)
                    v = need(state, p + "attn.v_bias", path)
                    value = torch.cat([q, torch.zeros_like(q), v])
                else:
                    value = need(state, f"{p}{theirs}.{n}", path)
                weights[f"encoder.layers.{index}.{ours}.{n}"] = value
    kwargs: dict[str, object] = {
        "hidden_size": width,
        "intermediate_size": int(need(state, "blocks.0.mlp.fc1.weight", path).shape[0]),
        "num_hidden_layers": used,
        "num_attention_heads": width // EVA_HEAD_WIDTH,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
    }
    return weights, kwargs


__all__ = ["BERT_HEAD_WIDTH", "EVA_HEAD_WIDTH", "convert_eva_vit", "convert_qformer"]
