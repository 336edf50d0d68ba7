"""One instruction-tuning example: a prompt (as :class:`inference.PromptBuilder` takes it) and
its target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

from inference import EncodedPrompt, PromptBuilder, Turn
from report_language.labels import CHEXPERT_LABELS, NO_FINDING

TaskName = Literal[
    "report",
    "findings_qa_binary",
    "findings_qa_list",
    "correction",
    "summary",
    "easy_language",
    "explanation",
]

#: The task families, in documentation order.
TASKS: Final[tuple[TaskName, ...]] = get_args(TaskName)


@dataclass(frozen=True)
class InstructExample:
    """A prompt and its answer for one study.

    Parameters
    ----------
    study_id
        The study the example was built from.
    images
        Image files of the study, frontal views first.
    task
        Task family (one of :data:`TASKS`).
    findings
        Positive findings listed in the prompt (CheXpert names without No Finding).
    instruction
        The user's request of this turn.
    indication
        Clinical indication, or ``None``.
    report
        The current report in the context (``None`` for report generation; the wrong report
        for correction).
    history
        Earlier turns of the dialog, user first, alternating.
    answer
        Target text.
    injected_errors
        Correction only: label -> the wrong value the current report states (``1.0`` for an
        added false positive, ``0.0`` for a removed true positive).
    """

    study_id: str
    images: tuple[Path, ...]
    task: TaskName
    findings: tuple[str, ...]
    instruction: str
    indication: str | None
    report: str | None
    history: tuple[Turn, ...]
    answer: str
    injected_errors: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.instruction.strip():
            raise ValueError("instruction must not be empty")
        if not self.answer.strip():
            raise ValueError(f"study {self.study_id!r}: empty answer for task {self.task!r}")
        bad = [name for name in self.findings if name not in CHEXPERT_LABELS or name == NO_FINDING]
        if bad:
            raise ValueError(f"findings must be CheXpert labels other than No Finding, got {bad}")
        if (self.task == "correction") != bool(self.injected_errors):
            raise ValueError("injected_errors is required for correction examples and only there")
        for name, value in self.injected_errors.items():
            if name not in CHEXPERT_LABELS or value not in (0.0, 1.0):
                raise ValueError(f"injected error {name!r}: {value!r}")

    def encode(self, builder: PromptBuilder, *, with_answer: bool = True) -> EncodedPrompt:
        """Tokenise the example with the shared prompt builder (the answer as the target)."""
        return builder.encode(
            findings=self.findings,
            instruction=self.instruction,
            indication=self.indication,
            report=self.report,
            history=self.history,
            answer=self.answer if with_answer else None,
        )

    def texts(self) -> list[str]:
        """Every free text of the example (to check for forbidden markers)."""
        parts = [self.instruction, self.answer, *(turn.content for turn in self.history)]
        if self.report is not None:
            parts.append(self.report)
        if self.indication is not None:
            parts.append(self.indication)
        return parts
