"""Builders of the RaDialog task families, each from one study record.

RaDialog had a larger LLM write its instruct targets; here every target comes from the
record's report, its CheXpert labels and fixed templates, so each one agrees with the labels
by construction. Each builder takes a :class:`TaskContext` (the record, a seeded random
generator, the findings listed in the prompt) and returns an
:class:`~training.instruct.examples.InstructExample`, or ``None`` when the record cannot
support the task (for instance a correction that no sentence edit or rendering can make
consistent).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from inference import PromptConfig, Turn
from report_language.labels import NEGATIVE, POSITIVE, UNCERTAIN
from report_language.sections import format_report
from training.instruct.examples import InstructExample, TaskName
from training.instruct.wording import (
    GLOSSARY,
    LABEL_WORDING,
    NO_FINDINGS_ANSWER,
    LabelWording,
    capitalise,
    join_nouns,
)
from training.records import StudyRecord
from training.text.report_order import TargetOrder, order_report

#: A labeler: report text -> CheXpert label per observation.
Labeler = Callable[[str], Mapping[str, float | None]]

CorrectionStyle = Literal["edit", "render"]

#: Report-generation instructions; the first is the one inference uses (RaDialog's wording).
REPORT_INSTRUCTIONS: Final[tuple[str, ...]] = (
    PromptConfig().report_instruction,
    "Write the radiology report.",
    "Write the report for this chest X-ray.",
    "Please write a report for this study.",
    "Describe this chest radiograph in a report.",
    "Generate the findings and impression.",
)

#: Share of report examples that use the inference instruction, ``REPORT_INSTRUCTIONS[0]``.
INFERENCE_INSTRUCTION_SHARE: Final[float] = 0.5

LIST_INSTRUCTIONS: Final[tuple[str, ...]] = (
    "List all findings.",
    "list all findings",
    "What are the findings?",
    "Which abnormalities do you see?",
    "Name all positive findings.",
    "what does the image show?",
)

SUMMARY_INSTRUCTIONS: Final[tuple[str, ...]] = (
    "Summarise the report.",
    "summarise",
    "Summarize the findings in one sentence.",
    "What is the impression?",
    "Give me the impression.",
    "Write the impression.",
)

EASY_LANGUAGE_INSTRUCTIONS: Final[tuple[str, ...]] = (
    "Make it easier to read.",
    "make it easier to read",
    "Explain the report in simple words for the patient.",
    "Rewrite the report in plain language.",
    "Simplify the report for a patient without medical training.",
)

EXPLAIN_ALL_INSTRUCTIONS: Final[tuple[str, ...]] = (
    "Explain the findings.",
    "explain the findings",
    "What do these findings mean?",
    "Can you explain the findings to me?",
)

#: ``{noun}`` is the observation's name ("pleural effusion").
EXPLAIN_ONE_TEMPLATES: Final[tuple[str, ...]] = (
    "What does {noun} mean?",
    "what is {noun}?",
    "Explain {noun}.",
    "Can you explain what {noun} means?",
)

#: Correction of a false positive: the report states something that is not there.
FALSE_POSITIVE_TEMPLATES: Final[tuple[str, ...]] = (
    "{There_is_no}.",
    "{there_is_no}",
    "Please remove the {noun}, {pronoun} not there.",
    "No {noun}.",
    "I don't see any {noun}, please remove {it}.",
    "Remove the {noun} from the report.",
)

#: Correction of a false negative: the report misses something.
FALSE_NEGATIVE_TEMPLATES: Final[tuple[str, ...]] = (
    "The patient also has {phrase}.",
    "the patient has {phrase}",
    "{There_is} as well.",
    "You missed {phrase}.",
    "Please add {phrase}.",
)

#: Appended to some correction instructions.
CORRECTION_CLOSINGS: Final[tuple[str, ...]] = (
    "",
    "",
    " Please correct the report.",
    " Update the report.",
)

#: Summary of a study with no positive observation.
NORMAL_SUMMARY: Final[str] = "No acute cardiopulmonary abnormality."

#: Explanation of a study with no positive observation.
NORMAL_EXPLANATION: Final[str] = (
    "The report describes no abnormal findings: the heart, lungs and the lining around them "
    "look normal on this chest X-ray."
)


@dataclass
class TaskContext:
    """What a task builder needs besides the record.

    Parameters
    ----------
    record
        The study.
    rng
        Random generator seeded for this example only.
    findings
        Positive findings to list in the prompt.
    labeler
        Rule-based labeler for sentence-level correction edits, or ``None``.
    correction_style
        ``"edit"``: remove/insert sentences of the original report, falling back to
        rendering; ``"render"``: render both reports from the labels.
    target_order
        Order of report targets (report generation and corrections): as written, or with
        the sentences stating ``findings`` first (:mod:`training.text.report_order`).
    """

    record: StudyRecord
    rng: random.Random
    findings: tuple[str, ...]
    labeler: Labeler | None = None
    correction_style: CorrectionStyle = "edit"
    target_order: TargetOrder = "as_written"

    def target_report(self) -> str:
        """The record's report as a target, in :attr:`target_order`."""
        return order_report(self.record, self.findings, self.target_order)

    def example(
        self,
        task: TaskName,
        instruction: str,
        answer: str,
        *,
        report: str | None,
        injected_errors: Mapping[str, float] | None = None,
        history: Sequence[Turn] = (),
    ) -> InstructExample:
        """An example for this context's record."""
        return InstructExample(
            study_id=self.record.study_id,
            images=self.record.images,
            task=task,
            findings=self.findings,
            instruction=instruction,
            indication=self.record.indication,
            report=report,
            history=tuple(history),
            answer=answer,
            injected_errors=dict(injected_errors or {}),
        )


