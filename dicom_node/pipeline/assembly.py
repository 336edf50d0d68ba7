"""Study assembly and routing: from received instances to report jobs.

A study is *stable* (complete) when no instance has arrived for ``stable_seconds``, as with
Orthanc's StableAge. Each stable study whose current set of instances has not been assembled
yet goes through the routing rules (:func:`route_study`): it is reportable when it holds a
CR or DX image of the chest (Body Part Examined CHEST, or absent) in a frontal view (View
Position PA or AP). Lateral and other views of the chest travel with the study as extra
views. A reportable study gets one job row (state ``queued``) per distinct set of instances:

* a study re-sent with the same instances makes no new job (duplicates are not recorded
  again, so the set does not change);
* instances that arrive after a job was created make a new set, and so a new job.

The scheduler (``dicom_node serve``) calls :func:`assemble` periodically; the queue and the
worker that run the jobs come on top of the job rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from dicom_node._privacy import uid_digest
from dicom_node.dicom.files import raw_text
from dicom_node.dicom.image_check import is_model_image
from dicom_node.pipeline.local_study import FRONTAL_VIEWS
from dicom_node.store import Database, Job, JobState, Study

logger = logging.getLogger(__name__)

#: Modalities the model reports on.
REPORTABLE_MODALITIES = frozenset({"CR", "DX"})
#: Body Part Examined values of a chest image (an absent value counts as chest too).
CHEST_BODY_PARTS = frozenset({"CHEST"})


class ImageAttributes(Protocol):
    """What the model-image rule reads of an instance (a row, or :class:`InstanceInfo`)."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def body_part(self) -> str | None: ...
    @property
    def view_position(self) -> str | None: ...


_Image = TypeVar("_Image", bound=ImageAttributes)


def sees_image(
    sop_class_uid: str, modality: str | None, body_part: str | None, view_position: str | None
) -> bool:
    """The one rule for the images the model sees, for drafts and dialog turns alike.

    A frontal chest radiograph: CR or DX image storage (never a Secondary Capture, whatever
    its Modality), Modality CR or DX, Body Part Examined CHEST or absent, View Position PA or
    AP. The model was trained and evaluated on frontal views; a lateral view goes into the
    SR's evidence but not into the model.
    """
    return (
        is_model_image(sop_class_uid)
        and (modality or "").upper() in REPORTABLE_MODALITIES
        and (not body_part or body_part.upper() in CHEST_BODY_PARTS)
        and (view_position or "").upper() in FRONTAL_VIEWS
    )


def model_images(instances: Iterable[_Image]) -> list[_Image]:
    """The instances the model sees (:func:`sees_image`), in their order."""
    return [
        item
        for item in instances
        if sees_image(item.sop_class_uid, item.modality, item.body_part, item.view_position)
    ]


def model_datasets(datasets: Iterable[Dataset]) -> list[Dataset]:
    """The data sets the model sees (:func:`sees_image`), read from their raw values."""
    return [
        ds
        for ds in datasets
        if sees_image(
            raw_text(ds, "SOPClassUID") or "",
            raw_text(ds, "Modality"),
            raw_text(ds, "BodyPartExamined"),
            raw_text(ds, "ViewPosition"),
        )
    ]


