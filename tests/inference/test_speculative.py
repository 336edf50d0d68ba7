"""Lookup (speculative) decoding: the n-gram table and the decoding loop (tiny model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inference import (
    ChestXrayVLM,
    GenerationConfig,
    LookupDecoding,
    NgramTable,
    RuntimeOptions,
)
from inference.bundle import load_manifest
from inference.errors import BundleError, ConfigError, InferenceError
from inference.generation import generate_ids


def test_the_table_keeps_what_follows_a_context_often_enough() -> None:
    texts = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [7, 8, 9]]
    table = NgramTable.build(texts, order=2, min_count=2)
    # 1 2 3 then 4 (twice) wins over 5 (once); the text seen once is left out
    assert table.propose([1, 2], 5) == [3, 4]
    assert table.propose([], 5) == [1, 2, 3, 4]
    assert table.propose([7, 8], 3) == []
    assert table.propose([1], 1) == [2]
    # the longest known context decides: after 2 3 comes 4; after a lone 9, nothing
    assert NgramTable.build([[5, 3, 6], [5, 3, 6], [2, 3, 4], [2, 3, 4], [2, 3, 4]],
                            order=2).propose([5, 3], 1) == [6]


def test_the_table_survives_a_round_trip_and_refuses_other_files(tmp_path: Path) -> None:
    table = NgramTable.build([[1, 2, 3], [1, 2, 3]], order=3)
    table.save(tmp_path / "t.json")
    loaded = NgramTable.load(tmp_path / "t.json")
    assert loaded.next_token == table.next_token and loaded.order == 3
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(BundleError, match="bad.json"):
        NgramTable.load(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def report_batch(tiny_model: ChestXrayVLM, chest_cr_path: Path):  # type: ignore[no-untyped-def]
    analysis = tiny_model.analyse([chest_cr_path])
    prompt = tiny_model._report_prompt(analysis, "Cough and fever for three days.")
    return tiny_model._batch([prompt], [analysis])


@contextmanager
def _forward_passes(model: ChestXrayVLM) -> Iterator[list[int]]:
    """Counts the LLM's forward passes (with the report adapter) while open."""
    passes: list[int] = []
    with model.llm.adapter("report") as runner:
        hook = runner.register_forward_hook(lambda *_: passes.append(1))  # type: ignore[operator]
    try:
        yield passes
    finally:
        hook.remove()  # type: ignore[attr-defined]


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_lookup_decoding_writes_greedy_text_in_fewer_passes(
    tiny_model: ChestXrayVLM, report_batch, repetition_penalty: float  # type: ignore[no-untyped-def]
) -> None:
    options = GenerationConfig(max_new_tokens=40, repetition_penalty=repetition_penalty)
    plain = generate_ids(tiny_model.llm, report_batch, options, adapter="report")
    assert plain.shape[1] == 40
    # a table that knows this text: most proposals are right
    knows_it = LookupDecoding(NgramTable.build([plain[0].tolist()], order=3, min_count=1))
    with _forward_passes(tiny_model) as passes:
        fast = generate_ids(tiny_model.llm, report_batch, options, adapter="report",
                            lookup=knows_it)
    assert torch.equal(fast, plain)
    assert len(passes) <= 10  # 40 tokens, up to 9 per pass
    # a table of other text: proposals are wrong and thrown away, the text is the same
    other = LookupDecoding(NgramTable.build([list(range(3, 80))] * 2, order=2), draft_tokens=4)
    assert torch.equal(
        generate_ids(tiny_model.llm, report_batch, options, adapter="report", lookup=other),
        plain,
    )


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_a_padded_batch_decodes_with_drafts_to_the_same_text(
    tiny_model: ChestXrayVLM, chest_cr_path: Path, repetition_penalty: float
) -> None:
    analysis = tiny_model.analyse([chest_cr_path])
    indications = [None, "Cough.", "Shortness of breath after a fall, rule out pneumothorax."]
    prompts = [tiny_model._report_prompt(analysis, i) for i in indications]
    batch = tiny_model._batch(prompts, [analysis] * 3)
    assert not bool(batch.attention_mask.all())  # left padding
    options = GenerationConfig(max_new_tokens=30, repetition_penalty=repetition_penalty)
    plain = generate_ids(tiny_model.llm, batch, options, adapter="report")
    rows = [row.tolist() for row in plain]
    # each study of the batch gets the text it gets alone (the penalty counts its own tokens)
    pad = tiny_model.llm.pad_token_id()
    for prompt, row in zip(prompts, rows, strict=True):
        alone = generate_ids(tiny_model.llm, tiny_model._batch([prompt], [analysis]), options,
                             adapter="report")[0].tolist()
        assert row == alone + [pad] * (len(row) - len(alone))
    knows_them = LookupDecoding(NgramTable.build(rows, order=3, min_count=1), max_batch=4)
    with _forward_passes(tiny_model) as passes:
        fast = generate_ids(tiny_model.llm, batch, options, adapter="report",
                            lookup=knows_them)
    assert torch.equal(fast, plain)
    assert len(passes) < plain.shape[1] / 2  # several tokens per pass for the whole batch
    # wrong drafts are thrown away; above max_batch the batch decodes plainly
    other = LookupDecoding(NgramTable.build([list(range(3, 80))] * 2, order=2),
                           draft_tokens=4, max_batch=4)
    assert torch.equal(
        generate_ids(tiny_model.llm, batch, options, adapter="report", lookup=other), plain)
    small = replace(knows_them, max_batch=2)
    with _forward_passes(tiny_model) as passes:
        assert torch.equal(
            generate_ids(tiny_model.llm, batch, options, adapter="report", lookup=small), plain)
    assert len(passes) == plain.shape[1]  # one pass per token: plain generate


