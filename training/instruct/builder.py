"""Instruction-tuning data for the dialog adapter, built from study records.

:func:`build_instruct_examples` draws the task of each example from a mix (exact counts by
largest remainder, then shuffled), builds it with its own random generator seeded from the
seed, the study id and the example index (SHA-256), and so returns the same list for the
same records and seed on every run.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from inference import PromptConfig, Turn
from report_language.labels import CHEXPERT_LABELS, NO_FINDING
from training.errors import DatasetError
from training.instruct.correction import build_correction
from training.instruct.easy import build_easy_language
from training.instruct.examples import TASKS, InstructExample, TaskName
from training.instruct.tasks import (
    CorrectionStyle,
    Labeler,
    TaskContext,
    binary_exchange,
    build_explanation,
    build_findings_qa_binary,
    build_findings_qa_list,
    build_report,
    build_summary,
)
from training.records import StudyRecord
from training.text.report_order import TargetOrder

logger = logging.getLogger(__name__)

#: Default share of each task family (RaDialog-like: report generation dominates, then
#: correction and findings QA).
DEFAULT_MIX: Final[dict[str, float]] = {
    "report": 0.30,
    "findings_qa_binary": 0.15,
    "findings_qa_list": 0.10,
    "correction": 0.20,
    "summary": 0.10,
    "easy_language": 0.08,
    "explanation": 0.07,
}

#: Which findings the prompt lists: the record's positive labels, none, or given predictions
#: (study id -> label names, e.g. from the trained findings classifier).
FindingsSource = Literal["labels", "none"] | Mapping[str, Sequence[str]]

_BUILDERS: Final[dict[TaskName, Callable[[TaskContext], InstructExample | None]]] = {
    "report": build_report,
    "findings_qa_binary": build_findings_qa_binary,
    "findings_qa_list": build_findings_qa_list,
    "correction": build_correction,
    "summary": build_summary,
    "easy_language": build_easy_language,
    "explanation": build_explanation,
}


@dataclass
class InstructConfig:
    """Options of :func:`build_instruct_examples` besides the mix and the seed."""

    examples_per_record: int = field(
        default=1, metadata={"help": "Examples drawn per study record."}
    )
    correction_style: CorrectionStyle = field(
        default="edit",
        metadata={
            "help": "'edit': wrong report = original report with sentences removed/inserted, "
            "target = original report (falls back to 'render'); 'render': both reports "
            "rendered from the labels with the report templates."
        },
    )
    target_order: TargetOrder = field(
        default="as_written",
        metadata={
            "help": "Report targets of report generation and corrections: as written, or "
            "with the sentences stating the prompt's findings first."
        },
    )
    history_rate: float = field(
        default=0.0,
        metadata={
            "help": "Share of dialog examples that get one earlier question/answer exchange "
            "about the same study as history."
        },
    )
    image_placeholder: str = field(
        default=PromptConfig().image_placeholder,
        metadata={"help": "Marker that must not occur in any text (it splits the prompt)."},
    )

    def __post_init__(self) -> None:
        if self.examples_per_record < 1:
            raise ValueError("examples_per_record must be >= 1")
        if self.correction_style not in ("edit", "render"):
            raise ValueError(f"correction_style must be 'edit' or 'render', got "
                             f"{self.correction_style!r}")
        if not 0.0 <= self.history_rate <= 1.0:
            raise ValueError(f"history_rate must be in [0, 1], got {self.history_rate}")


def example_rng(seed: int, study_id: str, index: int) -> random.Random:
    """A random generator for one example, independent of every other example."""
    digest = hashlib.sha256(f"{seed}\x00{study_id}\x00{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def task_counts(mix: Mapping[str, float], total: int) -> dict[TaskName, int]:
    """Split ``total`` examples between tasks in proportion to ``mix`` (largest remainder).

    Raises
    ------
    ValueError
        For an unknown task, a negative weight or an all-zero mix.
    """
    unknown = set(mix) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {list(TASKS)}")
    if any(weight < 0 for weight in mix.values()):
        raise ValueError(f"mix weights must be >= 0, got {dict(mix)}")
    weight_sum = sum(mix.values())
    if weight_sum <= 0:
        raise ValueError("mix must give at least one task a positive weight")
    exact = {task: total * mix.get(task, 0.0) / weight_sum for task in TASKS}
    counts = {task: int(value) for task, value in exact.items()}
    by_remainder = sorted(
        TASKS, key=lambda task: (-(exact[task] - counts[task]), TASKS.index(task))
    )
    for task in by_remainder[: total - sum(counts.values())]:
        counts[task] += 1
    return counts


def _prompt_findings(record: StudyRecord, source: FindingsSource) -> tuple[str, ...]:
    if source == "labels":
        return tuple(record.positive_findings())
    if source == "none":
        return ()
    if isinstance(source, str):
        raise ValueError(f"findings_source must be 'labels', 'none' or a mapping, got {source!r}")
    if record.study_id not in source:
        raise ValueError(f"findings_source has no predictions for study {record.study_id!r}")
    names = tuple(source[record.study_id])
    bad = [name for name in names if name not in CHEXPERT_LABELS or name == NO_FINDING]
    if bad:
        raise ValueError(f"study {record.study_id!r}: predicted findings {bad} are not CheXpert "
                         "labels other than No Finding")
    return names


def _default_labeler() -> Labeler | None:
    try:
        from report_language.labeler import label_report
    except ImportError:
        logger.info("report_language.labeler unavailable: corrections are rendered")
        return None
    return label_report


def _with_history(
    example: InstructExample, record: StudyRecord, rng: random.Random
) -> InstructExample:
    """The example with one earlier yes/no exchange about the same study as history."""
    _, question, answer = binary_exchange(record, rng, exclude=tuple(example.injected_errors))
    history = (Turn("user", question), Turn("assistant", answer))
    return InstructExample(
        study_id=example.study_id,
        images=example.images,
        task=example.task,
        findings=example.findings,
        instruction=example.instruction,
        indication=example.indication,
        report=example.report,
        history=history,
        answer=example.answer,
        injected_errors=example.injected_errors,
    )


def build_instruct_examples(
    records: Sequence[StudyRecord],
    mix: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    findings_source: FindingsSource = "labels",
    config: InstructConfig | None = None,
    labeler: Labeler | None = None,
) -> list[InstructExample]:
    """Build the instruct data set: every task family of RaDialog, targets from labels.

    Parameters
    ----------
    records
        Study records (one split).
    mix
        Weight per task name (see :data:`~training.instruct.TASKS`); :data:`DEFAULT_MIX`
        when ``None``. Tasks left out get no example.
    seed
        Same records and seed, same examples (on every run and machine).
    findings_source
        Findings listed in the prompt: ``"labels"`` (the record's positive labels),
        ``"none"``, or a mapping study id -> predicted label names.
    config
        Further options (:class:`InstructConfig`).
    labeler
        Report text -> CheXpert labels; corrections use it to edit sentences and to check
        every wrong/right report pair. Defaults to
        :func:`report_language.labeler.label_report` when importable (without one,
        corrections are rendered and unchecked).

    Returns
    -------
    list of InstructExample
        In record order (tasks shuffled over records). A study without any label gets
        report generation instead of its drawn task; a correction that cannot be made
        consistent for a record is left out (both counts are logged).

    Raises
    ------
    ValueError
        For a bad mix, findings source or config.
    DatasetError
        When a record's text contains the image placeholder.
    """
    config = config or InstructConfig()
    total = len(records) * config.examples_per_record
    counts = task_counts(DEFAULT_MIX if mix is None else mix, total)
    plan: list[TaskName] = [task for task in TASKS for _ in range(counts[task])]
    random.Random(seed).shuffle(plan)
    if labeler is None and "correction" in plan:
        labeler = _default_labeler()

    examples: list[InstructExample] = []
    dropped: Counter[str] = Counter()
    unlabelled = 0
    for index, task in enumerate(plan):
        record = records[index // config.examples_per_record]
        if task != "report" and all(value is None for value in record.labels.values()):
            # every other target is derived from the labels; without any, only the report
            # itself is a trustworthy target
            task = "report"
            unlabelled += 1
        rng = example_rng(seed, record.study_id, index)
        context = TaskContext(
            record=record,
            rng=rng,
            findings=_prompt_findings(record, findings_source),
            labeler=labeler,
            correction_style=config.correction_style,
            target_order=config.target_order,
        )
        example = _BUILDERS[task](context)
        if example is None:
            dropped[task] += 1
            continue
        if task != "report" and rng.random() < config.history_rate:
            example = _with_history(example, record, rng)
        for text in example.texts():
            if config.image_placeholder in text:
                raise DatasetError(
                    f"study {record.study_id!r}: text contains the image placeholder "
                    f"{config.image_placeholder!r}"
                )
        examples.append(example)
    if unlabelled:
        logger.info("instruct data: %d examples of studies without labels became report "
                    "generation", unlabelled)
    for name, count in dropped.items():
        logger.info("instruct data: %d %s examples could not be built and were left out",
                    count, name)
    return examples
