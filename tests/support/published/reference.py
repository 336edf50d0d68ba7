"""Reference forward passes of published checkpoints, in plain torch on their state dicts.

Written from the published architectures (docs/model_formats/), independently of the node's
modules, so that a parity test compares two implementations: BioViL-T's ImageModel for one
image, LAVIS's BERT Q-Former over its queries, LAVIS's EVA ViT, Libra's TAC connector, and
greedy decoding with a full forward pass per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


def bn(x: torch.Tensor, s: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"],
                        s[p + "bias"], training=False, eps=1e-5)


def biovil(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``ImageModel(x).projected_patch_embeddings`` for one image (no previous image)."""
    fused = biovil_patches(s, x)
    y = F.relu(bn(F.conv2d(fused, s["projector.model.0.weight"]), s, "projector.model.1."))
    return F.conv2d(y, s["projector.model.3.weight"], s["projector.model.3.bias"])


def biovil_patches(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``ImageModel(x).patch_embeddings``: the fused map, BatchNorm in eval mode."""
    r = "encoder.encoder."
    x = F.relu(bn(F.conv2d(x, s[r + "conv1.weight"], stride=2, padding=3), s, r + "bn1."))
    x = F.max_pool2d(x, 3, 2, 1)
    stage = 1
    while f"{r}layer{stage}.0.conv1.weight" in s:
        block = 0
        while f"{r}layer{stage}.{block}.conv1.weight" in s:
            p = f"{r}layer{stage}.{block}."
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(x, s[p + "conv1.weight"]), s, p + "bn1."))
            out = F.relu(bn(F.conv2d(out, s[p + "conv2.weight"], stride=stride, padding=1), s,
                             p + "bn2."))
            out = bn(F.conv2d(out, s[p + "conv3.weight"]), s, p + "bn3.")
            identity = x
            if p + "downsample.0.weight" in s:
                identity = bn(F.conv2d(x, s[p + "downsample.0.weight"], stride=stride), s,
                               p + "downsample.1.")
            x = F.relu(out + identity)
            block += 1
        stage += 1
    patch = F.conv2d(x, s["encoder.backbone_to_vit.weight"])
    previous = s["encoder.missing_previous_emb"].repeat(1, 1, patch.shape[2], patch.shape[3])
    return torch.cat([patch, previous], dim=1)


def crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top = int(round((x.shape[-1] - size) / 2.0))
    return x[..., top : top + size, top : top + size]


def attention(q_in: torch.Tensor, kv_in: torch.Tensor, s: dict[str, torch.Tensor], p: str,
               heads: int) -> torch.Tensor:
    def proj(name: str, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, s[f"{p}self.{name}.weight"], s[f"{p}self.{name}.bias"])
        return y.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = proj("query", q_in), proj("key", kv_in), proj("value", kv_in)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    context = (weights @ v).transpose(1, 2).reshape(q_in.shape)
    out = F.linear(context, s[p + "output.dense.weight"], s[p + "output.dense.bias"])
    return F.layer_norm(out + q_in, out.shape[-1:], s[p + "output.LayerNorm.weight"],
                        s[p + "output.LayerNorm.bias"], eps=1e-12)


def qformer(s: dict[str, torch.Tensor], image: torch.Tensor, heads: int) -> torch.Tensor:
    """LAVIS ``Qformer.bert(query_embeds=..., encoder_hidden_states=image)`` last state."""
    h = s["query_tokens"]
    e = "Qformer.bert.embeddings.LayerNorm."
    h = F.layer_norm(h, h.shape[-1:], s[e + "weight"], s[e + "bias"], eps=1e-12)
    layer = 0
    while f"Qformer.bert.encoder.layer.{layer}.attention.self.query.weight" in s:
        p = f"Qformer.bert.encoder.layer.{layer}."
        h = attention(h, h, s, p + "attention.", heads)
        if p + "crossattention.self.query.weight" in s:
            h = attention(h, image, s, p + "crossattention.", heads)
        inner = F.gelu(F.linear(h, s[p + "intermediate_query.dense.weight"],
                                s[p + "intermediate_query.dense.bias"]))
        out = F.linear(inner, s[p + "output_query.dense.weight"], s[p + "output_query.dense.bias"])
        h = F.layer_norm(out + h, h.shape[-1:], s[p + "output_query.LayerNorm.weight"],
                         s[p + "output_query.LayerNorm.bias"], eps=1e-12)
        layer += 1
    return h


def _vit_embed(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    patch = s["patch_embed.proj.weight"]
    h = F.conv2d(x, patch, s["patch_embed.proj.bias"], stride=patch.shape[-1])
    h = h.flatten(2).transpose(1, 2)
    return torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), h], dim=1) + s["pos_embed"]


def _vit_block(
    h: torch.Tensor, s: dict[str, torch.Tensor], p: str, heads: int, qkv_bias: torch.Tensor
) -> torch.Tensor:
    """One pre-norm ViT block (LayerNorm eps 1e-6, fused qkv, exact GELU)."""
    batch, width = h.shape[0], h.shape[-1]
    y = F.layer_norm(h, (width,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(y, s[p + "attn.qkv.weight"], qkv_bias)
    qkv = qkv.reshape(batch, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q * (width // heads) ** -0.5 @ k.transpose(-2, -1), dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(batch, -1, width)
    h = h + F.linear(y, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    y = F.layer_norm(h, (width,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
    y = F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
    return h + F.linear(y, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])


def eva_vit(s: dict[str, torch.Tensor], x: torch.Tensor, blocks: int, heads: int) -> torch.Tensor:
    """LAVIS ``VisionTransformer`` (EVA ViT-g, no final norm) over its first ``blocks``
    (separate q and v biases, none for k)."""
    h = _vit_embed(s, x)
    for index in range(blocks):
        p = f"blocks.{index}."
        bias = torch.cat([s[p + "attn.q_bias"], torch.zeros_like(s[p + "attn.q_bias"]),
                          s[p + "attn.v_bias"]])
        h = _vit_block(h, s, p, heads, bias)
    return h


def timm_vit_states(
    s: dict[str, torch.Tensor], x: torch.Tensor, heads: int
) -> list[torch.Tensor]:
    """A timm ``VisionTransformer``'s token states as LLaVA-Rad's tower lists them: the
    embedding output, then each block's output (no final norm)."""
    states = [_vit_embed(s, x)]
    index = 0
    while f"blocks.{index}.norm1.weight" in s:
        p = f"blocks.{index}."
        states.append(_vit_block(states[-1], s, p, heads, s[p + "attn.qkv.bias"]))
        index += 1
    return states


def _squeeze_excite(x: torch.Tensor, s: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    """torchvision's ``SqueezeExcitation`` with a GELU, over ``(B, C, H, W)``."""
    scale = x.mean(dim=(2, 3), keepdim=True)
    scale = F.gelu(F.conv2d(scale, s[p + "fc1.weight"], s[p + "fc1.bias"]))
    return x * torch.sigmoid(F.conv2d(scale, s[p + "fc2.weight"], s[p + "fc2.bias"]))


def _mha(query: torch.Tensor, memory: torch.Tensor, s: dict[str, torch.Tensor], p: str,
         heads: int) -> torch.Tensor:
    """``nn.MultiheadAttention(batch_first=True, add_bias_kv=True)``: a learned key and
    value appended to the memory's after the input projection."""
    batch, width = query.shape[0], query.shape[-1]
    wq, wk, wv = s[p + "in_proj_weight"].chunk(3)
    bq, bk, bv = s[p + "in_proj_bias"].chunk(3)
    q = F.linear(query, wq, bq)
    k = torch.cat([F.linear(memory, wk, bk), s[p + "bias_k"].expand(batch, 1, width)], dim=1)
    v = torch.cat([F.linear(memory, wv, bv), s[p + "bias_v"].expand(batch, 1, width)], dim=1)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], heads, width // heads).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5, -1)
    context = (weights @ split(v)).transpose(1, 2).reshape(query.shape)
    return F.linear(context, s[p + "out_proj.weight"], s[p + "out_proj.bias"])


def libra_tac(s: dict[str, torch.Tensor], current: torch.Tensor, prior: torch.Tensor,
              heads: int) -> torch.Tensor:
    """Libra's ``TAC`` connector (eval mode) on ``(B, L, N, D)`` layer features of the
    current and the prior image: LFE on each, then TFM."""

    def lfe(x: torch.Tensor) -> torch.Tensor:
        for step in (0, 2, 4):
            x = _squeeze_excite(x, s, f"LFE.{step}.")
            x = F.conv2d(x, s[f"LFE.{step + 1}.weight"])
        return x[:, 0]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"])

    cur, prev = lfe(current), lfe(prior)
    a, b = cur.flatten(1), prev.flatten(1)
    cosine = (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)
    prev = prev + (((cosine + 1) / 2) ** 8).view(-1, 1, 1) * s["LFE_prior_bias"]
    x = norm(cur + _mha(cur, cur, s, "cur_self_attention.", heads), "norm1")
    y = norm(prev + _mha(prev, prev, s, "prior_self_attention.", heads), "norm2")
    z = norm(x + _mha(x, y, s, "cros_attention.", heads), "norm3")
    mlp = F.linear(F.gelu(F.linear(z, s["mlp_attn.0.weight"], s["mlp_attn.0.bias"])),
                   s["mlp_attn.3.weight"], s["mlp_attn.3.bias"])
    out = norm(cur + mlp, "norm4")
    for index in (0, 2, 4, 6):
        out = F.linear(out, s[f"mlp_final.{index}.weight"], s[f"mlp_final.{index}.bias"])
        if index != 6:
            out = F.gelu(out)
    return out


def greedy(
    model: PreTrainedModel,
    inputs: torch.Tensor,
    steps: int,
    eos: int,
    stop: Callable[[list[int]], bool] = lambda ids: False,
) -> list[int]:
    """Greedy decoding from ``inputs_embeds`` ``(1, T, H)``, one full forward per token."""
    embed = model.get_input_embeddings()
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(inputs_embeds=inputs).logits[0, -1].argmax())
            if token == eos:
                break
            generated.append(token)
            if stop(generated):
                break
            inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)
    return generated


__all__ = [
    "attention",
    "biovil",
    "biovil_patches",
    "bn",
    "crop",
    "eva_vit",
    "greedy",
    "libra_tac",
    "qformer",
    "timm_vit_states",
]