def test_lookup_decoding_stops_at_the_token_bound_and_at_eos(
    tiny_model: ChestXrayVLM, report_batch  # type: ignore[no-untyped-def]
) -> None:
    plain = generate_ids(tiny_model.llm, report_batch, GenerationConfig(max_new_tokens=40),
                         adapter="report")[0].tolist()
    lookup = LookupDecoding(NgramTable.build([plain], order=3, min_count=1))
    short = generate_ids(tiny_model.llm, report_batch, GenerationConfig(max_new_tokens=7),
                         adapter="report", lookup=lookup)
    assert short[0].tolist() == plain[:7]
    # with the 5th token as the stop token, generation ends right after it
    stop = plain[4]
    tokenizer = tiny_model.llm.tokenizer
    original = tokenizer.eos_token_id
    tokenizer.eos_token_id = stop
    try:
        ended = generate_ids(tiny_model.llm, report_batch, GenerationConfig(max_new_tokens=40),
                             adapter="report", lookup=lookup)
    finally:
        tokenizer.eos_token_id = original
    assert ended[0].tolist() == plain[: plain.index(stop) + 1]


def test_streamed_and_returned_reports_agree_with_lookup_decoding(
    tiny_bundle: Path, chest_cr_path: Path
) -> None:
    model = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu"))
    plain = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu", lookup_tokens=0))
    assert model.lookup is not None and plain.lookup is None
    options = GenerationConfig(max_new_tokens=24)
    written = model.generate_report([chest_cr_path], "Chest pain.", generation=options).text
    analysis, stream = model.stream_report([chest_cr_path], "Chest pain.", generation=options)
    assert "".join(stream).strip() == written
    assert plain.generate_report([chest_cr_path], "Chest pain.", generation=options).text == (
        written
    )
    chat = model.chat(analysis, written, [], "Is the heart enlarged?", generation=options)
    assert chat == plain.chat(analysis, written, [], "Is the heart enlarged?",
                              generation=options)


def test_bundles_carry_the_table_and_settings_switch_it_off(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    assert manifest.lookup_table is not None and manifest.lookup_table.is_file()
    assert "lookup_ngrams.json" in manifest.files  # checksummed like every file
    assert len(NgramTable.load(manifest.lookup_table)) > 0
    with pytest.raises(ConfigError, match="lookup_tokens"):
        replace(RuntimeOptions(), lookup_tokens=-1)
    with pytest.raises(InferenceError, match="draft_tokens"):
        LookupDecoding(NgramTable(2, {}), draft_tokens=0)
    with pytest.raises(ConfigError, match="lookup_max_batch"):
        replace(RuntimeOptions(), lookup_max_batch=0)
    model = ChestXrayVLM.from_bundle(tiny_bundle,
                                     RuntimeOptions(device="cpu", lookup_max_batch=8))
    assert model.lookup is not None and model.lookup.max_batch == 8


def test_the_node_setting_reaches_the_model_and_names_a_bad_value() -> None:
    from pydantic import ValidationError

    from dicom_node.settings import InferenceSettings

    assert InferenceSettings(lookup_max_batch=8).runtime_options().lookup_max_batch == 8
    assert InferenceSettings().runtime_options().lookup_max_batch == 4  # measured default
    with pytest.raises(ValidationError, match="lookup_max_batch"):
        InferenceSettings(lookup_max_batch=0)
