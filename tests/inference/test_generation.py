"""Generation: KV cache, batching, beams, EOS, streaming, adapters (tiny model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inference import ChatRequest, ChestXrayVLM, GenerationConfig, RuntimeOptions, StudyRequest
from inference.generation import generate_ids


@pytest.fixture(scope="module")
def batch_and_model(tiny_model: ChestXrayVLM, chest_cr_path: Path):  # type: ignore[no-untyped-def]
    analysis = tiny_model.analyse([chest_cr_path])
    prompt = tiny_model._report_prompt(analysis, "Cough and fever for three days.")
    return tiny_model._batch([prompt], [analysis]), tiny_model


def test_kv_cache_does_not_change_the_tokens(batch_and_model) -> None:  # type: ignore[no-untyped-def]
    batch, model = batch_and_model
    options = GenerationConfig(max_new_tokens=16)
    with_cache = generate_ids(model.llm, batch, options, adapter="report")
    without = generate_ids(model.llm, batch, replace(options, use_cache=False), adapter="report")
    assert with_cache.shape[1] > 0
    assert torch.equal(with_cache, without)


def test_batched_and_one_by_one_greedy_give_the_same_text(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    # different indications give prompts of different lengths, so left padding is exercised
    studies = [
        StudyRequest([chest_cr_path], None),
        StudyRequest(
            [chest_cr_path], "Follow-up of known right lower lobe pneumonia, now afebrile."
        ),
        StudyRequest([chest_cr_path], "Chest pain."),
    ]
    options = GenerationConfig(max_new_tokens=12)
    batched = tiny_model.generate_reports(studies, generation=options)
    single = [
        tiny_model.generate_report(s.images, s.indication, generation=options) for s in studies
    ]
    assert [d.text for d in batched] == [d.text for d in single]
    assert len({d.text for d in single}) > 1  # the indication reaches the model


def test_redraft_lists_the_given_findings(tiny_model: ChestXrayVLM, chest_cr_path: Path) -> None:
    """A redraft from a reader's corrected findings: batched and streamed give the same text,
    and the findings replace the classifier's in the prompt."""
    analysis = tiny_model.analyse([chest_cr_path])
    options = GenerationConfig(max_new_tokens=12)
    corrected = ["Cardiomegaly", "Pleural Effusion"]
    own, given = tiny_model.generate_reports(
        [StudyRequest(analysis, "Chest pain."),
         StudyRequest(analysis, "Chest pain.", findings=corrected)],
        generation=options,
    )
    _, stream = tiny_model.stream_report(
        analysis, "Chest pain.", generation=options, findings=corrected
    )
    assert "".join(stream).strip() == given.text
    assert own.text != given.text
    prompt = tiny_model._report_prompt(analysis, "Chest pain.", corrected).text
    assert "Predicted findings: cardiomegaly, pleural effusion." in prompt


