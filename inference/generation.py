"""Decoding with transformers' ``generate`` on spliced multimodal embeddings.

Greedy or beam search, a bound on new tokens, the KV cache (on by default), batches padded on
the left, stop at EOS, and token streaming to a callback or an iterator. Greedy
decoding uses n-gram lookup drafts when given a :class:`~inference.speculative.
LookupDecoding` (same text, fewer forward passes): a single sequence always, a batch up to
its ``max_batch``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TextIteratorStreamer,
    TextStreamer,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from inference.config import GenerationConfig
from inference.llm import LanguageModel
from inference.multimodal import ImageFeatureBatch, MultimodalBatch
from inference.speculative import (
    LookupDecoding,
    lookup_greedy_decode,
    lookup_greedy_decode_batch,
    supports_lookup,
)

TextCallback = Callable[[str], None]
#: What :func:`generate_ids` decodes from: spliced embeddings, or ids with image features.
Batch = MultimodalBatch | ImageFeatureBatch


class CallbackStreamer(TextStreamer):
    """Sends each finalised piece of decoded text to ``callback`` as it is generated."""

    def __init__(self, tokenizer: Any, callback: TextCallback) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.callback = callback

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.callback(text)


def generate_ids(
    llm: LanguageModel,
    batch: Batch,
    options: GenerationConfig,
    *,
    adapter: str | None,
    streamer: TextStreamer | None = None,
    lookup: LookupDecoding | None = None,
) -> torch.Tensor:
    """Generate new token ids ``(B, <= max_new_tokens)`` for a left-padded batch.

    Parameters
    ----------
    llm
        The language model.
    batch
        Left-padded inputs from :func:`~inference.multimodal.assemble_batch`, or from
        :func:`~inference.multimodal.assemble_feature_batch` for a model that puts image
        features in itself (never with lookup drafts).
    options
        Decoding options.
    adapter
        LoRA adapter to use (``None`` = base model).
    streamer
        Optional transformers streamer (batch size 1, greedy only).
    lookup
        N-gram drafts to check in batches (:func:`~inference.speculative.lookup_greedy_decode`);
        used for greedy decoding with the KV cache by a model whose cache can drop rejected
        drafts (:func:`~inference.speculative.supports_lookup`): for a single unpadded
        sequence, and for a batch of up to ``lookup.max_batch`` sequences
        (:func:`~inference.speculative.lookup_greedy_decode_batch`, not streamed); ignored
        otherwise.
    """
    size = batch.attention_mask.shape[0]
    if streamer is not None and (size != 1 or options.num_beams != 1):
        raise ValueError("streaming needs a single sequence and greedy decoding (num_beams=1)")
    with llm.adapter(adapter) as model, torch.inference_mode():
        if isinstance(batch, ImageFeatureBatch):
            return _generate_with_features(llm, model, batch, options, streamer)
        drafts = (
            lookup is not None
            and not options.stop_strings
            and options.cache_implementation == "dynamic"
            and options.num_beams == 1
            and options.use_cache
            and supports_lookup(model.config)
        )
        if drafts and _single_sequence(batch):
            assert lookup is not None
            return lookup_greedy_decode(
                model,
                batch.inputs_embeds,
                lookup,
                max_new_tokens=options.max_new_tokens,
                stop_token_ids=llm.stop_token_ids(),
                repetition_penalty=options.repetition_penalty,
                streamer=streamer,
            )
        if drafts and streamer is None and lookup is not None and 1 < size <= lookup.max_batch:
            return lookup_greedy_decode_batch(
                model,
                batch.inputs_embeds,
                batch.attention_mask,
                lookup,
                max_new_tokens=options.max_new_tokens,
                stop_token_ids=llm.stop_token_ids(),
                pad_token_id=llm.pad_token_id(),
                repetition_penalty=options.repetition_penalty,
            )
        output = model.generate(  # type: ignore[operator]  # peft's stub types it as Tensor
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            **_generate_options(llm, options, streamer, from_embeddings=True),
        )
    return output


def _generate_with_features(
    llm: LanguageModel,
    model: Any,
    batch: ImageFeatureBatch,
    options: GenerationConfig,
    streamer: TextStreamer | None,
) -> torch.Tensor:
    """``generate`` from token ids, the image features passed as the model's pre-encoded
    image output (``mm_encoder_outputs``) and ``token_type_ids`` marking image positions;
    returns the new ids only."""
    features = BaseModelOutputWithPooling(pooler_output=batch.image_features)
    output = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        mm_encoder_outputs={"image": features},
        **_generate_options(llm, options, streamer),
    )
    return output[:, batch.input_ids.shape[1]:]


def _generate_options(
    llm: LanguageModel,
    options: GenerationConfig,
    streamer: TextStreamer | None,
    *,
    from_embeddings: bool = False,
) -> dict[str, Any]:
    """``generate``'s decoding keywords for ``options`` (greedy or beams, EOS and padding,
    stop strings, a static KV cache when asked for).

    From embeddings, the repetition penalty is handed over as a logits processor of its own:
    ``generate``'s built-in one skips as many generated tokens as a row has padding (it
    takes them for the padded prompt, which is not among the ids), so a left-padded row of
    a batch would go unpenalised (seen with transformers 5.25).
    """
    penalty = options.repetition_penalty
    extra: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "num_beams": options.num_beams,
        "do_sample": False,
        "use_cache": options.use_cache,
        "repetition_penalty": 1.0 if from_embeddings else penalty,
        "eos_token_id": llm.stop_token_ids(),
        "pad_token_id": llm.pad_token_id(),
        "streamer": streamer,
    }
    if from_embeddings and penalty != 1.0:
        extra["logits_processor"] = LogitsProcessorList(
            [RepetitionPenaltyLogitsProcessor(penalty)]
        )
    if options.stop_strings:
        extra.update(stop_strings=list(options.stop_strings), tokenizer=llm.tokenizer)
    if options.use_cache and options.cache_implementation == "static":
        extra["cache_implementation"] = "static"
    return extra


def _single_sequence(batch: MultimodalBatch) -> bool:
    return batch.inputs_embeds.shape[0] == 1 and bool(batch.attention_mask.all())


def decode(llm: LanguageModel, ids: torch.Tensor, stop_strings: tuple[str, ...] = ()) -> list[str]:
    """Decode generated ids to text, dropping special tokens, everything from the first stop
    string on, and surrounding space."""
    texts = llm.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [cut_at_stop(text, stop_strings).strip() for text in texts]


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    """``text`` up to the first of ``stop_strings`` (all of it when none occurs)."""
    ends = [i for i in (text.find(stop) for stop in stop_strings) if i >= 0]
    return text[: min(ends)] if ends else text


def cut_stream_at_stop(pieces: Iterable[str], stop_strings: tuple[str, ...]) -> Iterator[str]:
    """The non-empty ``pieces`` up to the first of ``stop_strings``, which may span pieces.

    The last ``len(longest stop) - 1`` characters are held back until the next piece shows
    whether they begin a stop string. All pieces are consumed, so a generating thread that
    feeds them is never left blocked.
    """
    if not stop_strings:
        yield from (piece for piece in pieces if piece)
        return
    hold = max(len(stop) for stop in stop_strings) - 1
    pending = ""
    stopped = False
    for piece in pieces:
        if stopped or not piece:
            continue
        pending += piece
        cut = cut_at_stop(pending, stop_strings)
        if len(cut) < len(pending):
            stopped = True
            if cut:
                yield cut
            pending = ""
            continue
        if len(pending) > hold:
            ready, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
            yield ready
    if pending and not stopped:
        yield pending


def generate_texts(
    llm: LanguageModel,
    batch: Batch,
    options: GenerationConfig,
    *,
    adapter: str | None,
    on_text: TextCallback | None = None,
    lookup: LookupDecoding | None = None,
) -> list[str]:
    """Generate and decode; ``on_text`` receives text pieces as they appear."""
    streamer = CallbackStreamer(llm.tokenizer, on_text) if on_text is not None else None
    ids = generate_ids(llm, batch, options, adapter=adapter, streamer=streamer, lookup=lookup)
    return decode(llm, ids, options.stop_strings)


def stream_text(
    llm: LanguageModel,
    batch: Batch,
    options: GenerationConfig,
    *,
    adapter: str | None,
    timeout: float | None = 600.0,
    lookup: LookupDecoding | None = None,
) -> Iterator[str]:
    """Yield text pieces of one sequence as they are generated (generation runs in a thread).

    An exception raised by generation is re-raised in the consumer after the stream ends.
    """
    streamer = TextIteratorStreamer(
        llm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            generate_ids(llm, batch, options, adapter=adapter, streamer=streamer, lookup=lookup)
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, name="generate-stream", daemon=True)
    worker.start()
    yield from cut_stream_at_stop(streamer, options.stop_strings)
    worker.join()
    if failure:
        raise failure[0]


class TextGenerator(Protocol):
    """The generation seam: how :class:`~inference.model.ChestXrayVLM` turns a prepared,
    left-padded batch (:mod:`inference.multimodal`) into text.

    One implementation today, :class:`TransformersGenerator`. An engine with its own
    scheduler (vLLM, SGLang: prompt embeddings, multi-LoRA) would be one more class with
    these two methods, given to the model at construction.
    """

    def generate(
        self,
        batch: Batch,
        options: GenerationConfig,
        *,
        adapter: str | None,
        on_text: TextCallback | None = None,
    ) -> list[str]:
        """Each sequence's text; ``on_text`` gets text pieces as they appear (one
        sequence)."""
        ...

    def stream(
        self, batch: Batch, options: GenerationConfig, *, adapter: str | None
    ) -> Iterator[str]:
        """One sequence's text pieces as they are generated."""
        ...


