"""Stage 1: aligning image features with report text.

Q-Former (BLIP-2 stage 1, as RaDialog pretrains its alignment module): the vision encoder is
frozen and the Q-Former learns three losses against the report text, which it also encodes
(its self-attention layers are shared between queries and text, as in BLIP-2):

* **ITC**, image-text contrastive: each report against the batch's images; the similarity
  of an image and a text is the best of its 32 query embeddings (InfoNCE both ways);
* **ITM**, image-text matching: a binary head on the queries attending jointly to the text,
  with a hard negative text per image drawn by ITC similarity among reports with other
  findings;
* **captioning** (image-grounded text generation): the report decoded from the queries with
  a causal mask over the text.

The text side (token and position embeddings, and the Q-Former's text feed-forward weights)
can be initialised from a BERT such as MiniLM; the Q-Former's self-attention and query
feed-forward layers take the same weights. The projection into the LLM's space is trained
with the report LoRA in stage 2.

Linear and MLP aligners (XrayGPT / LLaVA): the projector is trained with the captioning loss
through the frozen LLM, on prompts that hold only the image tokens and the instruction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer

from inference.vision import QFormerAligner
from training.config import AlignmentStage
from training.engine.checkpoint import CHECKPOINT_NAME
from training.engine.context import RunContext
from training.engine.lm_loss import answer_loss
from training.errors import TrainingConfigError

logger = logging.getLogger(__name__)


class AlignmentHeads(nn.Module):
    """Text embeddings and the ITC / ITM / captioning heads around a Q-Former."""

    def __init__(self, vocab_size: int, hidden: int, max_positions: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.vision_proj = nn.Linear(hidden, dim)
        self.text_proj = nn.Linear(hidden, dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.lm_transform = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12)
        )
        self.lm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(0.07))))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings ``(B, T, H)``."""
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.embed_norm(self.word_embeddings(ids) + self.position_embeddings(positions))

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits, decoder tied to the word embeddings (as BERT's MLM head)."""
        return self.lm_transform(hidden) @ self.word_embeddings.weight.T + self.lm_bias


class _AlignmentNet(nn.Module):
    def __init__(self, aligner: QFormerAligner, heads: AlignmentHeads) -> None:
        super().__init__()
        self.aligner = aligner
        self.heads = heads


def init_qformer_from_bert(aligner: QFormerAligner, heads: AlignmentHeads, bert_dir: Path) -> int:
    """Copy a BERT's weights into the Q-Former and the text embeddings (BLIP-2 init).

    Self-attention and feed-forward weights of layer ``i`` go to Q-Former layer ``i`` (both
    its query and its text feed-forward); cross-attention stays randomly initialised.

    Returns
    -------
    int
        Number of tensors copied.

    Raises
    ------
    TrainingConfigError
        When the BERT's sizes differ from the Q-Former's.
    """
    files = sorted(bert_dir.glob("*.safetensors"))
    if not files:
        raise TrainingConfigError(f"model.qformer_init_dir: no safetensors weights in {bert_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    qformer = aligner.qformer
    mapping: dict[str, list[nn.Parameter | torch.Tensor]] = {}

    def target(name: str) -> Any:
        module: Any = qformer
        for part in name.split("."):
            module = getattr(module, part)
        return module

    for i, layer in enumerate(qformer.encoder.layer):
        prefix = f"encoder.layer.{i}."
        pairs = {
            "attention.self.query": "attention.attention.query",
            "attention.self.key": "attention.attention.key",
            "attention.self.value": "attention.attention.value",
            "attention.output.dense": "attention.output.dense",
            "attention.output.LayerNorm": "attention.output.LayerNorm",
            "intermediate.dense": ["intermediate_query.dense", "intermediate.dense"],
            "output.dense": ["output_query.dense", "output.dense"],
            "output.LayerNorm": ["output_query.LayerNorm", "output.LayerNorm"],
        }
        for source, destinations in pairs.items():
            for destination in [destinations] if isinstance(destinations, str) else destinations:
                module = target(f"encoder.layer.{i}.{destination}")
                for kind in ("weight", "bias"):
                    key = f"{prefix}{source}.{kind}"
                    if key in state:
                        mapping.setdefault(key, []).append(getattr(module, kind))
        del layer
    mapping.setdefault("embeddings.LayerNorm.weight", []).extend(
        [qformer.layernorm.weight, heads.embed_norm.weight]
    )
    mapping.setdefault("embeddings.LayerNorm.bias", []).extend(
        [qformer.layernorm.bias, heads.embed_norm.bias]
    )
    mapping.setdefault("embeddings.word_embeddings.weight", []).append(heads.word_embeddings.weight)
    mapping.setdefault("embeddings.position_embeddings.weight", []).append(
        heads.position_embeddings.weight
    )
    copied = 0
    with torch.no_grad():
        for key, params in mapping.items():
            if key not in state:
                continue
            for param in params:
                weights = state[key]
                if key.endswith("position_embeddings.weight"):
                    weights = weights[: param.shape[0]]
                if weights.shape != param.shape:
                    raise TrainingConfigError(
                        f"model.qformer_init_dir: {key} has shape {tuple(weights.shape)}, the "
                        f"Q-Former needs {tuple(param.shape)}; match model.config.aligner.qformer "
                        "to the BERT's sizes"
                    )
                param.copy_(weights)
                copied += 1
    return copied


def _text_tokenizer(ctx: RunContext) -> Any:
    init_dir = ctx.config.model.qformer_init_dir
    if init_dir is not None:
        return AutoTokenizer.from_pretrained(str(init_dir))
    return ctx.tokenizer


def run_alignment_stage(ctx: RunContext) -> dict[str, float]:
    """Train the aligner; returns the last validation losses."""
    config = ctx.config.stage("alignment")
    assert isinstance(config, AlignmentStage)
    aligner = ctx.tower.aligner
    if isinstance(aligner, QFormerAligner):
        return _run_qformer(ctx, aligner, config)
    return _run_projector(ctx, config)


# ------------------------------------------------------------------------------ Q-Former
def _run_qformer(
    ctx: RunContext, aligner: QFormerAligner, config: AlignmentStage
) -> dict[str, float]:
    if not aligner.qformer.config.use_qformer_text_input:
        raise TrainingConfigError(
            "model.config.aligner.qformer.use_qformer_text_input must be true to train the "
            "Q-Former on report text (ITC/ITM/captioning)"
        )
    tokenizer = _text_tokenizer(ctx)
    hidden = aligner.qformer.config.hidden_size
    heads = AlignmentHeads(
        len(tokenizer), hidden, max(config.max_text_tokens, 8), config.contrastive_dim
    )
    resuming = ctx.resume and (ctx.stage_dir("alignment") / CHECKPOINT_NAME).is_file()
    if ctx.config.model.qformer_init_dir is not None and not resuming:
        copied = init_qformer_from_bert(aligner, heads, ctx.config.model.qformer_init_dir)
        logger.info("alignment: initialised the Q-Former from BERT (%d tensors)", copied)
    ctx.tower.requires_grad_(False)
    aligner.query_tokens.requires_grad_(True)
    aligner.qformer.requires_grad_(True)
    net = _AlignmentNet(aligner, heads).to(ctx.device)
    net.aligner.projection.requires_grad_(False)

    def encode_texts(split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [ctx.splits[split][i].report for i in indices]
        batch = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=config.max_text_tokens,
            return_tensors="pt",
        )
        return batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)

    def features(split: str, indices: list[int]) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(ctx.images[split][indices], dtype=np.float32))
        with torch.no_grad():
            return ctx.tower.encoder(pixels.to(ctx.device))

    label_sets = {
        split: np.array([r.binary_targets() for r in ctx.splits[split]], dtype=np.float32)
        for split in ("train", "val")
    }
    generator = torch.Generator().manual_seed(ctx.config.seed + 1)

    def losses(split: str, indices: list[int]) -> dict[str, torch.Tensor]:
        feats = features(split, indices)
        ids, mask = encode_texts(split, indices)
        batch = len(indices)
        queries = aligner.query_tokens.expand(batch, -1, -1)
        n_query = queries.shape[1]
        encoder_mask = torch.ones(feats.shape[:2], dtype=torch.long, device=ctx.device)
        image_out = aligner.qformer(
            query_embeds=queries, encoder_hidden_states=feats, encoder_attention_mask=encoder_mask
        ).last_hidden_state
        text_embeds = heads.embed(ids)
        text_out = aligner.qformer(
            query_embeds=text_embeds, query_length=0, attention_mask=mask
        ).last_hidden_state
        # ITC: similarity of an image and a text = best query.
        image_feat = F.normalize(heads.vision_proj(image_out).float(), dim=-1)
        text_feat = F.normalize(heads.text_proj(text_out[:, 0]).float(), dim=-1)
        temperature = heads.log_temperature.exp().clamp(min=0.01, max=0.5)
        sim = torch.einsum("iqd,jd->ijq", image_feat, text_feat).amax(-1) / temperature
        same = torch.from_numpy(label_sets[split][indices]).to(ctx.device)
        same_findings = (same[:, None, :] == same[None, :, :]).all(-1)
        # Reports of studies with identical findings are near-duplicates: count them as
        # positives too instead of pushing them apart.
        soft = same_findings.float() / same_findings.float().sum(1, keepdim=True)
        itc = 0.5 * (
            -(soft * F.log_softmax(sim, dim=1)).sum(1).mean()
            - (soft * F.log_softmax(sim.T, dim=1)).sum(1).mean()
        )
        # ITM: positive pairs and one hard negative text per image (other findings).
        with torch.no_grad():
            weights = F.softmax(sim.detach(), dim=1).masked_fill(same_findings, 0.0)
            has_negative = weights.sum(1) > 0
        itm = sim.new_zeros(())
        if bool(has_negative.any()):
            rows = torch.nonzero(has_negative).squeeze(1)
            negatives = (
                torch.multinomial(weights[rows].cpu() + 1e-12, 1, generator=generator)
                .squeeze(1)
                .to(ctx.device)
            )
            pair_images = torch.cat([torch.arange(batch, device=ctx.device), rows])
            pair_texts = torch.cat([torch.arange(batch, device=ctx.device), negatives])
            joint = torch.cat([queries[pair_images], text_embeds[pair_texts]], dim=1)
            joint_mask = torch.cat(
                [
                    torch.ones(len(pair_images), n_query, dtype=mask.dtype, device=ctx.device),
                    mask[pair_texts],
                ],
                dim=1,
            )
            joint_out = aligner.qformer(
                query_embeds=joint,
                query_length=n_query,
                attention_mask=joint_mask,
                encoder_hidden_states=feats[pair_images],
                encoder_attention_mask=encoder_mask[pair_images],
            ).last_hidden_state
            logits = heads.itm_head(joint_out[:, :n_query]).mean(1).float()
            labels = torch.cat(
                [
                    torch.ones(batch, dtype=torch.long, device=ctx.device),
                    torch.zeros(len(rows), dtype=torch.long, device=ctx.device),
                ]
            )
            itm = F.cross_entropy(logits, labels)
        # Captioning: text decoded causally, seeing every query.
        length = n_query + ids.shape[1]
        attend = torch.zeros(batch, length, length, dtype=torch.bool, device=ctx.device)
        attend[:, :n_query, :n_query] = True
        attend[:, n_query:, :n_query] = True
        causal = torch.tril(
            torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ctx.device)
        )
        attend[:, n_query:, n_query:] = causal[None] & mask[:, None, :].bool()
        caption_out = aligner.qformer(
            query_embeds=torch.cat([queries, text_embeds], dim=1),
            query_length=n_query,
            attention_mask=attend[:, None],
            encoder_hidden_states=feats,
            encoder_attention_mask=encoder_mask,
        ).last_hidden_state[:, n_query:]
        logits = heads.lm_logits(caption_out[:, :-1]).float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        caption = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        total = config.itc_weight * itc + config.itm_weight * itm + config.lm_weight * caption
        return {"loss": total, "itc_loss": itc, "itm_loss": itm, "caption_loss": caption}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        parts = losses("train", indices)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    def evaluate() -> dict[str, float]:
        n_val = len(ctx.splits["val"])
        if config.max_val_examples:
            n_val = min(n_val, config.max_val_examples)
        sums: dict[str, float] = {}
        chunks = 0
        for start in range(0, n_val, config.batch_size):
            indices = list(range(start, min(n_val, start + config.batch_size)))
            if len(indices) < 2:
                continue
            for key, value in losses("val", indices).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            chunks += 1
        return {key: value / max(chunks, 1) for key, value in sums.items()}

    n_train = ctx.train_size(config)
    trainer = ctx.trainer("alignment", net, config, metric="loss", mode="min")
    outcome = trainer.fit(n_train, loss_fn, evaluate, resume=ctx.resume)
    ctx.tower.requires_grad_(False)
    return {f"val_{k}": v for k, v in outcome.last_metrics.items()}


