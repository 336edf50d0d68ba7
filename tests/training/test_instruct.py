"""Instruct data: task families, determinism, label-consistent targets, prompt encoding."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from inference import PromptBuilder, PromptConfig
from inference.tiny import train_tiny_tokenizer
from report_language.labeler import label_report
from report_language.labels import CHEXPERT_LABELS, NO_FINDING
from training.errors import DatasetError
from training.instruct import (
    DEFAULT_MIX,
    GLOSSARY,
    LABEL_WORDING,
    TASKS,
    InstructConfig,
    InstructExample,
    binary_answer,
    build_instruct_examples,
    list_answer,
    task_counts,
)
from training.records import StudyRecord
from training.text.report_order import order_report, split_report_sentences
from training.text.report_text import (
    easy_language,
    mentions_for_labels,
    render_findings,
    render_impression,
)

FINDINGS = [name for name in CHEXPERT_LABELS if name != NO_FINDING]


def phantom_like_record(index: int) -> StudyRecord:
    """A study whose report is rendered from random labels by the report templates."""
    rng = random.Random(index)
    labels: dict[str, float | None] = {}
    for name in FINDINGS:
        draw = rng.random()
        labels[name] = 1.0 if draw < 0.15 else 0.0 if draw < 0.35 else -1.0 if draw < 0.38 else None
    if not any(value in (1.0, -1.0) for value in labels.values()):
        labels[NO_FINDING] = 1.0
    mentions, negatives = mentions_for_labels(labels, rng)
    findings = render_findings(mentions, negatives, rng)
    impression = render_impression(mentions, rng) if index % 5 else ""
    return StudyRecord(
        subject_id=f"subject{index % 17}",
        study_id=f"study{index}",
        images=(Path(f"images/{index}.png"),),
        views=("PA",),
        findings=findings,
        impression=impression,
        indication="Cough and fever." if index % 2 else None,
        labels=labels,
    )


@pytest.fixture(scope="module")
def records() -> list[StudyRecord]:
    return [phantom_like_record(index) for index in range(80)]


@pytest.fixture(scope="module")
def examples(records: list[StudyRecord]) -> list[InstructExample]:
    return build_instruct_examples(
        records, seed=5, config=InstructConfig(examples_per_record=3, history_rate=0.2)
    )


def by_study(records: list[StudyRecord]) -> dict[str, StudyRecord]:
    return {record.study_id: record for record in records}


def positive(value: float | None) -> bool:
    return value == 1.0


# --------------------------------------------------------------------------- mix, determinism


def test_every_task_family_appears_in_mix_proportions(examples: list[InstructExample]) -> None:
    counts = Counter(example.task for example in examples)
    assert set(counts) == set(TASKS)
    expected = task_counts(DEFAULT_MIX, 240)
    assert sum(expected.values()) == 240
    for task in TASKS:
        assert counts[task] <= expected[task]
    # only corrections that cannot be made consistent may be left out
    assert sum(expected[task] - counts[task] for task in TASKS) <= 3
    assert all(counts[task] == expected[task] for task in TASKS if task != "correction")


def test_task_counts_and_bad_mix() -> None:
    assert task_counts({"report": 1, "summary": 1}, 5) == {
        **{task: 0 for task in TASKS}, "report": 3, "summary": 2,
    }
    with pytest.raises(ValueError, match="unknown task"):
        task_counts({"reports": 1.0}, 3)
    with pytest.raises(ValueError, match="positive weight"):
        task_counts({"report": 0.0}, 3)


def test_deterministic_by_seed(records: list[StudyRecord]) -> None:
    first = build_instruct_examples(records, seed=11)
    assert first == build_instruct_examples(records, seed=11)
    assert first != build_instruct_examples(records, seed=12)


def test_instructions_vary(examples: list[InstructExample]) -> None:
    for task in TASKS:
        phrasings = {example.instruction for example in examples if example.task == task}
        assert len(phrasings) >= 3, task


# --------------------------------------------------------------------------- targets


def test_report_generation(examples: list[InstructExample], records: list[StudyRecord]) -> None:
    studies = by_study(records)
    reports = [example for example in examples if example.task == "report"]
    assert any(example.instruction == PromptConfig().report_instruction for example in reports)
    for example in reports:
        assert example.report is None and example.history == ()
        assert example.answer == studies[example.study_id].report
        assert example.findings == tuple(studies[example.study_id].positive_findings())


def question_label(question: str) -> str:
    [label] = [name for name, wording in LABEL_WORDING.items() if question in wording.questions]
    return label


def test_questions_name_one_label_each() -> None:
    questions = [q for wording in LABEL_WORDING.values() for q in wording.questions]
    assert len(questions) == len(set(questions))


def test_binary_qa_answers_match_labels(
    examples: list[InstructExample], records: list[StudyRecord]
) -> None:
    studies = by_study(records)
    answers: Counter[str] = Counter()
    for example in examples:
        if example.task != "findings_qa_binary":
            continue
        label = question_label(example.instruction)
        value = studies[example.study_id].labels.get(label)
        assert example.answer == binary_answer(label, value)
        start = "Yes," if value == 1.0 else "Possibly;" if value == -1.0 else "No,"
        assert example.answer.startswith(start)
        answers[start] += 1
    assert answers["Yes,"] and answers["No,"]  # present findings are asked about too
    assert binary_answer("Pleural Effusion", -1.0) == (
        "Possibly; a pleural effusion cannot be excluded."
    )
    assert binary_answer("Support Devices", 0.0) == "No, there are no support devices."


def test_list_answers_match_labels(
    examples: list[InstructExample], records: list[StudyRecord]
) -> None:
    studies = by_study(records)
    for example in (e for e in examples if e.task == "findings_qa_list"):
        record = studies[example.study_id]
        assert example.answer == list_answer(record)
        for name in FINDINGS:
            noun = LABEL_WORDING[name].noun
            mentioned = noun in example.answer.lower()
            assert mentioned == (record.labels.get(name) in (1.0, -1.0)), (name, example.answer)
    normal = phantom_like_record(0)
    normal = StudyRecord(**{**normal.__dict__, "labels": {NO_FINDING: 1.0}})
    assert list_answer(normal) == "No findings."


def test_summary_explanation_and_easy_language(
    examples: list[InstructExample], records: list[StudyRecord]
) -> None:
    studies = by_study(records)
    for example in examples:
        record = studies[example.study_id]
        if example.task == "summary" and record.findings and record.impression:
            assert example.report == f"FINDINGS: {record.findings}"
            assert example.answer == record.impression
        elif example.task == "explanation":
            assert any(GLOSSARY[name] in example.answer for name in FINDINGS) or (
                "no abnormal findings" in example.answer
            )
        elif example.task == "easy_language":
            # the same sentences as the plain-language text of the labels (order aside)
            mentions, negatives = mentions_for_labels(record.labels, random.Random(0))
            expected = easy_language(mentions, negatives)
            def sentences(text: str) -> list[str]:
                return sorted(part.rstrip(".") for part in text.split(". "))

            assert sentences(example.answer) == sentences(expected)


# --------------------------------------------------------------------------- correction


@pytest.mark.parametrize("style", ["edit", "render"])
def test_correction_contradicts_exactly_at_injected_errors(
    records: list[StudyRecord], style: str
) -> None:
    studies = by_study(records)
    corrections = build_instruct_examples(
        records * 2, {"correction": 1.0}, seed=3,
        config=InstructConfig(correction_style=style),  # type: ignore[arg-type]
    )
    assert len(corrections) >= 150
    kept_original = 0
    for example in corrections:
        record = studies[example.study_id]
        assert example.report is not None and 1 <= len(example.injected_errors) <= 2
        wrong = label_report(example.report)
        right = label_report(example.answer)
        for name, value in example.injected_errors.items():
            assert value == (0.0 if record.labels.get(name) == 1.0 else 1.0)
            # the wrong report states the wrong value, the answer the true one
            assert positive(wrong[name]) == (value == 1.0), (name, example.report)
            assert positive(right[name]) == positive(record.labels.get(name)), example.answer
            wording = LABEL_WORDING[name]
            assert wording.noun in example.instruction.lower() or (
                wording.phrase in example.instruction.lower()
            )
        for name in FINDINGS:
            if name not in example.injected_errors:
                assert positive(wrong[name]) == positive(right[name]), (name, example.report)
        kept_original += example.answer == record.report
    if style == "edit":
        assert kept_original >= 0.9 * len(corrections)  # the dataset's own wording is the target


def test_findings_first_targets_of_reports_and_corrections(records: list[StudyRecord]) -> None:
    """With ``target_order="findings_first"`` report and correction targets state the
    prompt's findings first (as the report stage's targets do) and keep their labels."""
    studies = by_study(records)
    config = InstructConfig(target_order="findings_first")
    examples = build_instruct_examples(
        records, {"report": 1.0, "correction": 1.0}, seed=5, config=config
    )
    reordered = 0
    for example in examples:
        record = studies[example.study_id]
        assert example.answer == order_report(record, example.findings, "findings_first")
        assert label_report(example.answer) == label_report(record.report)
        if example.findings:
            first = split_report_sentences(example.answer.removeprefix("FINDINGS: "))[0]
            assert positive(label_report(first)[example.findings[0]]), example.answer
        reordered += example.answer != record.report
    assert {e.task for e in examples} == {"report", "correction"}
    assert reordered > len(examples) // 4


def test_correction_edit_keeps_unrelated_sentences(records: list[StudyRecord]) -> None:
    studies = by_study(records)
    corrections = build_instruct_examples(records, {"correction": 1.0}, seed=9)
    checked = 0
    for example in corrections:
        record = studies[example.study_id]
        if example.answer != record.report or example.report is None:
            continue  # rendered fallback
        for sentence in split_report_sentences(record.findings):
            found = label_report(sentence)
            unrelated = all(found[name] is None for name in example.injected_errors)
            names_a_finding = any(found[name] is not None for name in FINDINGS)
            if unrelated and names_a_finding:
                assert sentence in example.report
                checked += 1
    assert checked > 20


# --------------------------------------------------------------------------- prompt encoding


@pytest.fixture(scope="module", params=["chat_template", "plain"])
def builder(request: pytest.FixtureRequest) -> PromptBuilder:
    tokenizer = train_tiny_tokenizer()
    if request.param == "plain":
        tokenizer.chat_template = None
    return PromptBuilder(tokenizer, PromptConfig())


def test_every_example_encodes(examples: list[InstructExample], builder: PromptBuilder) -> None:
    histories = 0
    for example in examples:
        encoded = example.encode(builder)
        assert encoded.prefix_ids and encoded.target_ids
        target = builder.tokenizer.decode(encoded.target_ids)
        assert isinstance(target, str) and target.strip().startswith(example.answer.strip()[:20])
        if example.report is not None:
            assert "Current report:" in encoded.text
        histories += bool(example.history)
        assert all(PromptConfig().image_placeholder not in text for text in example.texts())
    assert histories


def test_history_is_one_exchange(records: list[StudyRecord]) -> None:
    examples = build_instruct_examples(
        records, seed=2, config=InstructConfig(history_rate=1.0)
    )
    for example in examples:
        if example.task == "report":
            assert example.history == ()
        else:
            assert [turn.role for turn in example.history] == ["user", "assistant"]
            label = question_label(example.history[0].content)
            assert label not in example.injected_errors


# --------------------------------------------------------------------------- inputs


def test_findings_source(records: list[StudyRecord]) -> None:
    none = build_instruct_examples(records[:10], seed=0, findings_source="none")
    assert all(example.findings == () for example in none)
    predictions = {record.study_id: ["Edema"] for record in records[:10]}
    predicted = build_instruct_examples(records[:10], seed=0, findings_source=predictions)
    assert all(example.findings == ("Edema",) for example in predicted)
    with pytest.raises(ValueError, match="no predictions for study"):
        build_instruct_examples(records[:11], seed=0, findings_source=predictions)
    with pytest.raises(ValueError, match="No Finding"):
        build_instruct_examples(records[:1], findings_source={"study0": ["No Finding"]})


def test_unlabelled_studies_get_report_generation(records: list[StudyRecord]) -> None:
    bare = [StudyRecord(**{**record.__dict__, "labels": {}}) for record in records[:20]]
    examples = build_instruct_examples(bare, {"findings_qa_binary": 1.0, "report": 1.0})
    assert {example.task for example in examples} == {"report"}


def test_placeholder_in_text_is_rejected(records: list[StudyRecord]) -> None:
    bad = StudyRecord(**{**records[1].__dict__, "findings": "Clear lungs. <ImageHere>"})
    with pytest.raises(DatasetError, match="image placeholder"):
        build_instruct_examples([bad], {"report": 1.0})


def test_example_validation(records: list[StudyRecord]) -> None:
    [example] = build_instruct_examples(records[:1], {"report": 1.0})
    fields = example.__dict__
    with pytest.raises(ValueError, match="injected_errors"):
        InstructExample(**{**fields, "injected_errors": {"Edema": 1.0}})
    with pytest.raises(ValueError, match="task must be"):
        InstructExample(**{**fields, "task": "chat"})
    with pytest.raises(ValueError, match="No Finding"):
        InstructExample(**{**fields, "findings": ("No Finding",)})
    with pytest.raises(ValueError, match="history_rate"):
        InstructConfig(history_rate=2.0)
