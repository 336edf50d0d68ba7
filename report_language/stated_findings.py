"""What a radiologist's correction says about the findings.

A correction ("there is no effusion", "please remove the pneumothorax, it's not there",
"you missed a small left pneumothorax") names findings the report must drop or add. The
amend dialog lists the study's positive findings in the prompt; for a correction that list
is the current report's findings *with the correction applied*, so the radiologist's word
overrides the classifier and the model writes the corrected report from a list that already
agrees with the instruction. Correction examples in training list the record's true
findings, which is the same list (the wrong report's findings with the errors fixed).

Reading rule: the instruction is cut into clauses (at sentence ends, commas, semicolons and
"but"); the rule-based labeler reads each clause; a clause that asks to take something out of
the report ("remove", "delete", "take out", "not there", "don't see") denies every finding it
mentions, even where the labeler alone would read a plain mention ("Remove the effusion.").
Hedged mentions ("may be a small effusion") state nothing: the list keeps its current state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from report_language.labeler import label_report
from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE

#: Clause boundaries of an instruction.
_CLAUSE_END: Final = re.compile(r"(?<=[.!?;])\s+|,\s*|\s+but\s+", re.IGNORECASE)

#: Requests to take a finding out of the report.
_DENY: Final = re.compile(
    r"\b(?:remove|delete|take (?:it |them )?out|drop|strike|not (?:there|present|seen|visible)|"
    r"(?:don't|do not|dont|can't|cannot|can not) see|(?:isn't|is not|aren't|are not) there)\b",
    re.IGNORECASE,
)


def stated_findings(instruction: str) -> dict[str, bool]:
    """Findings a correction asserts (``True``) or denies (``False``).

    Parameters
    ----------
    instruction
        The radiologist's message.

    Returns
    -------
    dict
        CheXpert label (never No Finding) -> whether the instruction says it is present.
        A label stated in several clauses takes its last statement.

    Examples
    --------
    >>> stated_findings("Please remove the pneumothorax, it's not there. You missed edema.")
    {'Pneumothorax': False, 'Edema': True}
    """
    stated: dict[str, bool] = {}
    for clause in _CLAUSE_END.split(instruction):
        if not clause.strip():
            continue
        deny = _DENY.search(clause) is not None
        for label, value in label_report(clause).items():
            if label == NO_FINDING or value not in (POSITIVE, NEGATIVE):
                continue
            stated[label] = (value == POSITIVE) and not deny
    return stated


def apply_stated_findings(findings: Sequence[str], instruction: str) -> tuple[str, ...]:
    """The positive findings after a correction: denied ones dropped, asserted ones added.

    Parameters
    ----------
    findings
        The current positive findings (CheXpert labels other than No Finding).
    instruction
        The radiologist's correction.

    Returns
    -------
    tuple of str
        In CheXpert order, as prompts list them.
    """
    stated = stated_findings(instruction)
    present = {label for label in findings if stated.get(label, True)}
    present |= {label for label, positive in stated.items() if positive}
    return tuple(label for label in CHEXPERT_LABELS if label in present and label != NO_FINDING)


def unmet_statements(report: str, instruction: str) -> tuple[str, ...]:
    """Findings a correction states that ``report`` still gets wrong.

    A finding the instruction asserts must be positive in the report (labeler), one it
    denies must not be: "There is no effusion." against a report that still describes an
    effusion gives ``("Pleural Effusion",)``.
    """
    labels = label_report(report)
    return tuple(
        label
        for label, present in stated_findings(instruction).items()
        if (labels.get(label) == POSITIVE) != present
    )


def choose_correction(answer: str, redraft: str | None, instruction: str) -> tuple[str, bool]:
    """The proposal of a correction: the dialog answer, or the redraft where it does better.

    The dialog adapter answers a correction with the current report in context and can copy
    a finding the reader denied, or leave out one the reader added. When its answer leaves a
    stated finding unmet, the report is redrafted from the corrected findings list (report
    adapter); the redraft is taken when it meets more of the statements. The answer keeps
    the reader's earlier wording, so it wins ties.

    Parameters
    ----------
    answer
        The dialog adapter's corrected report.
    redraft
        The report drafted from the corrected findings, or ``None`` when none was made.
    instruction
        The reader's correction.

    Returns
    -------
    tuple
        The chosen text and whether it is the redraft.
    """
    if redraft is None:
        return answer, False
    if len(unmet_statements(redraft, instruction)) < len(unmet_statements(answer, instruction)):
        return redraft, True
    return answer, False


__all__ = ["apply_stated_findings", "choose_correction", "stated_findings", "unmet_statements"]