def test_batched_and_single_chat_turns_give_the_same_text(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    analysis = tiny_model.analyse([chest_cr_path])
    requests = [
        ChatRequest(analysis, "FINDINGS: Small right effusion.", "There is no effusion."),
        ChatRequest(analysis, "FINDINGS: Lungs are clear.", "Is the heart enlarged?",
                    indication="Dyspnoea on exertion for two weeks."),
    ]
    options = GenerationConfig(max_new_tokens=10)
    batched = tiny_model.chat_many(requests, generation=options)
    single = [
        tiny_model.chat(r.images, r.report, list(r.history), r.instruction,
                        indication=r.indication, generation=options)
        for r in requests
    ]
    assert batched == single
    assert batched[0] != batched[1]


def test_beam_search_respects_max_new_tokens(batch_and_model) -> None:  # type: ignore[no-untyped-def]
    batch, model = batch_and_model
    ids = generate_ids(
        model.llm, batch, GenerationConfig(max_new_tokens=7, num_beams=3), adapter="report"
    )
    assert 0 < ids.shape[1] <= 7


def test_generation_stops_at_eos(batch_and_model) -> None:  # type: ignore[no-untyped-def]
    batch, model = batch_and_model
    options = GenerationConfig(max_new_tokens=12)
    free = generate_ids(model.llm, batch, options, adapter="report")[0].tolist()
    stop_at = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    generation_config = model.llm.model.generation_config
    original = generation_config.eos_token_id
    generation_config.eos_token_id = free[stop_at]  # pretend that token is EOS
    try:
        stopped = generate_ids(model.llm, batch, options, adapter="report")[0].tolist()
    finally:
        generation_config.eos_token_id = original
    assert stopped == free[: stop_at + 1]


def test_streaming_callback_and_iterator_give_the_final_text(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    pieces: list[str] = []
    draft = tiny_model.generate_report([chest_cr_path], "Dyspnoea.", on_text=pieces.append)
    assert pieces and "".join(pieces).strip() == draft.text
    _, stream = tiny_model.stream_report([chest_cr_path], "Dyspnoea.")
    assert "".join(stream).strip() == draft.text


def test_adapters_are_switchable_and_change_the_output(batch_and_model) -> None:  # type: ignore[no-untyped-def]
    batch, model = batch_and_model
    llm = model.llm
    assert set(llm.adapters) == {"report", "instruct"}

    def logits(adapter: str | None) -> torch.Tensor:
        with llm.adapter(adapter) as runner, torch.no_grad():
            return runner(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask
            ).logits

    report, instruct, base = logits("report"), logits("instruct"), logits(None)
    assert not torch.allclose(report, instruct)
    assert not torch.allclose(report, base) and not torch.allclose(instruct, base)
    assert torch.equal(logits("report"), report)  # switching back restores the adapter
    with pytest.raises(Exception, match="not loaded"):
        llm.use_adapter("nonexistent")


def test_merged_adapters_give_the_unmerged_outputs(tiny_bundle: Path, chest_cr_path: Path) -> None:
    merged = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu"))
    plain = ChestXrayVLM.from_bundle(
        tiny_bundle, RuntimeOptions(device="cpu", merge_adapters=False)
    )
    assert set(merged.llm.merged_adapters) == {"report", "instruct"}
    assert plain.llm.merged_adapters == []
    analysis = merged.analyse([chest_cr_path])
    batch = merged._batch([merged._report_prompt(analysis, "Cough.")], [analysis])
    for adapter in ("report", "instruct"):
        with (
            merged.llm.adapter(adapter) as fast,
            plain.llm.adapter(adapter) as slow,
            torch.no_grad(),
        ):
            assert fast is not slow and fast is not merged.llm.model  # a plain merged copy
            torch.testing.assert_close(
                fast(inputs_embeds=batch.inputs_embeds).logits,
                slow(inputs_embeds=batch.inputs_embeds).logits,
                rtol=1e-4, atol=1e-4,
            )
    options = GenerationConfig(max_new_tokens=12)
    assert merged.generate_report([chest_cr_path], "Cough.", generation=options).text == (
        plain.generate_report([chest_cr_path], "Cough.", generation=options).text
    )


def test_chat_uses_the_report_as_context(tiny_model: ChestXrayVLM, chest_cr_path: Path) -> None:
    options = GenerationConfig(max_new_tokens=10)
    answer_a = tiny_model.chat(
        [chest_cr_path], "The heart is enlarged.", [], "Is the heart enlarged?", generation=options
    )
    # The report is in the prompt the LLM reads, and what the LLM predicts depends on it:
    # the next-token distribution after the same question differs between two reports.
    analysis = tiny_model.analyse([chest_cr_path])
    next_token: list[torch.Tensor] = []
    for report in ("The heart is enlarged.", "Lungs are clear."):
        batch = tiny_model._chat_batch(analysis, report, [], "Is the heart enlarged?", None)
        prompt = tiny_model.prompts.encode(
            findings=analysis.positive_labels, indication=None, report=report, history=(),
            instruction="Is the heart enlarged?",
        )
        assert report in prompt.text
        with tiny_model.llm.adapter(tiny_model.tasks["chat"]) as runner, torch.inference_mode():
            logits = runner(inputs_embeds=batch.inputs_embeds).logits[0, -1]  # type: ignore[operator]
        next_token.append(torch.softmax(logits.float(), dim=-1))
    assert float((next_token[0] - next_token[1]).abs().sum()) > 1e-3
    streamed = "".join(
        tiny_model.stream_chat(
            [chest_cr_path],
            "The heart is enlarged.",
            [],
            "Is the heart enlarged?",
            generation=options,
        )
    ).strip()
    assert streamed == answer_a
    # the analysis is reused across dialog turns
    assert (
        tiny_model.chat(
            analysis, "The heart is enlarged.", [], "Is the heart enlarged?", generation=options
        )
        == answer_a
    )


def test_a_streamed_answer_stops_before_a_stop_string_split_across_pieces() -> None:
    from inference.generation import cut_stream_at_stop

    pieces = ["The heart", " is normal.#", "## Patient", ": next question", "###"]
    assert "".join(cut_stream_at_stop(iter(pieces), ("###",))) == "The heart is normal."
    assert "".join(cut_stream_at_stop(iter(pieces[:2]), ("###",))) == "The heart is normal.#"
    assert list(cut_stream_at_stop(iter(["a", "", "b"]), ())) == ["a", "b"]
    # Everything is read, so the thread that writes the pieces is never left blocked.
    source = iter(pieces)
    list(cut_stream_at_stop(source, ("###",)))
    assert next(source, None) is None


def test_a_static_kv_cache_gives_the_same_tokens_as_the_dynamic_one(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    # left padding (prompts of different lengths) in a cache allocated once for the whole
    # generation; on a GPU transformers compiles this path with CUDA graphs
    studies = [StudyRequest([chest_cr_path], None),
               StudyRequest([chest_cr_path], "Follow-up of known right lower lobe pneumonia.")]
    dynamic = GenerationConfig(max_new_tokens=12)
    static = replace(dynamic, cache_implementation="static")
    assert [d.text for d in tiny_model.generate_reports(studies, generation=static)] == [
        d.text for d in tiny_model.generate_reports(studies, generation=dynamic)
    ]
