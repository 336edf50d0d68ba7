"""The correction task: a wrong report, an instruction naming its errors, the right report.

Errors are injected into the record's labels: one or two observations flip, either a true
positive removed (a false negative of the wrong report, value ``0.0``) or a false positive
added (value ``1.0``). Uncertain labels and No Finding never flip. Two ways to write the wrong
report and its correction:

``edit`` (default)
    The wrong report is the record's own report with sentences removed and inserted: the
    sentences stating a removed finding are dropped (sometimes replaced by a negative
    sentence), the sentences negating an added finding and generic normal statements are
    dropped and a positive sentence is inserted. The target is the record's report unchanged,
    so the model learns corrections in the dataset's own style. Other observations named in a
    dropped sentence are restated with template sentences. The rule-based labeler checks the
    result: the wrong report must differ from the original exactly at the injected labels.
``render`` (fallback when no labeler is available or the edit fails the check)
    Both reports are rendered from the labels with :mod:`training.text.report_text`, one sentence
    per observation, each sentence seeded by its label so that both reports share the
    wording of every observation that did not flip.

With ``target_order = "findings_first"`` both reports are put in the order a findings-first
model drafts in (:mod:`training.text.report_order`): the wrong report with the sentences stating
its own positive findings first, the corrected one with the prompt's findings first. The
correction then differs from the report in context only where the errors are, as a reader's
correction of a draft does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Final

from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN
from report_language.sections import format_report
from training.instruct.examples import InstructExample
from training.instruct.tasks import (
    CORRECTION_CLOSINGS,
    FALSE_NEGATIVE_TEMPLATES,
    FALSE_POSITIVE_TEMPLATES,
    Labeler,
    TaskContext,
    fill,
)
from training.instruct.wording import LABEL_WORDING
from training.records import StudyRecord
from training.text.report_order import reorder_report, split_report_sentences
from training.text.report_text import (
    FindingMention,
    Severity,
    Side,
    mentions_for_labels,
    negative_sentence,
    positive_sentence,
    render_impression,
)

#: Probability of one injected error (else two, when the labels allow it).
ONE_ERROR_PROBABILITY: Final[float] = 0.6

#: Probability that a removed finding is replaced by an explicit negative sentence.
EXPLICIT_NEGATIVE_PROBABILITY: Final[float] = 0.5

#: Probability that an added finding is also stated in the impression.
IMPRESSION_INSERT_PROBABILITY: Final[float] = 0.5

_NUMBER_PREFIX: Final = re.compile(r"^\d+\.\s+")
#: Normal statements that no labeler mention covers but that contradict a new finding.
_NORMAL_STATEMENT: Final = re.compile(
    r"\b(?:no acute|normal (?:chest|study|radiograph|examination)|"
    r"lungs? (?:fields? )?(?:are |is )?(?:\w+ )?(?:expanded and )?clear|clear lungs)\b",
    re.IGNORECASE,
)

_LOBES: Final[tuple[str, ...]] = (
    "right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
    "left lower lobe", "lingula",
)
_DEVICES: Final[tuple[str, ...]] = (
    "endotracheal tube", "nasogastric tube", "right internal jugular central venous catheter",
    "left PICC", "left-sided pacemaker",
)
_BONES: Final[tuple[str, ...]] = (
    "right lateral 6th rib", "left lateral 7th rib", "right clavicle", "left posterior 5th rib",
)


def choose_errors(record: StudyRecord, rng: random.Random) -> dict[str, float]:
    """Labels to flip and the wrong value each gets (``0.0`` removes, ``1.0`` adds).

    Positives can be removed; negatives and unmentioned labels can be added; uncertain
    labels and No Finding are left alone.
    """
    positives = [name for name in LABEL_WORDING if record.labels.get(name) == POSITIVE]
    absent = [name for name in LABEL_WORDING if record.labels.get(name) in (NEGATIVE, None)]
    wanted = 1 if rng.random() < ONE_ERROR_PROBABILITY else 2
    errors: dict[str, float] = {}
    while len(errors) < wanted:
        removable = [name for name in positives if name not in errors]
        addable = [name for name in absent if name not in errors]
        if removable and (not addable or rng.random() < 0.5):
            errors[rng.choice(removable)] = NEGATIVE
        elif addable:
            errors[rng.choice(addable)] = POSITIVE
        else:
            break
    return errors


def random_mention(label: str, rng: random.Random) -> FindingMention:
    """A positive mention with plausible random attributes (for an added false positive)."""
    sides: tuple[Side | None, ...] = (None, "left", "right")
    side = rng.choice(sides)
    if label in ("Pleural Effusion", "Pneumothorax"):
        sizes: tuple[Severity | None, ...] = (None, "small", "moderate")
        return FindingMention(label, side=side, severity=rng.choice(sizes))
    if label in ("Cardiomegaly", "Edema"):
        grades: tuple[Severity | None, ...] = (None, "mild", "moderate")
        return FindingMention(label, severity=rng.choice(grades))
    if label in ("Atelectasis", "Pleural Other"):
        return FindingMention(label, side=side)
    if label in ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion"):
        return FindingMention(label, location=rng.choice(_LOBES))
    if label == "Support Devices":
        return FindingMention(label, location=rng.choice(_DEVICES))
    if label == "Fracture":
        return FindingMention(label, location=rng.choice(_BONES))
    return FindingMention(label)


def correction_instruction(errors: Mapping[str, float], rng: random.Random) -> str:
    """Name each false positive ("there is no X") and false negative ("the patient has Y")."""
    parts = []
    for label in rng.sample(sorted(errors), len(errors)):
        templates = FALSE_POSITIVE_TEMPLATES if errors[label] == POSITIVE else (
            FALSE_NEGATIVE_TEMPLATES
        )
        parts.append(fill(rng.choice(templates), LABEL_WORDING[label]))
    closing = rng.choice(CORRECTION_CLOSINGS)
    if closing or len(parts) > 1:  # casual parts have no full stop; one is needed between
        parts = [part if part[-1] in ".?!" else f"{part}." for part in parts[:-1]] + parts[-1:]
        if closing and parts[-1][-1] not in ".?!":
            parts[-1] += "."
    return " ".join(parts) + closing


# --------------------------------------------------------------------------- edit style


def _join(sentences: Sequence[str]) -> str:
    """Join sentences; renumber a numbered list after items were removed or added."""
    if any(_NUMBER_PREFIX.match(sentence) for sentence in sentences):
        sentences = [
            f"{index}. {_NUMBER_PREFIX.sub('', sentence)}"
            for index, sentence in enumerate(sentences, start=1)
        ]
    return " ".join(sentences)


def _restatements(
    labels: Mapping[str, float | None], skip: set[str], rng: random.Random
) -> list[str]:
    """Template sentences for the observations of a dropped sentence that did not flip."""
    sentences = []
    for name in LABEL_WORDING:
        if name in skip:
            continue
        value = labels.get(name)
        if value == POSITIVE:
            sentences.append(positive_sentence(FindingMention(name), rng))
        elif value == UNCERTAIN:
            sentences.append(positive_sentence(FindingMention(name, "uncertain"), rng))
        elif value == NEGATIVE:
            sentences.append(negative_sentence(name, rng))
    return sentences


def _positive(value: float | None) -> bool:
    return value == POSITIVE


def _edit_section(
    sentences: list[str],
    errors: Mapping[str, float],
    labeler: Labeler,
    rng: random.Random,
) -> tuple[list[str], int | None]:
    """Drop the sentences an error contradicts; return the rest and where the first was."""
    kept: list[str] = []
    first_drop: int | None = None
    for sentence in sentences:
        found = labeler(sentence)
        drop = False
        for label, wrong in errors.items():
            if wrong == NEGATIVE and found.get(label) in (POSITIVE, UNCERTAIN):
                drop = True
            if wrong == POSITIVE and (
                found.get(label) == NEGATIVE
                or (
                    label != "Support Devices"
                    and all(found.get(name) is None for name in LABEL_WORDING)
                    and _NORMAL_STATEMENT.search(sentence)
                )
            ):
                drop = True
        if drop:
            if first_drop is None:
                first_drop = len(kept)
            kept.extend(_restatements(found, set(errors), rng))
        else:
            kept.append(sentence)
    return kept, first_drop


def edit_reports(
    record: StudyRecord, errors: Mapping[str, float], labeler: Labeler, rng: random.Random
) -> str | None:
    """The wrong report made by editing the record's report, or ``None`` when that fails.

    It fails when the report has no sentence stating a finding to remove, when the labeler
    reads the original report differently from the labels at an injected error, or when the
    labeler finds the edited report different from the original anywhere but exactly the
    injected errors.
    """
    original = labeler(record.report)
    for label, wrong in errors.items():
        # the original must say what the labels say at every flipped observation
        if _positive(original.get(label)) != (wrong == NEGATIVE):
            return None
    findings, first_drop = _edit_section(
        split_report_sentences(record.findings), errors, labeler, rng
    )
    impression, _ = _edit_section(split_report_sentences(record.impression), errors, labeler, rng)
    added: dict[str, FindingMention] = {}
    for label, wrong in errors.items():
        if wrong == NEGATIVE:
            if rng.random() < EXPLICIT_NEGATIVE_PROBABILITY:
                position = len(findings) if first_drop is None else first_drop
                findings.insert(position, negative_sentence(label, rng))
        else:
            mention = added[label] = random_mention(label, rng)
            findings.insert(rng.randint(0, len(findings)), positive_sentence(mention, rng))
            if (impression and label != "Support Devices"
                    and rng.random() < IMPRESSION_INSERT_PROBABILITY):
                impression.insert(rng.randint(0, len(impression)),
                                  render_impression([mention], rng))
    if not findings:
        findings = [negative_sentence(label, rng) for label, wrong in errors.items()
                    if wrong == NEGATIVE]
    if record.impression and not impression:
        remaining = labeler(_join(findings))
        mentions, _ = mentions_for_labels(
            {name: value for name, value in remaining.items() if name != NO_FINDING}, rng
        )
        mentions = [added.get(mention.label, mention) for mention in mentions]
        impression = [render_impression(mentions, rng)]
    wrong_report = format_report(_join(findings), _join(impression))
    if not is_consistent(labeler(wrong_report), original, errors):
        return None
    return wrong_report


def is_consistent(
    wrong: Mapping[str, float | None],
    original: Mapping[str, float | None],
    errors: Mapping[str, float],
) -> bool:
    """Whether labels of a wrong report differ from the original's exactly at ``errors``.

    Compared with the binary rule (positive vs. not): an injected removal must read as not
    positive and not uncertain, an injected addition as positive; every other observation
    (No Finding aside) as in the original.
    """
    for name in LABEL_WORDING:
        if name in errors:
            if errors[name] == POSITIVE and wrong.get(name) != POSITIVE:
                return False
            if errors[name] == NEGATIVE and wrong.get(name) in (POSITIVE, UNCERTAIN):
                return False
        elif _positive(wrong.get(name)) != _positive(original.get(name)):
            return False
    return True


# --------------------------------------------------------------------------- render style


def render_reports(
    record: StudyRecord, errors: Mapping[str, float], rng: random.Random
) -> tuple[str, str]:
    """``(wrong_report, right_report)`` rendered from the labels, sharing sentences.

    Every observation's sentence is drawn with a generator seeded by the example and the
    label, so both reports word an observation that did not flip identically. The mentions
    carry no side, size or location except an added false positive's (random: it is false).
    """
    seed = rng.getrandbits(32)
    mentions, negatives = mentions_for_labels(record.labels, rng)
    true_mentions = {mention.label: mention for mention in mentions}
    added = {label: random_mention(label, rng) for label, wrong in errors.items()
             if wrong == POSITIVE}
    explicit = {label for label, wrong in errors.items()
                if wrong == NEGATIVE and rng.random() < EXPLICIT_NEGATIVE_PROBABILITY}
    order = [mention.label for mention in mentions] + list(negatives)
    rng.shuffle(order)
    wrong_order = list(order)
    for label in added:
        if label not in wrong_order:
            wrong_order.insert(rng.randint(0, len(wrong_order)), label)

    def sentence(label: str, mention: FindingMention | None) -> str:
        label_rng = random.Random(f"{seed}\x00{label}")
        if mention is None:
            return negative_sentence(label, label_rng)
        return positive_sentence(mention, label_rng)

    right = [sentence(label, true_mentions.get(label)) for label in order]
    wrong: list[str] = []
    for label in wrong_order:
        if label in added:
            wrong.append(sentence(label, added[label]))
        elif errors.get(label) == NEGATIVE:
            if label in explicit:
                wrong.append(sentence(label, None))
        else:
            wrong.append(sentence(label, true_mentions.get(label)))
    if not wrong:
        wrong = [sentence(label, None) for label in errors]
    wrong_mentions = [m for m in mentions if errors.get(m.label) != NEGATIVE]
    wrong_mentions += list(added.values())
    impression_seed = rng.getrandbits(32)
    right_impression = render_impression(mentions, random.Random(impression_seed))
    wrong_impression = render_impression(wrong_mentions, random.Random(impression_seed))
    right_report = format_report(" ".join(right) or "The lungs are clear.", right_impression)
    wrong_report = format_report(" ".join(wrong), wrong_impression)
    return wrong_report, right_report


# --------------------------------------------------------------------------- task


def as_draft(report: str, labeler: Labeler) -> str:
    """``report`` in the order the model drafts in: sentences stating its findings first.

    The positive findings the labeler reads in the report are taken in label order (the order
    the prompt lists them); the impression is unchanged. A findings-first model's draft is the
    report a reader corrects, so with ``findings_first`` targets the wrong report of a
    correction example is ordered like one, and the corrected report differs from it only
    where the errors are.
    """
    labels = labeler(report)
    listed = [name for name in CHEXPERT_LABELS
              if name != NO_FINDING and labels.get(name) == POSITIVE]
    return reorder_report(report, listed)


def build_correction(ctx: TaskContext) -> InstructExample | None:
    """A correction example, or ``None`` when no label can flip."""
    record, rng = ctx.record, ctx.rng
    errors = choose_errors(record, rng)
    if not errors:
        return None
    wrong_report: str | None = None
    answer = record.report
    if ctx.correction_style == "edit" and ctx.labeler is not None:
        wrong_report = edit_reports(record, errors, ctx.labeler, rng)
    if wrong_report is None:
        wrong_report, answer = render_reports(record, errors, rng)
        if ctx.labeler is not None:
            right = ctx.labeler(answer)
            if not is_consistent(ctx.labeler(wrong_report), right, errors) or any(
                _positive(right.get(label)) != (wrong == NEGATIVE)
                for label, wrong in errors.items()
            ):
                return None
    if ctx.target_order == "findings_first":
        answer = reorder_report(answer, ctx.findings)
        if ctx.labeler is not None:
            wrong_report = as_draft(wrong_report, ctx.labeler)
    instruction = correction_instruction(errors, rng)
    return ctx.example(
        "correction", instruction, answer, report=wrong_report, injected_errors=errors
    )