def fill(template: str, wording: LabelWording) -> str:
    """Fill a correction / question template with an observation's words."""
    return template.format(
        noun=wording.noun,
        phrase=wording.phrase,
        there_is=wording.there_is,
        There_is=capitalise(wording.there_is),
        there_is_no=wording.there_is_no,
        There_is_no=capitalise(wording.there_is_no),
        pronoun=wording.pronoun,
        it="them" if wording.plural else "it",
    )


def observations(record: StudyRecord, value: float) -> list[str]:
    """Labels (without No Finding) whose value is ``value``, in CheXpert order."""
    return [name for name in LABEL_WORDING if record.labels.get(name) == value]


def binary_answer(label: str, value: float | None) -> str:
    """Answer to a yes/no question about ``label`` given its CheXpert value.

    Positive -> "Yes, ...", uncertain -> "Possibly; ... cannot be excluded.", negative or
    not mentioned -> "No, ..." (not mentioned counts as absent, CheXpert's U-Zeros reading).
    """
    wording = LABEL_WORDING[label]
    if value == POSITIVE:
        return f"Yes, {wording.there_is}."
    if value == UNCERTAIN:
        return f"Possibly; {wording.cannot_exclude}."
    return f"No, {wording.there_is_no}."


def label_summary(record: StudyRecord) -> str:
    """One line naming the positive and the uncertain observations."""
    positive = [LABEL_WORDING[name].noun for name in observations(record, POSITIVE)]
    uncertain = [LABEL_WORDING[name].noun for name in observations(record, UNCERTAIN)]
    parts = [capitalise(join_nouns(positive)) + "." if positive else ""]
    if uncertain:
        parts.append(f"Possible {join_nouns(uncertain)}.")
    text = " ".join(part for part in parts if part)
    return text or NORMAL_SUMMARY


def _pick_question_label(record: StudyRecord, rng: random.Random) -> str:
    """Ask about a present (or uncertain) observation half of the time when there is one."""
    present = observations(record, POSITIVE) + observations(record, UNCERTAIN)
    absent = [name for name in LABEL_WORDING if name not in present]
    if present and (not absent or rng.random() < 0.5):
        return rng.choice(present)
    return rng.choice(absent)


def binary_exchange(
    record: StudyRecord, rng: random.Random, exclude: Sequence[str] = ()
) -> tuple[str, str, str]:
    """``(label, question, answer)`` of one yes/no question about the record."""
    label = _pick_question_label(record, rng)
    if label in exclude:
        label = rng.choice([name for name in LABEL_WORDING if name not in exclude])
    question = rng.choice(LABEL_WORDING[label].questions)
    return label, question, binary_answer(label, record.labels.get(label))