# ------------------------------------------------------------------------------ projectors
def _run_projector(ctx: RunContext, config: AlignmentStage) -> dict[str, float]:
    tower = ctx.tower
    tower.requires_grad_(False)
    tower.aligner.requires_grad_(True)
    llm = ctx.llm
    prompts = ctx.prompts
    instruction = ctx.model_config.prompt.report_instruction
    pad_id = int(ctx.tokenizer.pad_token_id)

    def loss_on(split: str, indices: list[int]) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(ctx.images[split][indices], dtype=np.float32))
        with torch.no_grad():
            feats = tower.encoder(pixels.to(ctx.device))
        tokens = tower.aligner(feats)
        encoded = [
            prompts.encode(
                findings=None, instruction=instruction, answer=ctx.splits[split][i].report
            )
            for i in indices
        ]
        return answer_loss(llm, encoded, list(tokens), pad_id)

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_on("train", indices), {}

    def evaluate() -> dict[str, float]:
        n_val = min(len(ctx.splits["val"]), config.max_val_examples or 10**9)
        losses = [
            float(loss_on("val", list(range(s, min(n_val, s + config.batch_size)))))
            for s in range(0, n_val, config.batch_size)
        ]
        return {"loss": float(np.mean(losses))}

    n_train = ctx.train_size(config)
    trainer = ctx.trainer("alignment", tower.aligner, config, metric="loss", mode="min")
    outcome = trainer.fit(n_train, loss_fn, evaluate, resume=ctx.resume)
    tower.requires_grad_(False)
    return {f"val_{k}": v for k, v in outcome.last_metrics.items()}


__all__ = ["AlignmentHeads", "init_qformer_from_bert", "run_alignment_stage"]