@dataclass
class TransformersGenerator:
    """:class:`TextGenerator` on the node's :class:`~inference.llm.LanguageModel`:
    transformers' ``generate`` and the node's lookup decoding loops.

    Parameters
    ----------
    llm
        The language model with its adapters.
    lookup
        N-gram drafts (:mod:`inference.speculative`); ``None`` decodes one token per pass.
    """

    llm: LanguageModel
    lookup: LookupDecoding | None = None

    def generate(
        self,
        batch: Batch,
        options: GenerationConfig,
        *,
        adapter: str | None,
        on_text: TextCallback | None = None,
    ) -> list[str]:
        """See :meth:`TextGenerator.generate`."""
        return generate_texts(self.llm, batch, options, adapter=adapter, on_text=on_text,
                              lookup=self.lookup)

    def stream(
        self, batch: Batch, options: GenerationConfig, *, adapter: str | None
    ) -> Iterator[str]:
        """See :meth:`TextGenerator.stream`."""
        return stream_text(self.llm, batch, options, adapter=adapter, lookup=self.lookup)


__all__ = [
    "Batch",
    "CallbackStreamer",
    "TextGenerator",
    "TransformersGenerator",
    "TextCallback",
    "cut_at_stop",
    "cut_stream_at_stop",
    "decode",
    "generate_ids",
    "generate_texts",
    "stream_text",
]
