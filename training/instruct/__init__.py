"""Instruction-tuning data for the dialog ("instruct") adapter, RaDialog's task families.

RaDialog had a larger LLM write the targets of its instruct data. Here every target is derived
from the study's report, its CheXpert labels and the report templates of
:mod:`training.text.report_text`, so each target agrees with the labels; ``docs/instruct_data.md``
describes how each task is built.
"""

from __future__ import annotations

from training.instruct.builder import (
    DEFAULT_MIX,
    FindingsSource,
    InstructConfig,
    build_instruct_examples,
    example_rng,
    task_counts,
)
from training.instruct.correction import (
    build_correction,
    choose_errors,
    edit_reports,
    render_reports,
)
from training.instruct.easy import build_easy_language
from training.instruct.examples import TASKS, InstructExample, TaskName
from training.instruct.tasks import (
    CorrectionStyle,
    Labeler,
    TaskContext,
    binary_answer,
    build_explanation,
    build_findings_qa_binary,
    build_findings_qa_list,
    build_report,
    build_summary,
    label_summary,
    list_answer,
)
from training.instruct.wording import GLOSSARY, LABEL_WORDING, LabelWording

__all__ = [
    "CorrectionStyle",
    "DEFAULT_MIX",
    "FindingsSource",
    "GLOSSARY",
    "InstructConfig",
    "InstructExample",
    "LABEL_WORDING",
    "LabelWording",
    "Labeler",
    "TASKS",
    "TaskContext",
    "TaskName",
    "binary_answer",
    "build_correction",
    "build_easy_language",
    "build_explanation",
    "build_findings_qa_binary",
    "build_findings_qa_list",
    "build_instruct_examples",
    "build_report",
    "build_summary",
    "choose_errors",
    "edit_reports",
    "example_rng",
    "label_summary",
    "list_answer",
    "render_reports",
    "task_counts",
]
