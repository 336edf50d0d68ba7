"""Train / validation / test splits by patient.

Every study of a subject lands in the same split, so no patient is seen in training and
evaluated on. The split is a pure function of the subject id and the seed (SHA-256, stable
across Python runs and machines), so adding studies never moves an existing subject. An
official split (MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-split.csv``) overrides the hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from training.records import StudyRecord

SplitName = Literal["train", "val", "test"]

#: Names used by datasets for each split.
_SPLIT_ALIASES: Final[dict[str, SplitName]] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def normalise_split_name(name: str) -> SplitName:
    """Map ``"validate"``, ``"valid"``, ... to ``"val"`` (and the train/test synonyms).

    Raises
    ------
    ValueError
        For a name that is none of them.
    """
    key = name.strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[key]


@dataclass(frozen=True)
class Split:
    """Records of each split, in their input order."""

    train: list[StudyRecord]
    val: list[StudyRecord]
    test: list[StudyRecord]

    def __iter__(self) -> Iterator[list[StudyRecord]]:
        """Iterate ``train, val, test`` (so ``train, val, test = split`` works)."""
        return iter((self.train, self.val, self.test))


def subject_fraction(subject_id: str, seed: int) -> float:
    """A number in ``[0, 1)`` fixed by the subject id and the seed (SHA-256 based)."""
    digest = hashlib.sha256(f"{seed}\x00{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_records(
    records: Iterable[StudyRecord],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    *,
    official: Mapping[str, str] | None = None,
) -> Split:
    """Split records by patient, deterministically.

    Parameters
    ----------
    records
        Studies to split.
    val_fraction, test_fraction
        Expected share of subjects in validation and test; the rest is training.
    seed
        Changes which subjects go where; the same seed gives the same split on every run.
    official
        Study id -> split name (``train``, ``validate``/``val``, ``test``), e.g. from
        :func:`~training.data.load_mimic_split`. A listed study goes where it says; the other
        studies of a subject with a listed study follow that subject's (first listed) split;
        subjects with no listed study are hashed.

    Returns
    -------
    Split

    Raises
    ------
    ValueError
        For fractions outside ``[0, 1)`` or summing to 1 or more, or an unknown official
        split name.
    """
    for argument, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{argument} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    items = list(records)
    assigned = {study: normalise_split_name(text) for study, text in (official or {}).items()}
    subject_split: dict[str, SplitName] = {}
    for record in items:
        if record.study_id in assigned:
            subject_split.setdefault(record.subject_id, assigned[record.study_id])
    buckets: dict[SplitName, list[StudyRecord]] = {"train": [], "val": [], "test": []}
    for record in items:
        name = assigned.get(record.study_id) or subject_split.get(record.subject_id)
        if name is None:
            fraction = subject_fraction(record.subject_id, seed)
            if fraction < test_fraction:
                name = "test"
            elif fraction < test_fraction + val_fraction:
                name = "val"
            else:
                name = "train"
        buckets[name].append(record)
    return Split(train=buckets["train"], val=buckets["val"], test=buckets["test"])
