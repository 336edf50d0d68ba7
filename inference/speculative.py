"""Speculative greedy decoding with drafts from an n-gram table of report text.

Chest X-ray reports are formulaic ("There is no pleural effusion or pneumothorax."), so the
next few tokens of a draft report are often predictable from the last few. The
:class:`NgramTable` holds, for every context of 1 to ``order`` tokens seen often enough in
the training reports, the token that most often followed it. At each decoding step
:func:`lookup_greedy_decode` chains its predictions into up to ``draft_tokens`` proposed
tokens and lets the LLM check all of them in one forward pass: it keeps the longest prefix
that greedy decoding would have produced, plus the LLM's own next token. A CPU decoding step
is bound by reading the weights, so checking nine tokens costs little more than producing
one (retrieval-based speculative decoding, He et al. 2023, "REST").

The text is greedy decoding's: every kept token is the LLM's argmax. Only float rounding can
differ, because a position's logits are computed in a forward pass over several tokens
instead of one (as with any speculative decoding).

:func:`lookup_greedy_decode` is a decoding loop of its own: it keeps its own KV cache and
calls only the model's documented forward, so it does not depend on what transformers'
``generate`` hands to its internal loops (which changed in transformers 5.24). It decodes
one sequence (batch size 1) without padding; :func:`lookup_greedy_decode_batch` decodes a
left-padded batch, keeping per step the drafted tokens every sequence matched.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from inference.errors import BundleError, InferenceError

TABLE_FORMAT = "ngram-draft-table"
TABLE_VERSION = 1
_START = -1  # context filler before a text's first token


class NgramTable:
    """The most frequent next token after each context of 1 to ``order`` tokens.

    Parameters
    ----------
    order
        Longest context, in tokens.
    next_token
        Context (a tuple of token ids; ``-1`` stands for "before the text") -> next token.
    min_count
        How often each kept (context, next token) pair occurred in the texts it was built
        from (recorded for provenance).
    """

    def __init__(self, order: int, next_token: dict[tuple[int, ...], int], min_count: int = 2):
        if order < 1:
            raise InferenceError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.next_token = next_token
        self.min_count = min_count

    def __len__(self) -> int:
        return len(self.next_token)

    @classmethod
    def build(
        cls, texts: Iterable[Sequence[int]], *, order: int = 4, min_count: int = 2
    ) -> NgramTable:
        """Count next tokens over tokenised texts and keep the frequent ones.

        Parameters
        ----------
        texts
            Token ids of each text (the report targets, each ending with its stop token).
        order
            Longest context, in tokens.
        min_count
            A context is kept only when its most frequent next token followed it at least
            this often, so wording seen once (a rare phrase, a name) never enters the table.
        """
        if min_count < 1:
            raise InferenceError(f"min_count must be >= 1, got {min_count}")
        counts: defaultdict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
        for ids in texts:
            padded = [_START] * order + [int(i) for i in ids]
            for end in range(order, len(padded)):
                for n in range(1, order + 1):
                    counts[tuple(padded[end - n : end])][padded[end]] += 1
        table = {}
        for context, followers in counts.items():
            token, count = followers.most_common(1)[0]
            if count >= min_count:
                table[context] = token
        return cls(order, table, min_count)

    def propose(self, generated: Sequence[int], max_tokens: int) -> list[int]:
        """Chain up to ``max_tokens`` predicted tokens after the ``generated`` ones.

        Each token comes from the longest context the table knows; proposing stops where
        it knows none.
        """
        context = [_START] * self.order + list(generated[-self.order :])
        proposed: list[int] = []
        while len(proposed) < max_tokens:
            for n in range(self.order, 0, -1):
                token = self.next_token.get(tuple(context[-n:]))
                if token is not None:
                    break
            else:
                break
            proposed.append(token)
            context.append(token)
        return proposed

    def save(self, path: str | PathLike[str]) -> None:
        """Write the table as JSON (contexts in a stable order)."""
        entries = sorted([*context, token] for context, token in self.next_token.items())
        payload = {
            "format": TABLE_FORMAT,
            "format_version": TABLE_VERSION,
            "order": self.order,
            "min_count": self.min_count,
            "entries": entries,
        }
        Path(path).write_text(json.dumps(payload, separators=(",", ":")) + "\n", "utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> NgramTable:
        """Read a table written by :meth:`save`.

        Raises
        ------
        BundleError
            For a file that is not a readable table of this format.
        """
        try:
            payload = json.loads(Path(path).read_text("utf-8"))
            if payload.get("format") != TABLE_FORMAT:
                raise ValueError(f"not a {TABLE_FORMAT}")
            if payload.get("format_version") != TABLE_VERSION:
                raise ValueError(f"format version {payload.get('format_version')!r}")
            order = int(payload["order"])
            table = {tuple(int(t) for t in e[:-1]): int(e[-1]) for e in payload["entries"]}
            return cls(order, table, int(payload.get("min_count", 1)))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise BundleError(f"{path}: unreadable n-gram table ({exc})") from exc


@dataclass(frozen=True)
class LookupDecoding:
    """An n-gram table, how many of its tokens to propose per decoding step, and up to which
    batch size."""

    table: NgramTable
    draft_tokens: int = 8
    #: Largest batch decoded with drafts (:func:`lookup_greedy_decode_batch`); larger
    #: batches decode plainly.
    max_batch: int = 1

    def __post_init__(self) -> None:
        if self.draft_tokens < 1:
            raise InferenceError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
        if self.max_batch < 1:
            raise InferenceError(f"max_batch must be >= 1, got {self.max_batch}")


def cache_keyword(model: Any) -> str:
    """The name under which the model's forward takes its KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name is deprecated
    until 5.40); the loop reads the documented signature of the causal LM's ``forward``
    (under a peft wrapper, the base model's) and passes the cache under the name it has.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def supports_lookup(config: Any) -> bool:
    """Whether lookup decoding can run on a model with this transformers config.

    Rejected proposals are removed from the KV cache with ``Cache.crop``, which puts back
    only full-attention layers exactly: layers with a sliding window (Gemma 3, Mistral) or
    a recurrent state forget what they dropped. Such models decode plainly.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "sliding_window", None):
        return False
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
    return all(kind == "full_attention" for kind in layer_types)


@torch.inference_mode()
def lookup_greedy_decode(
    model: Any,
    inputs_embeds: torch.Tensor,
    lookup: LookupDecoding,
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    repetition_penalty: float = 1.0,
    streamer: Any = None,
) -> torch.LongTensor:
    """Greedy decoding that checks tokens proposed by an :class:`NgramTable` in batches.

    The loop owns its KV cache (a :class:`transformers.DynamicCache`) and calls only the
    model's documented forward (``inputs_embeds`` / ``input_ids``, the cache under the name
    :func:`cache_keyword` finds, ``use_cache``, ``logits_to_keep``), so it depends on
    nothing ``generate`` passes to its internal loops. It writes the tokens that
    ``generate(inputs_embeds=..., do_sample=False, num_beams=1, repetition_penalty=...)``
    writes, up to float rounding.

    Parameters
    ----------
    model
        A transformers causal LM (or a peft model wrapping one).
    inputs_embeds
        The prompt, ``(1, L, hidden)``, without padding.
    lookup
        The n-gram table and how many tokens to propose per step.
    max_new_tokens
        Most tokens to write.
    stop_token_ids
        Tokens that end the text; the stop token is kept, as ``generate`` keeps it.
    repetition_penalty
        As transformers' ``RepetitionPenaltyLogitsProcessor`` applies it, over the generated
        tokens (a prompt given as embeddings has no token ids).
    streamer
        A transformers streamer: it gets an empty prompt, then each accepted run of tokens.

    Returns
    -------
    torch.LongTensor
        The new token ids, ``(1, n)`` with ``n <= max_new_tokens``.

    Raises
    ------
    InferenceError
        For more than one sequence or a bound below one token.
    """
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise InferenceError("lookup decoding runs one sequence without padding")
    if max_new_tokens < 1:
        raise InferenceError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = inputs_embeds.device
    stops = set(int(t) for t in stop_token_ids)
    penalty = _penalty(repetition_penalty)
    if streamer is not None:
        streamer.put(torch.empty((1, 0), dtype=torch.long))  # the prompt: none as token ids
    cache = DynamicCache()
    cache_argument = {cache_keyword(model): cache}
    first = model(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1, **cache_argument)
    generated: list[int] = []
    pending = _greedy(penalty, generated, first.logits[0, -1:, :], [], device)
    while True:
        accepted = pending  # the LLM's own choices; all but the last are in the cache already
        finished = False
        for count, token in enumerate(accepted, start=1):
            if token in stops or len(generated) + count >= max_new_tokens:
                accepted, finished = accepted[:count], True
                break
        generated.extend(accepted)
        if streamer is not None:
            streamer.put(torch.tensor([accepted], dtype=torch.long))
        if finished:
            break
        room = max_new_tokens - len(generated) - 1
        proposal = lookup.table.propose(generated, max(0, min(lookup.draft_tokens, room)))
        feed = [accepted[-1], *proposal]
        outputs = model(
            input_ids=torch.tensor([feed], dtype=torch.long, device=device),
            use_cache=True,
            logits_to_keep=len(feed),
            **cache_argument,
        )
        predicted = _greedy(penalty, generated, outputs.logits[0], proposal, device)
        matched = 0
        while matched < len(proposal) and proposal[matched] == predicted[matched]:
            matched += 1
        rejected = len(proposal) - matched
        if rejected:
            cache.crop(-rejected)  # documented: a negative count removes that many tokens
        pending = predicted[: matched + 1]
    if streamer is not None:
        streamer.end()
    return torch.tensor([generated], dtype=torch.long, device=device)  # type: ignore[return-value]


@torch.inference_mode()
def lookup_greedy_decode_batch(
    model: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    lookup: LookupDecoding,
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    repetition_penalty: float = 1.0,
) -> torch.LongTensor:
    """:func:`lookup_greedy_decode` for a left-padded batch: every sequence proposes its own
    n-gram drafts, one forward pass checks all of them, and each step keeps as many drafted
    tokens as the sequence that matched fewest (plus the LLM's next token): the KV cache of
    a batch has one length, and every kept token is each sequence's greedy argmax.

    Sequences that have stopped are carried along (their rows are computed and dropped). The
    text of each sequence is what ``generate(inputs_embeds=..., attention_mask=...,
    do_sample=False, num_beams=1)`` writes for it, up to float rounding.

    Parameters
    ----------
    model
        A transformers causal LM (or a peft model wrapping one).
    inputs_embeds
        The prompts, ``(B, L, hidden)``, padded on the left.
    attention_mask
        ``(B, L)``: 1 on prompt positions, 0 on padding.
    lookup
        The n-gram table and how many tokens to propose per step.
    max_new_tokens
        Most tokens to write per sequence.
    stop_token_ids
        Tokens that end a sequence (kept, as ``generate`` keeps them).
    pad_token_id
        Written after a sequence's end, as ``generate`` pads finished sequences.
    repetition_penalty
        As in :func:`lookup_greedy_decode`.

    Returns
    -------
    torch.LongTensor
        New token ids ``(B, n)``, each row padded after its end.

    Raises
    ------
    InferenceError
        For inputs that are not a batch of prompts with a mask, or a bound below one token.
    """
    if inputs_embeds.dim() != 3 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise InferenceError("batched lookup decoding needs (B, L, H) prompts and a (B, L) mask")
    if max_new_tokens < 1:
        raise InferenceError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = inputs_embeds.device
    size = inputs_embeds.shape[0]
    stops = set(int(t) for t in stop_token_ids)
    penalty = _penalty(repetition_penalty)
    cache = DynamicCache()
    cache_argument = {cache_keyword(model): cache}
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    first = model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                  use_cache=True, logits_to_keep=1, **cache_argument)
    next_position = positions[:, -1] + 1
    generated: list[list[int]] = [[] for _ in range(size)]
    active = [True] * size
    pending = [_greedy(penalty, generated[b], first.logits[b, -1:, :], [], device)
               for b in range(size)]
    while True:
        for b in range(size):
            if not active[b]:
                continue
            accepted = pending[b]
            for count, token in enumerate(accepted, start=1):
                if token in stops or len(generated[b]) + count >= max_new_tokens:
                    accepted, active[b] = accepted[:count], False
                    break
            generated[b].extend(accepted)
        running = [b for b in range(size) if active[b]]
        if not running:
            break
        room = min(max_new_tokens - len(generated[b]) - 1 for b in running)
        limit = max(0, min(lookup.draft_tokens, room))
        proposals = [lookup.table.propose(generated[b], limit) if active[b] else []
                     for b in range(size)]
        width = max(len(proposals[b]) for b in running)  # no columns nobody drafted into
        feed = torch.full((size, width + 1), pad_token_id, dtype=torch.long, device=device)
        for b in running:
            row = [generated[b][-1], *proposals[b]]
            feed[b, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        mask = torch.cat([mask, mask.new_ones(size, width + 1)], dim=1)
        step_positions = next_position[:, None] + torch.arange(width + 1, device=device)
        outputs = model(input_ids=feed, attention_mask=mask, position_ids=step_positions,
                        use_cache=True, logits_to_keep=width + 1, **cache_argument)
        predicted: dict[int, list[int]] = {}
        matched = width
        for b in running:
            predicted[b] = _greedy(penalty, generated[b], outputs.logits[b], proposals[b],
                                   device)
            same = 0
            while same < len(proposals[b]) and proposals[b][same] == predicted[b][same]:
                same += 1
            matched = min(matched, same)
        if width - matched:
            cache.crop(-(width - matched))  # every row keeps 1 + matched of the fed tokens
            mask = mask[:, : mask.shape[1] - (width - matched)]
        next_position = next_position + matched + 1
        for b in running:
            pending[b] = predicted[b][: matched + 1]
    longest = max(len(ids) for ids in generated)
    out = torch.full((size, longest), pad_token_id, dtype=torch.long, device=device)
    for b, ids in enumerate(generated):
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
    return out  # type: ignore[return-value]


def _penalty(repetition_penalty: float) -> LogitsProcessorList:
    """transformers' repetition penalty as a processor list (empty at 1.0)."""
    if repetition_penalty == 1.0:
        return LogitsProcessorList()
    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(repetition_penalty)])


def _greedy(
    processors: LogitsProcessorList,
    generated: list[int],
    logits: torch.Tensor,
    proposal: list[int],
    device: torch.device,
) -> list[int]:
    """Argmax token at each position of ``logits`` ``(L, V)``, after the logits processors.

    Position ``i`` follows ``generated`` extended by ``proposal[:i]``, the text the
    processors (a repetition penalty, for instance) must see there.
    """
    scores = logits.float()
    if len(processors) > 0:
        extended = torch.tensor([[*generated, *proposal]], dtype=torch.long, device=device)
        scores = torch.cat(
            [
                processors(extended[:, : len(generated) + i], scores[i : i + 1])  # type: ignore[arg-type]
                for i in range(scores.shape[0])
            ]
        )
    return [int(t) for t in scores.argmax(dim=-1).tolist()]


__all__ = [
    "LookupDecoding",
    "NgramTable",
    "cache_keyword",
    "lookup_greedy_decode",
    "lookup_greedy_decode_batch",
    "supports_lookup",
]
