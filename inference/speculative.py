"""Speculative greedy decoding with drafts from an n-gram table of report text.

Chest X-ray reports are formulaic ("There is no pleural effusion or pneumothorax."), so the
next few tokens of a draft report are often predictable from the last few. The
:class:`NgramTable` holds, for every context of 1 to ``order`` tokens seen often enough in
the training reports, the token that most often followed it. At each decoding step
:func:`lookup_greedy_search` chains its predictions into up to ``draft_tokens`` proposed
tokens and lets the LLM check all of them in one forward pass: it keeps the longest prefix
that greedy decoding would have produced, plus the LLM's own next token. A CPU decoding step
is bound by reading the weights, so checking nine tokens costs little more than producing
one (retrieval-based speculative decoding, He et al. 2023, "REST").

The text is greedy decoding's: every kept token is the LLM's argmax. Only float rounding can
differ, because a position's logits are computed in a forward pass over several tokens
instead of one (as with any speculative decoding).

:func:`lookup_greedy_search` is a ``custom_generate`` decoding loop for transformers'
``generate``, which still prepares the inputs, the cache, the logits processors, the stopping
criteria and the streamer. It decodes one sequence (batch size 1) without padding.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .errors import BundleError, InferenceError

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
    """An n-gram table and how many of its tokens to propose per decoding step."""

    table: NgramTable
    draft_tokens: int = 8

    def __post_init__(self) -> None:
        if self.draft_tokens < 1:
            raise InferenceError(f"draft_tokens must be >= 1, got {self.draft_tokens}")

    def generate_kwargs(self, streamer: Any = None) -> dict[str, Any]:
        """Keyword arguments that make transformers' ``generate`` decode this way.

        ``streamer`` takes the place of ``generate``'s own ``streamer`` argument.
        """
        return {
            "custom_generate": lookup_greedy_search,
            "ngram_table": self.table,
            "draft_tokens": self.draft_tokens,
            "token_streamer": streamer,
        }


def lookup_greedy_search(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    ngram_table: NgramTable | None = None,
    draft_tokens: int = 8,
    token_streamer: Any = None,
    **model_kwargs: Any,
) -> torch.LongTensor:
    """Greedy decoding that checks tokens proposed by an :class:`NgramTable` in batches.

    :meth:`LookupDecoding.generate_kwargs` gives ``generate`` the arguments that select it:
    ``custom_generate=lookup_greedy_search``, ``ngram_table=``, ``draft_tokens=`` and, to
    stream, ``token_streamer=`` (``generate`` hands its own ``streamer`` argument to built-in
    decoding loops only); ``generate`` supplies the other arguments. Returns the ids
    ``generate`` returns for greedy decoding: the prompt ids (none when the prompt came as
    ``inputs_embeds``) followed by the new tokens.

    Raises
    ------
    InferenceError
        Without a table, for more than one sequence, or for padded inputs.
    """
    if ngram_table is None:
        raise InferenceError("lookup decoding needs an n-gram table (ngram_table=...)")
    if input_ids.shape[0] != 1 or model_kwargs.get("attention_mask") is not None:
        raise InferenceError("lookup decoding runs one sequence without padding")
    streamer = token_streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())  # the prompt, as generate does
    cache = model_kwargs["past_key_values"]
    first = model(
        input_ids=None if "inputs_embeds" in model_kwargs else input_ids,
        inputs_embeds=model_kwargs.get("inputs_embeds"),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    sequence = input_ids
    generated: list[int] = []
    pending = _greedy(logits_processor, sequence, first.logits[:, -1:, :], [])
    while True:
        accepted = pending  # the LLM's choices; all but the last are in the cache already
        finished = False
        for count in range(1, len(accepted) + 1):
            step = torch.tensor([accepted[:count]], dtype=sequence.dtype, device=sequence.device)
            if bool(stopping_criteria(torch.cat([sequence, step], dim=1), None).any()):
                accepted, finished = accepted[:count], True
                break
        new = torch.tensor([accepted], dtype=sequence.dtype, device=sequence.device)
        sequence = torch.cat([sequence, new], dim=1)  # type: ignore[assignment]
        generated.extend(accepted)
        if streamer is not None:
            streamer.put(new.cpu())
        if finished:
            break
        room = generation_config.max_length - sequence.shape[1] - 1
        proposal = ngram_table.propose(generated, max(0, min(draft_tokens, room)))
        feed = [accepted[-1], *proposal]
        outputs = model(
            input_ids=torch.tensor([feed], dtype=sequence.dtype, device=sequence.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=len(feed),
        )
        predicted = _greedy(logits_processor, sequence, outputs.logits, proposal)
        matched = 0
        while matched < len(proposal) and proposal[matched] == predicted[matched]:
            matched += 1
        rejected = len(proposal) - matched
        if rejected:
            cache.crop(-rejected)
        pending = predicted[: matched + 1]
    if streamer is not None:
        streamer.end()
    return sequence


def _greedy(
    logits_processor: Any, sequence: torch.Tensor, logits: torch.Tensor, proposal: list[int]
) -> list[int]:
    """Argmax token at each position of ``logits`` (1, L, V), after the logits processors.

    Position ``i`` follows ``sequence`` extended by ``proposal[:i]``, the text the
    processors (a repetition penalty, for instance) must see there.
    """
    scores = logits[0].float()
    if len(logits_processor) > 0:
        extended = torch.cat(
            [sequence, torch.tensor([proposal], dtype=sequence.dtype, device=sequence.device)],
            dim=1,
        )
        scores = torch.stack(
            [
                logits_processor(extended[:, : sequence.shape[1] + i], scores[i : i + 1])[0]
                for i in range(scores.shape[0])
            ]
        )
    return [int(t) for t in scores.argmax(dim=-1).tolist()]


__all__ = ["LookupDecoding", "NgramTable", "lookup_greedy_search"]