# --------------------------------------------------------------------------- task builders


def build_report(ctx: TaskContext) -> InstructExample:
    """Report generation: the record's report, no report in context."""
    rng = ctx.rng
    if rng.random() < INFERENCE_INSTRUCTION_SHARE:
        instruction = REPORT_INSTRUCTIONS[0]
    else:
        instruction = rng.choice(REPORT_INSTRUCTIONS[1:])
    return ctx.example("report", instruction, ctx.target_report(), report=None)


def build_findings_qa_binary(ctx: TaskContext) -> InstructExample:
    """A yes/no question about one observation, answered from its label."""
    _, question, answer = binary_exchange(ctx.record, ctx.rng)
    return ctx.example("findings_qa_binary", question, answer, report=ctx.record.report)


def list_answer(record: StudyRecord) -> str:
    """Positive observations as a list; uncertain ones as "possible"; else "No findings."."""
    positive = [LABEL_WORDING[name].noun for name in observations(record, POSITIVE)]
    uncertain = [LABEL_WORDING[name].noun for name in observations(record, UNCERTAIN)]
    if positive:
        text = capitalise(join_nouns(positive)) + "."
    elif uncertain:
        text = "No definite findings."
    else:
        return NO_FINDINGS_ANSWER
    if uncertain:
        text += f" Possible {join_nouns(uncertain)}."
    return text


def build_findings_qa_list(ctx: TaskContext) -> InstructExample:
    """"List all findings" answered with the positive (and possible) observations."""
    instruction = ctx.rng.choice(LIST_INSTRUCTIONS)
    return ctx.example(
        "findings_qa_list", instruction, list_answer(ctx.record), report=ctx.record.report
    )


def build_summary(ctx: TaskContext) -> InstructExample:
    """The impression from the findings; a label summary when one of the two is missing.

    With both sections the context shows the findings only, so the model learns to write the
    impression rather than to copy it.
    """
    record = ctx.record
    instruction = ctx.rng.choice(SUMMARY_INSTRUCTIONS)
    if record.findings and record.impression:
        return ctx.example(
            "summary", instruction, record.impression, report=format_report(record.findings, "")
        )
    return ctx.example("summary", instruction, label_summary(record), report=record.report)


def explain_one(record: StudyRecord, label: str) -> str:
    """Glossary text of ``label`` and what this study's report says about it."""
    wording = LABEL_WORDING[label]
    value = record.labels.get(label)
    text = GLOSSARY[label]
    if value == POSITIVE:
        return f"{text} The report describes {wording.phrase}."
    if value == UNCERTAIN:
        return f"{text} In this study, {wording.cannot_exclude}."
    if value == NEGATIVE:
        return f"{text} The report finds no {wording.noun}."
    return text


def explain_all(record: StudyRecord) -> str:
    """Glossary texts of the positive observations, then of the uncertain ones."""
    parts = [GLOSSARY[name] for name in observations(record, POSITIVE)]
    for name in observations(record, UNCERTAIN):
        parts.append(
            f"The report also raises the possibility of {LABEL_WORDING[name].phrase}. "
            f"{GLOSSARY[name]}"
        )
    return " ".join(parts) if parts else NORMAL_EXPLANATION


def build_explanation(ctx: TaskContext) -> InstructExample:
    """"What does X mean?" or "Explain the findings", answered from :data:`GLOSSARY`."""
    record, rng = ctx.record, ctx.rng
    mentioned = observations(record, POSITIVE) + observations(record, UNCERTAIN)
    if mentioned and rng.random() < 0.5:
        instruction = rng.choice(EXPLAIN_ALL_INSTRUCTIONS)
        return ctx.example("explanation", instruction, explain_all(record), report=record.report)
    candidates = mentioned or observations(record, NEGATIVE) or list(LABEL_WORDING)
    label = rng.choice(candidates)
    instruction = rng.choice(EXPLAIN_ONE_TEMPLATES).format(noun=LABEL_WORDING[label].noun)
    return ctx.example("explanation", instruction, explain_one(record, label), report=record.report)


def positive_labels(labels: Mapping[str, float | None]) -> list[str]:
    """Labels other than No Finding whose value is positive."""
    return [name for name in LABEL_WORDING if labels.get(name) == POSITIVE]

