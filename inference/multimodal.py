"""Splicing image-token embeddings into the LLM's input embeddings.

Each sequence is ``embed(prefix) + image tokens + embed(suffix) [+ embed(target)]``. Batches
are padded on the left for generation (so every sequence ends where decoding starts) and on
the right for training; padded positions get attention mask 0 and label -100.

Models that merge pre-encoded image features themselves (Gemma 3: its image tokens attend to
each other both ways, which it reads from ``token_type_ids``, and its ``generate`` does not
start from embeddings) get token ids instead (:func:`assemble_feature_batch`): the prompt
with the image token at each image position, and the features beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from inference.prompt import EncodedPrompt

IGNORE_INDEX = -100


@dataclass
class MultimodalBatch:
    """Model inputs for a batch of prompts."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def assemble_batch(
    embeddings: torch.nn.Embedding,
    prompts: Sequence[EncodedPrompt],
    image_tokens: Sequence[torch.Tensor],
    *,
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "left",
    with_targets: bool = False,
) -> MultimodalBatch:
    """Build ``inputs_embeds``, ``attention_mask`` and ``labels`` for a batch.

    Parameters
    ----------
    embeddings
        The LLM's token embedding layer.
    prompts
        Encoded prompts, one per sequence.
    image_tokens
        ``(T_i, H)`` image-token embeddings, one per sequence.
    pad_token_id
        Token whose embedding fills padded positions (masked out anyway).
    padding_side
        ``"left"`` for generation, ``"right"`` for training.
    with_targets
        Append each prompt's ``target_ids`` and label them (training).

    Returns
    -------
    MultimodalBatch
        Tensors on the embedding layer's device and dtype; labels are ``IGNORE_INDEX``
        everywhere but on target tokens.
    """
    if len(prompts) != len(image_tokens) or not prompts:
        raise ValueError("need one image-token tensor per prompt, and at least one prompt")
    device, dtype = embeddings.weight.device, embeddings.weight.dtype
    sequences: list[torch.Tensor] = []
    label_rows: list[torch.Tensor] = []
    for prompt, image in zip(prompts, image_tokens, strict=True):
        if image.dim() != 2 or image.shape[1] != embeddings.embedding_dim:
            raise ValueError(
                f"image tokens must be (T, {embeddings.embedding_dim}), got {tuple(image.shape)}"
            )
        target = prompt.target_ids if with_targets else []
        ids_before = torch.tensor(prompt.prefix_ids, dtype=torch.long, device=device)
        ids_after = torch.tensor(prompt.suffix_ids + target, dtype=torch.long, device=device)
        sequences.append(
            torch.cat([embeddings(ids_before), image.to(device, dtype), embeddings(ids_after)])
        )
        prompt_len = len(prompt.prefix_ids) + image.shape[0] + len(prompt.suffix_ids)
        labels = torch.full((prompt_len + len(target),), IGNORE_INDEX, dtype=torch.long)
        if target:
            labels[prompt_len:] = torch.tensor(target, dtype=torch.long)
        label_rows.append(labels)

    longest = max(seq.shape[0] for seq in sequences)
    pad_vector = embeddings(torch.tensor([pad_token_id], device=device))[0]
    batch_embeds, batch_mask, batch_labels = [], [], []
    for seq, labels in zip(sequences, label_rows, strict=True):
        missing = longest - seq.shape[0]
        pad = pad_vector.expand(missing, -1)
        mask = torch.ones(seq.shape[0], dtype=torch.long)
        pad_mask = torch.zeros(missing, dtype=torch.long)
        pad_labels = torch.full((missing,), IGNORE_INDEX, dtype=torch.long)
        if padding_side == "left":
            batch_embeds.append(torch.cat([pad, seq]))
            batch_mask.append(torch.cat([pad_mask, mask]))
            batch_labels.append(torch.cat([pad_labels, labels]))
        else:
            batch_embeds.append(torch.cat([seq, pad]))
            batch_mask.append(torch.cat([mask, pad_mask]))
            batch_labels.append(torch.cat([labels, pad_labels]))
    return MultimodalBatch(
        inputs_embeds=torch.stack(batch_embeds),
        attention_mask=torch.stack(batch_mask).to(device),
        labels=torch.stack(batch_labels).to(device),
    )


@dataclass
class ImageFeatureBatch:
    """Token ids with image placeholders, and the image features to put there."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    #: 1 at image positions, 0 elsewhere.
    token_type_ids: torch.Tensor
    #: ``(B, T, H)``: each sequence's image tokens, in order.
    image_features: torch.Tensor


def assemble_feature_batch(
    prompts: Sequence[EncodedPrompt],
    image_tokens: Sequence[torch.Tensor],
    *,
    image_token_id: int,
    pad_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> ImageFeatureBatch:
    """Build a left-padded :class:`ImageFeatureBatch` for generation.

    Parameters
    ----------
    prompts
        Encoded prompts, one per sequence.
    image_tokens
        ``(T, H)`` image-token embeddings, one per sequence, all of one length.
    image_token_id
        The token the model replaces by image features.
    pad_token_id
        The token at padded positions.
    device, dtype
        Where the features go, and their dtype (the LLM's).
    """
    if len(prompts) != len(image_tokens) or not prompts:
        raise ValueError("need one image-token tensor per prompt, and at least one prompt")
    if len({tuple(t.shape) for t in image_tokens}) != 1:
        raise ValueError("every sequence needs image tokens of the same shape")
    rows = [
        (prompt.prefix_ids, image.shape[0], prompt.suffix_ids)
        for prompt, image in zip(prompts, image_tokens, strict=True)
    ]
    longest = max(len(before) + count + len(after) for before, count, after in rows)
    ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, (before, count, after) in enumerate(rows):
        sequence = torch.tensor([*before, *[image_token_id] * count, *after], dtype=torch.long)
        start = longest - sequence.shape[0]
        ids[row, start:] = sequence
        mask[row, start:] = 1
        types[row, start + len(before): start + len(before) + count] = 1
    return ImageFeatureBatch(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        token_type_ids=types.to(device),
        image_features=torch.stack(list(image_tokens)).to(device, dtype),
    )


__all__ = [
    "IGNORE_INDEX",
    "ImageFeatureBatch",
    "MultimodalBatch",
    "assemble_batch",
    "assemble_feature_batch",
]
