"""Learning from sign-offs: every signed-off study becomes a training example with provenance.

:func:`collect_signed_off` reads, for each study whose latest sign-off (a ``report_versions``
row of kind ``signoff``) falls in the requested period:

* the **images**: the image instances in the spool that the draft's job covered;
* the **final report**: the signed-off findings, impression and coded findings (the reader
  verified them, so they are the labels);
* the **correction pairs**: each accepted amendment or direct edit: the previous version ->
  the next one, with the reader's instruction (the dialog message that led to the accepted
  proposal) when there was one; and the draft -> the final text when it took more than one
  change (with the reader's instructions joined);
* the **provenance**: a digest of the Study Instance UID, the report version ids, the SR SOP
  Instance UIDs, the signer's user name, and the draft and sign-off times.

:func:`export_learning_set` writes them in the layout the training loaders read
(:func:`training.data.load_dicom_folder`)::

    <folder>/dicom/<digest>/<n>.dcm   pseudonymised copies of the images
    <folder>/reports.csv              StudyInstanceUID, findings, impression, indication and
                                      the 14 CheXpert columns (from the signed-off findings)
    <folder>/corrections.jsonl        one correction pair per line
    <folder>/provenance.jsonl         one line per study
    <folder>/learning_set.json        what was exported, when, and what was skipped

The copies carry no patient name, birth date, accession number or institution; the patient
ID is replaced by a pseudonym derived from the node's patient key (studies of one patient
stay together when the data is split by patient) and every UID by a ``2.25`` UID derived
from it. Nothing here logs more than counts and digests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from dicom_node._privacy import uid_digest
from dicom_node.errors import NodeError
from dicom_node.pipeline.reports import findings_from_json
from dicom_node.store import (
    Database,
    DialogMessage,
    Instance,
    Job,
    MessageRole,
    Proposal,
    ProposalStatus,
    ReportKind,
    ReportVersion,
    Study,
)

logger = logging.getLogger(__name__)

#: Format name and version of ``learning_set.json``.
LEARNING_SET_FORMAT = "cxr-learning-set"
LEARNING_SET_VERSION = 1
#: File names inside an exported learning set.
DICOM_DIR = "dicom"
REPORTS_CSV = "reports.csv"
CORRECTIONS_FILE = "corrections.jsonl"
PROVENANCE_FILE = "provenance.jsonl"
MANIFEST_FILE = "learning_set.json"
#: Prefix of the pseudonymous patient IDs of site studies.
SUBJECT_PREFIX = "site-"
#: Attributes removed from the image copies (patient and institution identity).
REMOVED_ATTRIBUTES = (
    "PatientName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "RequestAttributesSequence",
)
#: UIDs replaced by derived ``2.25`` UIDs in the copies.
PSEUDONYMISED_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
#: Presence of a coded finding -> CheXpert label value.
PRESENCE_VALUES = {"present": "1.0", "absent": "0.0", "uncertain": "-1.0"}

CorrectionKind = Literal["draft_to_final", "amendment", "edit"]


class LearningError(NodeError):
    """Signed-off studies cannot be turned into training data (the message says why)."""


@dataclass(frozen=True)
class CorrectionPair:
    """A report before and after a reader's change."""

    kind: CorrectionKind
    #: Report text before (``FINDINGS: ...\\nIMPRESSION: ...``, as training writes reports).
    before: str
    after: str
    #: The reader's dialog message that led to the change; None for edits, and for the
    #: draft -> final pair when the reader wrote no message.
    instruction: str | None
    from_version_id: int
    to_version_id: int


@dataclass(frozen=True)
class SignedOffStudy:
    """One signed-off study with everything training needs and its provenance.

    ``study_instance_uid`` is kept for reading; exports and logs use ``study_digest``.
    """

    study_id: int
    study_instance_uid: str
    study_digest: str
    patient_key: str | None
    images: tuple[Path, ...]
    findings_text: str
    impression_text: str
    indication: str | None
    #: Label -> ``present``/``absent``/``uncertain`` from the signed-off version.
    findings: dict[str, str]
    draft_version_id: int
    signoff_version_id: int
    #: Report version ids from the draft to the sign-off.
    version_ids: tuple[int, ...]
    sr_sop_instance_uids: tuple[str, ...]
    signer: str | None
    drafted_at: datetime
    signed_at: datetime
    draft_model: tuple[str | None, str | None]
    corrections: tuple[CorrectionPair, ...] = field(default_factory=tuple)

    @property
    def report(self) -> str:
        """The final report in the layout training uses."""
        return report_text(self.findings_text, self.impression_text)