@dataclass(frozen=True)
class InstanceInfo:
    """What routing needs of one instance of a study."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    #: Path relative to the spool folder.
    path: str
    #: When the instance (or its latest corrected copy) arrived.
    received_at: datetime


@dataclass(frozen=True)
class StudySnapshot:
    """A study and its instances as read at one moment."""

    study_id: int
    study_instance_uid: str
    accession_number: str | None
    last_received_at: datetime
    instances: tuple[InstanceInfo, ...]

    @property
    def instance_set_hash(self) -> str:
        """SHA-256 of the sorted SOP Instance UIDs, each with its arrival time: the identity
        of this set of instances (a corrected copy of an instance makes a new set)."""
        keys = sorted(
            f"{info.sop_instance_uid}@{info.received_at.timestamp():.6f}"
            for info in self.instances
        )
        return hashlib.sha256("\n".join(keys).encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Routing:
    """The routing decision for a study.

    Attributes
    ----------
    reportable
        Whether the study gets a report job.
    reason
        Why not (empty when reportable).
    images
        The study's chest CR/DX images, frontal views first (laterals and views without a
        View Position follow); the model reads the frontal ones (:func:`model_images`).
        Empty when not reportable.
    """

    reportable: bool
    reason: str = ""
    images: tuple[InstanceInfo, ...] = ()


@dataclass
class AssemblyResult:
    """What one :func:`assemble` pass did."""

    #: Ids of the jobs created.
    jobs_created: list[int] = field(default_factory=list)
    #: Stable studies the routing rules did not queue, with the reason.
    not_reportable: list[tuple[str, str]] = field(default_factory=list)


def _is_chest_xray(info: InstanceInfo) -> bool:
    return info.modality in REPORTABLE_MODALITIES and (
        info.body_part is None or info.body_part in CHEST_BODY_PARTS
    )


def route_study(study: StudySnapshot) -> Routing:
    """Apply the routing rules to a study.

    Parameters
    ----------
    study
        The study and its instances.

    Returns
    -------
    Routing
        Reportable when a CR/DX chest image (CR or DX image storage, Modality CR or DX, body
        part CHEST or absent) has View Position PA or AP; its images are every such image,
        frontal first. A Secondary Capture is never a radiograph, whatever its Modality.
    """
    labelled = [info for info in study.instances if info.modality in REPORTABLE_MODALITIES]
    xrays = [info for info in labelled if is_model_image(info.sop_class_uid)]
    if not xrays:
        if labelled:
            return Routing(
                False,
                "no radiograph: the instances labelled CR/DX are not CR or DX image storage "
                "(a Secondary Capture is a screenshot, not a radiograph)",
            )
        found = sorted({info.modality or "none" for info in study.instances})
        return Routing(False, f"no CR or DX image (modality {', '.join(found)})")
    chest = [info for info in xrays if _is_chest_xray(info)]
    if not chest:
        parts = sorted({info.body_part or "" for info in xrays})
        return Routing(False, f"no chest image (body part {', '.join(parts)})")
    if not model_images(chest):
        views = sorted({info.view_position or "none" for info in chest})
        return Routing(False, f"no frontal (PA or AP) view (view position {', '.join(views)})")
    ordered = sorted(
        chest,
        key=lambda info: (
            info.view_position not in FRONTAL_VIEWS,
            info.series_instance_uid,
            info.sop_instance_uid,
        ),
    )
    return Routing(True, "", tuple(ordered))


def is_reportable(study: StudySnapshot) -> bool:
    """Whether the routing rules queue a report for the study (see :func:`route_study`)."""
    return route_study(study).reportable


def _snapshot(study: Study) -> StudySnapshot:
    return StudySnapshot(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        last_received_at=study.last_received_at,
        instances=tuple(
            InstanceInfo(
                sop_instance_uid=i.sop_instance_uid,
                series_instance_uid=i.series_instance_uid,
                sop_class_uid=i.sop_class_uid,
                modality=i.modality,
                body_part=i.body_part,
                view_position=i.view_position,
                path=i.path,
                received_at=i.received_at,
            )
            for i in study.instances
        ),
    )


def find_stable_studies(
    db: Database, stable_seconds: float, now: datetime
) -> list[StudySnapshot]:
    """Studies that are complete and whose current set of instances is not assembled yet.

    Parameters
    ----------
    db
        The node's database.
    stable_seconds
        A study is complete when its last instance arrived more than this many seconds
        before `now`.
    now
        The current time (timezone-aware).

    Returns
    -------
    list of StudySnapshot
        Oldest first. A study already assembled with its current instances, or that already
        has a job for exactly this set, is left out.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    if stable_seconds < 0:
        raise ValueError(f"stable_seconds must be >= 0, got {stable_seconds}")
    cutoff = now - timedelta(seconds=stable_seconds)
    with db.session() as session:
        studies = session.scalars(
            select(Study)
            .where(
                Study.last_received_at < cutoff,
                (Study.assembled_count.is_(None))
                | (Study.assembled_count != Study.instance_count),
            )
            .options(selectinload(Study.instances))
            .order_by(Study.last_received_at)
        ).all()
        snapshots = [_snapshot(study) for study in studies]
        if not snapshots:
            return []
        existing = set(
            session.execute(
                select(Job.study_id, Job.instance_set_hash).where(
                    Job.study_id.in_([snap.study_id for snap in snapshots])
                )
            )
        )
    return [
        snap for snap in snapshots if (snap.study_id, snap.instance_set_hash) not in existing
    ]


