"""Splicing image tokens into the LLM input: padding, masks, labels."""

from __future__ import annotations

import torch

from inference import IGNORE_INDEX, EncodedPrompt, assemble_batch


def _embedding() -> torch.nn.Embedding:
    torch.manual_seed(0)
    return torch.nn.Embedding(50, 8)


def test_left_padding_puts_every_sequence_end_at_the_right() -> None:
    emb = _embedding()
    prompts = [EncodedPrompt([1, 2, 3], [4]), EncodedPrompt([1], [4])]
    images = [torch.randn(2, 8), torch.randn(2, 8)]
    batch = assemble_batch(emb, prompts, images, pad_token_id=0, padding_side="left")
    assert batch.inputs_embeds.shape == (2, 6, 8)
    assert batch.attention_mask.tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1]]
    # image tokens sit right after the prefix, unchanged
    assert torch.equal(batch.inputs_embeds[0, 3:5], images[0])
    assert torch.equal(batch.inputs_embeds[1, 3:5], images[1])
    assert torch.equal(batch.inputs_embeds[1, 5], emb.weight[4])
    assert (batch.labels == IGNORE_INDEX).all()


def test_right_padded_training_batch_scores_only_the_answer() -> None:
    emb = _embedding()
    prompts = [
        EncodedPrompt([1, 2], [3], target_ids=[7, 8, 9]),
        EncodedPrompt([1], [3], target_ids=[7]),
    ]
    batch = assemble_batch(
        emb,
        prompts,
        [torch.randn(1, 8)] * 2,
        pad_token_id=0,
        padding_side="right",
        with_targets=True,
    )
    assert batch.labels.tolist() == [
        [IGNORE_INDEX] * 4 + [7, 8, 9],
        [IGNORE_INDEX] * 3 + [7] + [IGNORE_INDEX] * 3,
    ]
    assert batch.attention_mask.tolist() == [[1] * 7, [1] * 4 + [0] * 3]