@dataclass(frozen=True)
class LearningSet:
    """An exported learning set (see the module docstring for the layout)."""

    folder: Path
    dicom_dir: Path
    reports_csv: Path
    corrections: Path
    provenance: Path
    n_studies: int
    n_images: int
    n_corrections: int
    #: Reason -> number of studies left out.
    skipped: dict[str, int]


def report_text(findings: str, impression: str) -> str:
    """Report text in the layout of :attr:`training.records.StudyRecord.report`."""
    from report_language.sections import format_report

    return format_report(findings.strip(), impression.strip())


def pseudonymous_uid(uid: str) -> str:
    """A ``2.25`` UID derived from `uid` (the same UID always gives the same one)."""
    digest = hashlib.sha256(f"cxr-dicom-node learning\\{uid}".encode("ascii", "replace"))
    return f"2.25.{int(digest.hexdigest()[:32], 16)}"


def subject_pseudonym(patient_key: str | None, study_uid: str) -> str:
    """Patient ID of the copies: from the patient key, or the study when there is none."""
    if patient_key:
        return f"{SUBJECT_PREFIX}{patient_key[:20]}"
    return f"{SUBJECT_PREFIX}study-{uid_digest(study_uid, 20)}"


# --------------------------------------------------------------------------- collecting
def _latest_signoffs(
    db: Database, since: datetime | None, until: datetime | None
) -> list[ReportVersion]:
    with db.session() as session:
        rows = list(
            session.scalars(
                select(ReportVersion)
                .where(ReportVersion.kind == ReportKind.SIGNOFF)
                .order_by(ReportVersion.study_id, ReportVersion.version.desc())
            )
        )
        for row in rows:
            session.expunge(row)
    latest: dict[int, ReportVersion] = {}
    for row in rows:
        latest.setdefault(row.study_id, row)
    return [
        row
        for row in latest.values()
        if (since is None or row.created_at >= since) and (until is None or row.created_at < until)
    ]


def _instruction(db: Database, version: ReportVersion) -> str | None:
    """The reader's message behind an accepted proposal that became `version`."""
    with db.session() as session:
        proposal = session.scalar(
            select(Proposal)
            .where(
                Proposal.study_id == version.study_id,
                Proposal.status == ProposalStatus.ACCEPTED,
                Proposal.accepted_version == version.version,
            )
            .order_by(Proposal.id.desc())
            .limit(1)
        )
        if proposal is None:
            return None
        answer_id = session.scalar(
            select(DialogMessage.id)
            .where(DialogMessage.study_id == version.study_id,
                   DialogMessage.proposal_id == proposal.id)
            .order_by(DialogMessage.id)
            .limit(1)
        )
        query = select(DialogMessage.text).where(
            DialogMessage.study_id == version.study_id,
            DialogMessage.role == MessageRole.USER,
            DialogMessage.based_on_version == proposal.based_on_version,
        )
        if answer_id is not None:
            query = query.where(DialogMessage.id < answer_id)
        text = session.scalar(query.order_by(DialogMessage.id.desc()).limit(1))
    return text.strip() if text and text.strip() else None


def _study_images(
    db: Database, spool_dir: Path, study_id: int, job_id: int | None
) -> list[Path]:
    from sr_templates._sources import is_image_sop_class

    with db.session() as session:
        until = None
        if job_id is not None:
            until = session.scalar(select(Job.instances_until).where(Job.id == job_id))
        query = select(Instance.path, Instance.sop_class_uid).where(Instance.study_id == study_id)
        if until is not None:
            query = query.where(Instance.received_at <= until)
        rows = list(session.execute(query.order_by(Instance.received_at, Instance.id)))
    return [spool_dir / path for path, sop_class in rows if is_image_sop_class(sop_class)]


