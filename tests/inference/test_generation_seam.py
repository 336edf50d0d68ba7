"""The generation seam: every text path of the model goes through its ``TextGenerator``, so
an engine is one more class given at construction (tiny model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import ChestXrayVLM, GenerationConfig, RuntimeOptions, StudyRequest
from inference.generation import Batch, TextCallback, TextGenerator, TransformersGenerator
from inference.model import ChatRequest

OPTIONS = GenerationConfig(max_new_tokens=12)


class RecordingGenerator:
    """A second :class:`TextGenerator`: transformers underneath, each call written down
    (method, adapter, batch size), as an engine of its own would receive them."""

    def __init__(self, inner: TextGenerator) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str | None, int]] = []

    def generate(
        self,
        batch: Batch,
        options: GenerationConfig,
        *,
        adapter: str | None,
        on_text: TextCallback | None = None,
    ) -> list[str]:
        self.calls.append(("generate", adapter, int(batch.attention_mask.shape[0])))
        return self.inner.generate(batch, options, adapter=adapter, on_text=on_text)

    def stream(
        self, batch: Batch, options: GenerationConfig, *, adapter: str | None
    ) -> Iterator[str]:
        self.calls.append(("stream", adapter, int(batch.attention_mask.shape[0])))
        return self.inner.stream(batch, options, adapter=adapter)


@pytest.fixture(scope="module")
def models(tiny_bundle: Path) -> tuple[ChestXrayVLM, ChestXrayVLM, RecordingGenerator]:
    plain = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu"))
    assert isinstance(plain.generator, TransformersGenerator)
    recorder = RecordingGenerator(TransformersGenerator(plain.llm, plain.lookup))
    seamed = ChestXrayVLM(
        plain.config, plain.vision, plain.llm, plain.thresholds, tasks=plain.tasks,
        name=plain.name, version=plain.version, generator=recorder,
    )
    return plain, seamed, recorder


def test_every_text_path_goes_through_the_models_generator(
    models: tuple[ChestXrayVLM, ChestXrayVLM, RecordingGenerator], chest_cr_path: Path
) -> None:
    plain, seamed, recorder = models
    analysis = seamed.analyse([chest_cr_path])
    report, chat = seamed.tasks.get("report"), seamed.tasks.get("chat")

    draft = seamed.generate_report([chest_cr_path], "Cough.", generation=OPTIONS).text
    assert draft == plain.generate_report([chest_cr_path], "Cough.", generation=OPTIONS).text
    drafts = seamed.generate_reports([StudyRequest(analysis), StudyRequest(analysis, "Fever.")],
                                     generation=OPTIONS)
    streamed = "".join(seamed.stream_report(analysis, "Cough.", generation=OPTIONS)[1]).strip()
    answer = seamed.chat(analysis, draft, [], "Is the heart enlarged?", generation=OPTIONS)
    answers = seamed.chat_many([ChatRequest(analysis, draft, "Any effusion?")],
                               generation=OPTIONS)
    pieces = "".join(seamed.stream_chat(analysis, draft, [], "Is the heart enlarged?",
                                        generation=OPTIONS)).strip()
    assert recorder.calls == [
        ("generate", report, 1), ("generate", report, 2), ("stream", report, 1),
        ("generate", chat, 1), ("generate", chat, 1), ("stream", chat, 1),
    ]
    assert len(drafts) == 2 and streamed == draft
    assert answers == [plain.chat(analysis, draft, [], "Any effusion?", generation=OPTIONS)]
    assert pieces == answer


def test_the_lookup_drafts_belong_to_the_transformers_generator(
    models: tuple[ChestXrayVLM, ChestXrayVLM, RecordingGenerator],
) -> None:
    plain, _, _ = models
    assert plain.lookup is not None
    assert plain.generator.lookup is plain.lookup  # type: ignore[attr-defined]
    saved = plain.lookup
    plain.lookup = None
    try:
        assert plain.generator.lookup is None  # type: ignore[attr-defined]
    finally:
        plain.lookup = saved