def _mark_assembled(
    session: Any, study: StudySnapshot, now: datetime, reason: str | None
) -> bool:
    """Record that the study's current instances are assembled, if they still are current.

    A compare-and-set: nothing changes when an instance was recorded since `study` was read.
    """
    result = session.execute(
        update(Study)
        .where(
            Study.id == study.study_id,
            Study.instance_count == len(study.instances),
            Study.last_received_at == study.last_received_at,
        )
        .values(
            assembled_count=len(study.instances), assembled_at=now, not_reportable_reason=reason
        )
    )
    return bool(result.rowcount)


def create_job(db: Database, study: StudySnapshot, now: datetime) -> int | None:
    """Create the ``queued`` job of a study's current set of instances.

    The study is marked assembled in the same transaction. Nothing is created when the
    study received instances since `study` was read (the next pass sees the new set) or
    when a job for this set already exists.

    Parameters
    ----------
    db
        The node's database.
    study
        The study, as returned by :func:`find_stable_studies`.
    now
        Creation time (timezone-aware).

    Returns
    -------
    int or None
        The new job's id, or ``None`` when none was created.
    """
    with db.session() as session:
        if not _mark_assembled(session, study, now, None):
            return None
        existing = session.scalar(
            select(Job.id).where(
                Job.study_id == study.study_id,
                Job.instance_set_hash == study.instance_set_hash,
            )
        )
        if existing is not None:
            return None
        job = Job(
            study_id=study.study_id,
            instance_set_hash=study.instance_set_hash,
            instance_count=len(study.instances),
            instances_until=study.last_received_at,
            state=JobState.QUEUED,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        return job.id


def assemble(db: Database, stable_seconds: float, now: datetime) -> AssemblyResult:
    """One assembly pass: route every newly stable study and queue the reportable ones.

    Parameters
    ----------
    db
        The node's database.
    stable_seconds
        Quiet time after the last instance before a study counts as complete.
    now
        The current time (timezone-aware).

    Returns
    -------
    AssemblyResult
        The jobs created and the studies left out, with the reason.
    """
    result = AssemblyResult()
    for study in find_stable_studies(db, stable_seconds, now):
        routing = route_study(study)
        digest = uid_digest(study.study_instance_uid)
        if not routing.reportable:
            with db.session() as session:
                if _mark_assembled(session, study, now, routing.reason):
                    result.not_reportable.append((digest, routing.reason))
                    logger.info("study %s not queued: %s", digest, routing.reason)
            continue
        job_id = create_job(db, study, now)
        if job_id is not None:
            result.jobs_created.append(job_id)
            logger.info(
                "queued job %d for study %s (%d instance(s), %d image(s) for the model)",
                job_id,
                digest,
                len(study.instances),
                len(routing.images),
            )
    return result


__all__ = [
    "CHEST_BODY_PARTS",
    "REPORTABLE_MODALITIES",
    "AssemblyResult",
    "ImageAttributes",
    "InstanceInfo",
    "Routing",
    "StudySnapshot",
    "assemble",
    "create_job",
    "find_stable_studies",
    "is_reportable",
    "model_datasets",
    "model_images",
    "route_study",
    "sees_image",
]