def _pairs(
    db: Database, chain: Sequence[ReportVersion]
) -> tuple[CorrectionPair, ...]:
    """Correction pairs of a chain that starts with the draft and ends with the sign-off."""
    pairs: list[CorrectionPair] = []
    instructions: list[str] = []
    for previous, current in zip(chain, chain[1:], strict=False):
        if current.kind not in (ReportKind.AMENDMENT, ReportKind.EDIT):
            continue
        before = report_text(previous.findings_text, previous.impression_text)
        after = report_text(current.findings_text, current.impression_text)
        if before == after:
            continue
        instruction = _instruction(db, current) if current.kind is ReportKind.AMENDMENT else None
        if instruction:
            instructions.append(instruction)
        pairs.append(
            CorrectionPair(
                "amendment" if current.kind is ReportKind.AMENDMENT else "edit",
                before, after, instruction, previous.id, current.id,
            )
        )
    draft, final = chain[0], chain[-1]
    before = report_text(draft.findings_text, draft.impression_text)
    after = report_text(final.findings_text, final.impression_text)
    # One change that led from the draft to the final text is already a pair.
    if before != after and not any(p.before == before and p.after == after for p in pairs):
        pairs.insert(
            0,
            CorrectionPair(
                "draft_to_final", before, after,
                " ".join(instructions) if instructions else None, draft.id, final.id,
            ),
        )
    return tuple(pairs)


def collect_signed_off(
    db: Database,
    spool_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[SignedOffStudy], dict[str, int]]:
    """Every study whose latest sign-off is in ``[since, until)``, as a training example.

    Parameters
    ----------
    db
        The node's database.
    spool_dir
        The spool folder (``storage.spool_dir``).
    since, until
        Sign-off period (timezone-aware; None = open).

    Returns
    -------
    tuple
        The studies (oldest study first) and, by reason, how many signed-off studies were
        left out (``no draft``, ``images gone from the spool``).
    """
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise ValueError("since and until must be timezone-aware")
    studies: list[SignedOffStudy] = []
    skipped = {"no draft before the sign-off": 0, "images gone from the spool": 0}
    for signoff in _latest_signoffs(db, since, until):
        with db.session() as session:
            study = session.get(Study, signoff.study_id)
            if study is None:  # deleted since the sign-offs were read
                continue
            study_uid, patient = study.study_instance_uid, study.patient_key
            rows = list(
                session.scalars(
                    select(ReportVersion)
                    .where(ReportVersion.study_id == signoff.study_id,
                           ReportVersion.version <= signoff.version)
                    .order_by(ReportVersion.version)
                )
            )
            for row in rows:
                session.expunge(row)
        drafts = [i for i, row in enumerate(rows) if row.kind is ReportKind.DRAFT]
        if not drafts:
            skipped["no draft before the sign-off"] += 1
            continue
        chain = rows[drafts[-1]:]
        draft = chain[0]
        images = _study_images(db, spool_dir, signoff.study_id, draft.job_id)
        if not images or not all(path.is_file() for path in images):
            skipped["images gone from the spool"] += 1
            continue
        studies.append(
            SignedOffStudy(
                study_id=signoff.study_id,
                study_instance_uid=study_uid,
                study_digest=uid_digest(study_uid),
                patient_key=patient,
                images=tuple(images),
                findings_text=signoff.findings_text,
                impression_text=signoff.impression_text,
                indication=signoff.indication,
                findings={f.label: f.presence for f in findings_from_json(signoff.findings_json)},
                draft_version_id=draft.id,
                signoff_version_id=signoff.id,
                version_ids=tuple(row.id for row in chain),
                sr_sop_instance_uids=tuple(row.sr_sop_instance_uid for row in chain),
                signer=signoff.author,
                drafted_at=draft.created_at,
                signed_at=signoff.created_at,
                draft_model=(draft.model_name, draft.model_version),
                corrections=_pairs(db, chain),
            )
        )
    studies.sort(key=lambda s: s.study_id)
    logger.info(
        "%d signed-off studies collected (%s)", len(studies),
        ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n) or "none skipped",
    )
    return studies, skipped


