"""Language-model loss on answer tokens only, for prompts with spliced image tokens.

Batches are built with the same :class:`inference.PromptBuilder` and
:func:`inference.assemble_batch` as inference (right padding, targets appended), so training
and inference prompts never differ. The LM head is applied only where a target token is
predicted: with a 49k vocabulary this halves the cost of a step compared with computing
logits for every prompt position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel

from inference import IGNORE_INDEX, EncodedPrompt, assemble_batch


def _base_model(model: PreTrainedModel | PeftModel) -> Any:
    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model


def answer_loss(
    model: PreTrainedModel | PeftModel,
    prompts: Sequence[EncodedPrompt],
    image_tokens: Sequence[torch.Tensor],
    pad_token_id: int,
) -> torch.Tensor:
    """Mean cross-entropy of the target tokens of ``prompts`` given their image tokens.

    Parameters
    ----------
    model
        The causal LM, with or without peft adapters (LoRA layers are injected in place, so
        the active adapter takes part).
    prompts
        Encoded prompts with ``target_ids``.
    image_tokens
        ``(T_i, H)`` image-token embeddings per prompt (may require grad).
    pad_token_id
        Padding token.
    """
    base = _base_model(model)
    batch = assemble_batch(
        base.get_input_embeddings(),
        prompts,
        image_tokens,
        pad_token_id=pad_token_id,
        padding_side="right",
        with_targets=True,
    )
    hidden = base.model(  # the decoder stack without the LM head
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask
    ).last_hidden_state
    targets = batch.labels[:, 1:]
    scored = targets != IGNORE_INDEX
    logits = base.lm_head(hidden[:, :-1][scored])
    return F.cross_entropy(logits.float(), targets[scored])


__all__ = ["answer_loss"]
