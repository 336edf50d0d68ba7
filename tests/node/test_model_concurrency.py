"""Drafts and dialog turns on one model run at the same time, not one after another.

Each test runs two generations in two threads on one loaded model. The first one, once it
has produced text, waits (inside its generation) until the second has produced text too:
with a lock held around every generation, as the model had before, the second could not
start, and the first gives up after :data:`WAIT_S` and the test fails. The texts must be
the ones each generation gives alone (greedy decoding).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from inference import ChestXrayVLM, RuntimeOptions, StudyAnalysis

#: Seconds the first generation waits for the second to produce text.
WAIT_S = 30.0
REPORT = "FINDINGS: The lungs are clear.\nIMPRESSION: No acute disease."

Run = Callable[[Callable[[str], None]], str]


def _draft(model: ChestXrayVLM, image: Path) -> Run:
    def run(on_text: Callable[[str], None]) -> str:
        # on_text is called from inside the generation (not from a consumer thread).
        return model.generate_report([image], on_text=on_text).text

    return run


def _chat(model: ChestXrayVLM, analysis: StudyAnalysis) -> Run:
    def run(on_text: Callable[[str], None]) -> str:
        # As for the draft: the callback runs inside the generation.
        return model.chat(analysis, REPORT, [], "Is the heart enlarged?", on_text=on_text)

    return run


def _side_by_side(first: Run, second: Run) -> tuple[str, str, bool]:
    """Run `first`, and `second` once `first` has produced text; returns both texts and
    whether `second` produced text while `first` was still generating."""
    first_started, second_spoke = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    texts: dict[str, str] = {}
    failures: list[BaseException] = []

    def on_first(_: str) -> None:
        if not first_started.is_set():
            first_started.set()
            overlapped.append(second_spoke.wait(WAIT_S))

    def run_first() -> None:
        try:
            texts["first"] = first(on_first)
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            first_started.set()

    def run_second() -> None:
        try:
            first_started.wait(WAIT_S)
            texts["second"] = second(lambda _: second_spoke.set())
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * WAIT_S)
    assert not failures, failures
    return texts["first"], texts["second"], overlapped == [True]


def _analysis(model: ChestXrayVLM, image: Path) -> StudyAnalysis:
    return model.analyse([image])


def test_a_draft_and_a_dialog_turn_run_together_on_merged_adapters(
    tiny_model: ChestXrayVLM, chest_cr_path: Path
) -> None:
    assert tiny_model.llm.merged_adapters == ["instruct", "report"]
    analysis = _analysis(tiny_model, chest_cr_path)
    alone = (_draft(tiny_model, chest_cr_path)(lambda _: None),
             _chat(tiny_model, analysis)(lambda _: None))
    draft, answer, overlapped = _side_by_side(
        _draft(tiny_model, chest_cr_path), _chat(tiny_model, analysis)
    )
    assert overlapped, "the dialog turn waited for the draft to end"
    assert (draft, answer) == alone


@pytest.mark.parametrize("merge", ["none", "in place"])
def test_two_drafts_run_together_on_one_live_or_merged_adapter(
    tiny_bundle: Path, chest_cr_path: Path, merge: str
) -> None:
    model = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu",
                                                                   merge_adapters=False))
    if merge == "in place":
        model.llm.merge_adapters(used=["report"])
        assert model.llm.merged_adapters == ["report"]
    else:
        assert model.llm.merged_adapters == []
    draft = _draft(model, chest_cr_path)
    alone = draft(lambda _: None)
    first, second, overlapped = _side_by_side(draft, draft)
    assert overlapped, "the second draft waited for the first to end"
    assert first == second == alone


def test_turns_of_different_live_adapters_take_turns_and_keep_their_texts(
    tiny_bundle: Path, chest_cr_path: Path
) -> None:
    """Adapters that are not merged switch the one live model: such generations must not
    overlap, and each gives the text it gives alone."""
    model = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu",
                                                                   merge_adapters=False))
    analysis = _analysis(model, chest_cr_path)
    alone = (_draft(model, chest_cr_path)(lambda _: None), _chat(model, analysis)(lambda _: None))
    active = model.llm.active_adapter
    results: dict[int, tuple[str, str]] = {}

    def both(index: int) -> None:
        results[index] = (_draft(model, chest_cr_path)(lambda _: None),
                          _chat(model, analysis)(lambda _: None))

    threads = [threading.Thread(target=both, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {0: alone, 1: alone, 2: alone}
    assert model.llm.active_adapter == active  # the model is left as it was