# --------------------------------------------------------------------------- exporting
def _copy_image(source: Path, dest: Path, subject: str) -> None:
    """Write a pseudonymised copy of one image (atomically)."""
    try:
        ds = pydicom.dcmread(source)
    except (OSError, InvalidDicomError) as exc:
        raise LearningError(
            f"a spooled image cannot be read ({type(exc).__name__}); is the spool intact?"
        ) from exc
    for keyword in REMOVED_ATTRIBUTES:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientID = subject
    for keyword in PSEUDONYMISED_UIDS:
        if keyword in ds:
            setattr(ds, keyword, pseudonymous_uid(str(getattr(ds, keyword))))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, dest)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def export_learning_set(
    studies: Sequence[SignedOffStudy],
    folder: Path,
    *,
    since: datetime | None = None,
    skipped: dict[str, int] | None = None,
) -> LearningSet:
    """Write signed-off studies as a training data set (layout in the module docstring).

    Parameters
    ----------
    studies
        From :func:`collect_signed_off`.
    folder
        Output folder; must not hold a learning set yet.
    since
        The period start, recorded in ``learning_set.json``.
    skipped
        Studies left out while collecting, recorded too.

    Raises
    ------
    LearningError
        When the folder already holds a learning set, or an image cannot be read or written.
    """
    from report_language.labels import CHEXPERT_LABELS

    if (folder / MANIFEST_FILE).exists():
        raise LearningError(f"{folder} already holds a learning set")
    dicom_dir = folder / DICOM_DIR
    n_images = n_pairs = 0
    try:
        dicom_dir.mkdir(parents=True, exist_ok=True)
        reports_path = folder / REPORTS_CSV
        corrections_path = folder / CORRECTIONS_FILE
        provenance_path = folder / PROVENANCE_FILE
        with (
            reports_path.open("w", encoding="utf-8", newline="") as reports_file,
            corrections_path.open("w", encoding="utf-8") as corrections_file,
            provenance_path.open("w", encoding="utf-8") as provenance_file,
        ):
            writer = csv.writer(reports_file)
            writer.writerow(
                ["StudyInstanceUID", "findings", "impression", "indication", *CHEXPERT_LABELS]
            )
            for study in studies:
                uid = pseudonymous_uid(study.study_instance_uid)
                subject = subject_pseudonym(study.patient_key, study.study_instance_uid)
                for index, image in enumerate(study.images):
                    _copy_image(image, dicom_dir / study.study_digest / f"{index}.dcm", subject)
                    n_images += 1
                writer.writerow(
                    [uid, study.findings_text, study.impression_text, study.indication or ""]
                    + [PRESENCE_VALUES.get(study.findings.get(label, ""), "")
                       for label in CHEXPERT_LABELS]
                )
                for pair in study.corrections:
                    corrections_file.write(json.dumps({
                        "study_uid": uid,
                        "study_digest": study.study_digest,
                        "kind": pair.kind,
                        "instruction": pair.instruction,
                        "before": pair.before,
                        "after": pair.after,
                        "from_version_id": pair.from_version_id,
                        "to_version_id": pair.to_version_id,
                    }, ensure_ascii=False) + "\n")
                    n_pairs += 1
                provenance_file.write(json.dumps({
                    "study_digest": study.study_digest,
                    "study_uid": uid,
                    "report_version_ids": list(study.version_ids),
                    "draft_version_id": study.draft_version_id,
                    "signoff_version_id": study.signoff_version_id,
                    "sr_sop_instance_uids": list(study.sr_sop_instance_uids),
                    "signer": study.signer,
                    "drafted_at": _iso(study.drafted_at),
                    "signed_at": _iso(study.signed_at),
                    "draft_model": {"name": study.draft_model[0],
                                    "version": study.draft_model[1]},
                    "images": len(study.images),
                    "corrections": len(study.corrections),
                }) + "\n")
        manifest: dict[str, Any] = {
            "format": LEARNING_SET_FORMAT,
            "format_version": LEARNING_SET_VERSION,
            "created": _iso(datetime.now(UTC)),
            "since": _iso(since) if since is not None else None,
            "studies": len(studies),
            "images": n_images,
            "corrections": n_pairs,
            "skipped": dict(skipped or {}),
        }
        (folder / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise LearningError(f"cannot write the learning set in {folder}: {exc}") from exc
    logger.info(
        "learning set: %d studies, %d images, %d correction pairs", len(studies), n_images,
        n_pairs,
    )
    return LearningSet(
        folder=folder,
        dicom_dir=dicom_dir,
        reports_csv=reports_path,
        corrections=corrections_path,
        provenance=provenance_path,
        n_studies=len(studies),
        n_images=n_images,
        n_corrections=n_pairs,
        skipped=dict(skipped or {}),
    )


__all__ = [
    "CORRECTIONS_FILE",
    "CorrectionPair",
    "LearningError",
    "LearningSet",
    "SignedOffStudy",
    "collect_signed_off",
    "export_learning_set",
    "pseudonymous_uid",
    "report_text",
    "subject_pseudonym",
]
