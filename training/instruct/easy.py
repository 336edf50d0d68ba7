"""The easy-language task: the report rewritten in plain words for a patient."""

from __future__ import annotations

from training.instruct.examples import InstructExample
from training.instruct.tasks import EASY_LANGUAGE_INSTRUCTIONS, TaskContext
from training.text.report_text import easy_language, mentions_for_labels


def build_easy_language(ctx: TaskContext) -> InstructExample:
    """"Make it easier to read": :func:`training.text.report_text.easy_language` of the labels.

    The mentions carry no side, size or location (the labels do not hold them), so the plain
    text never contradicts the report in context; it keeps each medical term in brackets.
    """
    mentions, negatives = mentions_for_labels(ctx.record.labels, ctx.rng)
    instruction = ctx.rng.choice(EASY_LANGUAGE_INSTRUCTIONS)
    answer = easy_language(mentions, negatives)
    return ctx.example("easy_language", instruction, answer, report=ctx.record.report)
