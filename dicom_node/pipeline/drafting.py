"""The report job: from an assembled study to a draft SR in the outbox.

:func:`draft_job` runs one job row (see :mod:`dicom_node.pipeline.assembly`):

1. **Claim** the row: ``queued`` -> ``running`` in one conditional UPDATE, so two workers
   given the same job (a redelivered message) never both run it. While the job runs its
   worker refreshes the row's ``updated_at`` (:func:`touch_job`, a
   :class:`~dicom_node.pipeline.heartbeat.Heartbeat`); a ``running`` row not refreshed for
   ``worker.stale_job_s`` belongs to a worker that died and is claimable again.
2. **Skip** it (``superseded``) when a newer job of the same study exists: instances arrived
   after it, and the newer job drafts from all of them.
3. **Read** the job's instances from the spool: every image the job covers is referenced
   by the SR; the frontal CR/DX images go to the model.
4. **Match** the RIS worklist (:func:`~dicom_node.dicom.worklist.resolve_worklist`): the
   indication goes into the prompt and the SR, the order into its Referenced Request
   Sequence.
5. **Draft** the report with the model, then **build** the TID 2000 draft SR, keep it as
   the study's next report version (:mod:`dicom_node.pipeline.reports`) and put it in the outbox for
   the PACS destinations of the AE that sent the study.
6. Mark the job ``done``.

A job retried after a crash between steps 5 and 6 does not draft twice: the report version
it stored is found by its job id and only re-queued for delivery.

Failures are sorted for the queue: :class:`~dicom_node.errors.TransientJobError` (database
briefly away) puts the row back to ``queued`` for a retry; :class:`~dicom_node.errors.JobError`
(images gone or unusable, SR not buildable) marks it ``failed`` with the reason. Any other
exception (a bug, a library that changed) marks it ``failed`` too, with the exception's type:
no job is left ``running`` by an exception. Reasons are scrubbed of patient data
(:func:`~dicom_node._privacy.scrub_text`) before they are stored or logged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import describe_exception, scrub_text, uid_digest
from dicom_node.dicom.worklist import WorklistMatch, resolve_worklist
from dicom_node.errors import (
    NOT_DRAFTED_PREFIX,
    JobError,
    OutboxError,
    ReportStoreError,
    StaleVersionError,
    TransientJobError,
)
from dicom_node.pipeline.assembly import model_datasets
from dicom_node.pipeline.finding_codes import code_findings
from dicom_node.pipeline.reports import (
    FindingRecord,
    latest_version,
    requeue_version,
    store_and_enqueue,
)
from dicom_node.settings import Settings
from dicom_node.store import Database, Instance, Job, JobState, ReportKind, ReportVersion, Study
from sr_templates import AlgorithmInfo, Finding, Presence, Report, SRError, build_draft_sr

if TYPE_CHECKING:
    from inference import ChestXrayVLM, DraftReport, StudyAnalysis
    from inference.content_check import ContentScore

logger = logging.getLogger(__name__)

#: Findings text of a draft when the model wrote no narrative (the coded findings remain).
NO_NARRATIVE = "No narrative text was generated; see the coded findings."
#: Characters a DICOM text value (LT/ST/UT) cannot hold: C0 controls but CR, LF and FF; DEL;
#: C1 controls.
_UNPRINTABLE = re.compile("[\x00-\x09\x0b\x0e-\x1f\x7f-\x9f]")
#: How often storing a draft is retried when a reader's amendment lands at the same moment.
STORE_ATTEMPTS = 3
#: The statement a draft of a screened-out image opens with (``inference.screening = warn``).
CAUTION_STATEMENT = "CAUTION: outside the model's training distribution"


@dataclass(frozen=True)
class DraftOutcome:
    """What :func:`draft_job` did with one job."""

    job_id: int
    #: ``done``, ``superseded``, or None when the job was not claimable (done, running).
    state: JobState | None
    #: The stored report version, when drafted.
    report_version: int | None = None
    #: Outbox rows of the SR (one per PACS destination).
    outbox_ids: list[int] = field(default_factory=list)
    #: Seconds spent in the model (vision and generation).
    inference_seconds: float = 0.0
    #: What the job could not use (images left out), recorded with the done job.
    note: str | None = None


@dataclass(frozen=True)
class JobImages:
    """The instances of a job, read from the spool."""

    #: Every image the job covers (the SR references them all).
    sources: list[Dataset]
    #: The frontal CR/DX images, for the model.
    frontal: list[Dataset]
    #: AE title that sent the study (its routing names the PACS destinations).
    calling_ae: str


# --------------------------------------------------------------------------- job rows
def claim_job(db: Database, job_id: int, stale_after_s: float, now: datetime) -> bool:
    """Set a job ``running`` if it is queued, or running but abandoned; True when claimed.

    A running job is abandoned when its worker has not refreshed it (:func:`touch_job`)
    for `stale_after_s` seconds. The claim records `now` as ``started_at``, which
    identifies this run to :func:`touch_job`.
    """
    stale_before = now - timedelta(seconds=stale_after_s)
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.state == JobState.QUEUED,
                    and_(Job.state == JobState.RUNNING, Job.updated_at < stale_before),
                ),
            )
            .values(
                state=JobState.RUNNING,
                attempts=Job.attempts + 1,
                started_at=now,
                updated_at=now,
                error=None,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def touch_job(db: Database, job_id: int, claimed_at: datetime, now: datetime) -> bool:
    """The heartbeat of a running job: set its ``updated_at`` to `now`.

    Only the run that claimed the job at `claimed_at` (its ``started_at``) is refreshed: a
    beat never keeps another worker's run, or a finished job, alive. Returns whether the
    row was refreshed.
    """
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state == JobState.RUNNING,
                Job.started_at == claimed_at,
            )
            .values(updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def touch_jobs(
    db: Database, job_ids: Sequence[int], claimed_at: datetime, now: datetime
) -> int:
    """The heartbeat of a batch: :func:`touch_job` for every job of `job_ids` that this run
    claimed at `claimed_at` (one UPDATE); returns how many rows were refreshed."""
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id.in_(list(job_ids)),
                Job.state == JobState.RUNNING,
                Job.started_at == claimed_at,
            )
            .values(updated_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def fail_claimed(
    db: Database, job_ids: Sequence[int], claimed_at: datetime, reason: str
) -> list[int]:
    """Fail the jobs of `job_ids` that are still running under the claim made at
    `claimed_at` (a batch stopped by its time limit); returns their ids."""
    now = datetime.now(UTC)
    with db.session() as session:
        return list(
            session.scalars(
                update(Job)
                .where(
                    Job.id.in_(list(job_ids)),
                    Job.state == JobState.RUNNING,
                    Job.started_at == claimed_at,
                )
                .values(state=JobState.FAILED, error=reason, finished_at=now, updated_at=now)
                .returning(Job.id)
            )
        )


def finish_job(
    db: Database, job_id: int, state: JobState, error: str | None = None
) -> None:
    """Record the end of a job run (``done``, ``failed``, ``superseded``, or ``queued`` again)."""
    now = datetime.now(UTC)
    values: dict[str, object] = {"state": state, "updated_at": now, "error": error}
    if state != JobState.QUEUED:
        values["finished_at"] = now
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _superseded(db: Database, job: Job) -> bool:
    with db.session() as session:
        newer = session.scalar(
            select(Job.id).where(Job.study_id == job.study_id, Job.id > job.id).limit(1)
        )
    return newer is not None


def _load_job(db: Database, job_id: int) -> tuple[Job, Study]:
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"job {job_id} does not exist")
        study = job.study
        session.expunge(study)
        session.expunge(job)
    return job, study


# --------------------------------------------------------------------------- images
def load_job_images(db: Database, spool_dir: Path, job: Job) -> JobImages:
    """Read the image instances a job covers from the spool.

    Raises
    ------
    JobError
        When a file is missing or unreadable, or no frontal CR/DX image is among them.
    """
    from sr_templates._sources import is_image_sop_class

    with db.session() as session:
        rows = list(
            session.execute(
                select(Instance.path, Instance.sop_class_uid, Instance.calling_ae)
                .where(
                    Instance.study_id == job.study_id,
                    Instance.received_at <= job.instances_until,
                )
                .order_by(Instance.received_at, Instance.id)
            )
        )
    sources: list[Dataset] = []
    calling_ae = ""
    for path, sop_class_uid, ae in rows:
        if not is_image_sop_class(sop_class_uid):
            continue
        try:
            ds = pydicom.dcmread(spool_dir / path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise JobError(
                f"an instance of job {job.id} cannot be read from the spool: "
                f"{type(exc).__name__}"
            ) from exc
        sources.append(ds)
        calling_ae = calling_ae or ae
    frontal = model_datasets(sources)
    if not frontal:
        raise JobError(f"job {job.id} has no frontal CR/DX image to report on")
    return JobImages(sources=sources, frontal=frontal, calling_ae=calling_ae)


# --------------------------------------------------------------------------- report
def split_report_text(text: str) -> tuple[str, str]:
    """Findings and impression of the model's ``FINDINGS: ... IMPRESSION: ...`` text.

    Characters a DICOM text value cannot hold (control characters other than CR, LF and FF)
    are dropped. Text without section headers is all findings. Missing parts become
    :data:`NO_NARRATIVE` (findings) or the findings text (impression), because the SR
    needs both.
    """
    from report_language.sections import clean_text, parse_report

    sections = parse_report(_UNPRINTABLE.sub("", text))
    findings = sections.findings
    impression = sections.impression
    if not findings and not impression:
        findings = clean_text(_UNPRINTABLE.sub("", text))
    findings = findings or impression or NO_NARRATIVE
    return findings, impression or findings


def draft_to_report(draft: DraftReport) -> tuple[Report, list[FindingRecord]]:
    """The SR content of a model draft: texts, and each label coded from the text.

    The codes follow the draft's own text, read by the labeler (:func:`code_findings`), as
    for every later version; the classifier's probability and threshold stay with each
    label as the model's. A model without findings head (``draft.findings`` empty) gives
    all 14 codes without probabilities.
    """
    findings_text, impression_text = split_report_text(draft.text)
    model = [
        FindingRecord(f.label, Presence.NOT_ASSESSED.value, f.probability, f.threshold)
        for f in draft.findings
    ]
    records = code_findings(findings_text, impression_text, model=model)
    if model:
        records = [r for r in records if r.probability is not None]
    coded = tuple(Finding(r.label, Presence(r.presence), r.probability) for r in records)
    report = Report(
        findings_text=findings_text,
        impression_text=impression_text,
        indication=draft.indication,
        findings=coded,
    )
    return report, records


def _algorithm(model: ChestXrayVLM) -> AlgorithmInfo:
    """The SR's algorithm identification: name, version and, where the bundle records it,
    where the model comes from, its licence and its intended use (TID 4019 parameters), so
    that whoever reads the report sees them."""
    provenance = model.provenance
    parameters: dict[str, str] = {}
    if provenance is not None:
        parameters = {
            "source": provenance.source,
            "licence": provenance.licence,
            "intended_use": provenance.intended_use,
        }
        if provenance.source_version:
            parameters["source_version"] = provenance.source_version
    return AlgorithmInfo(name=model.name, version=model.version, parameters=parameters)


def _existing_version(db: Database, job_id: int) -> ReportVersion | None:
    with db.session() as session:
        row = session.scalars(
            select(ReportVersion).where(ReportVersion.job_id == job_id).limit(1)
        ).first()
        if row is not None:
            session.expunge(row)
        return row


def _store_draft(
    settings: Settings,
    db: Database,
    sr: Dataset,
    report: Report,
    records: Sequence[FindingRecord],
    job: Job,
    model: ChestXrayVLM,
    destinations: Sequence[str],
) -> tuple[ReportVersion, list[int]]:
    for attempt in range(STORE_ATTEMPTS):
        latest = latest_version(db, job.study_id)
        try:
            return store_and_enqueue(
                db,
                settings.storage.reports_dir,
                settings.storage.outbox_dir,
                sr,
                destinations,
                kind=ReportKind.DRAFT,
                findings_text=report.findings_text,
                impression_text=report.impression_text,
                findings=records,
                based_on=latest.version if latest is not None else None,
                indication=report.indication,
                job_id=job.id,
                model_name=model.name,
                model_version=model.version,
            )
        except StaleVersionError:
            if attempt == STORE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def draft_job(
    settings: Settings,
    db: Database,
    model: ChestXrayVLM,
    job_id: int,
    *,
    now: datetime | None = None,
) -> DraftOutcome:
    """Run one report job (see the module docstring): :func:`draft_jobs` with one job.

    Parameters
    ----------
    settings
        The node's settings (spool, reports and outbox folders, RIS, PACS destinations).
    db
        The node's database.
    model
        The loaded model (:func:`dicom_node.models.model_cache.get_model`).
    job_id
        The ``jobs`` row to run.
    now
        The current time (timezone-aware); defaults to now.

    Returns
    -------
    DraftOutcome
        What was done; ``state`` None when the job was not claimable.

    Raises
    ------
    TransientJobError
        The job is back in ``queued``; retry it later.
    JobError
        The job is ``failed`` (the message says why).
    """
    (result,) = draft_jobs(settings, db, model, [job_id], now=now)
    if isinstance(result, JobError):
        raise result
    return result


@dataclass
class _Claimed:
    """A claimed job, read from the spool and matched with its order: ready for the vision
    side."""

    job: Job
    study: Study
    images: JobImages
    destinations: list[str]
    match: WorklistMatch | None


@dataclass
class _Prepared:
    """A claimed job, ready for the model's text: its images, order and image analysis."""

    job: Job
    study: Study
    images: JobImages
    destinations: list[str]
    match: WorklistMatch | None
    analysis: StudyAnalysis
    outside: list[ContentScore]
    vision_seconds: float


def draft_jobs(
    settings: Settings,
    db: Database,
    model: ChestXrayVLM,
    job_ids: Sequence[int],
    *,
    now: datetime | None = None,
) -> list[DraftOutcome | JobError]:
    """Run several report jobs: one vision call for all their images, one batched
    ``generate`` for all their reports.

    Each job is claimed, read and matched on its own, and its outcome (done, superseded,
    failed with its reason, or back in ``queued``) is recorded on its own row: a study that
    fails fails alone. The frontal images of every claimed job go through the vision side
    in one call (:meth:`~inference.ChestXrayVLM.analyse_many`), and the jobs that reach the
    model are drafted in one call of :meth:`~inference.ChestXrayVLM.generate_reports`; when
    either call fails as a whole, each job is run alone so that the failure lands on the
    study that caused it.

    Every job is claimed with the same `now`, its ``started_at``: one heartbeat
    (:func:`touch_jobs`) keeps all of them alive.

    Returns
    -------
    list
        One :class:`DraftOutcome`, or the :class:`~dicom_node.errors.JobError` (a
        :class:`~dicom_node.errors.TransientJobError` when the job is back in ``queued``)
        that ended it, per job id, in order.
    """
    now = now or datetime.now(UTC)
    results: dict[int, DraftOutcome | JobError] = {}
    # Every claim first, so that a batch holds its jobs before it reads any of them.
    mine: list[int] = []
    for job_id in job_ids:
        step = _guarded(db, job_id, lambda job_id=job_id: claim_job(
            db, job_id, settings.worker.stale_job_s, now))
        if step is True:
            mine.append(job_id)
        elif step is False:
            logger.info("job %d is not queued; skipped", job_id)
            results[job_id] = DraftOutcome(job_id, None)
        else:
            results[job_id] = step
    claimed: list[_Claimed] = []
    for job_id in mine:
        step = _guarded(db, job_id, lambda job_id=job_id: _read(settings, db, job_id))
        if isinstance(step, _Claimed):
            claimed.append(step)
        else:
            results[job_id] = step
    prepared: list[_Prepared] = []
    for item, analysed in zip(claimed, _analyse_all(settings, model, claimed), strict=True):
        step = _guarded(db, item.job.id, lambda item=item, analysed=analysed: _screen(
            settings, item, analysed))
        if isinstance(step, _Prepared):
            prepared.append(step)
        else:
            results[item.job.id] = step
    for ready, drafted in zip(prepared, _generate(model, prepared), strict=True):
        job_id = ready.job.id
        results[job_id] = _guarded(db, job_id, lambda ready=ready, drafted=drafted: _finish(
            settings, db, model, ready, drafted))
    return [results[job_id] for job_id in job_ids]


def _guarded(db: Database, job_id: int, step: Any) -> Any:
    """Run one job's step; on an exception record the job's outcome and return the error.

    Transient failures (database away) put the job back in ``queued``; every other one
    fails it with the reason, scrubbed of patient data: no job is left ``running``.
    """
    try:
        return step()
    except TransientJobError as exc:
        _record_failure(db, job_id, JobState.QUEUED, scrub_text(str(exc)))
        return exc
    except (JobError, SRError, OutboxError, ReportStoreError) as exc:
        reason = scrub_text(str(exc)) if isinstance(exc, JobError) else describe_exception(exc)
        _record_failure(db, job_id, JobState.FAILED, reason)
        return JobError(reason)
    except SQLAlchemyError as exc:
        reason = f"database error: {type(exc).__name__}"
        _record_failure(db, job_id, JobState.QUEUED, reason)
        return TransientJobError(reason)
    except Exception as exc:  # noqa: BLE001 - no job is left running by an exception
        reason = f"unexpected error: {describe_exception(exc)}"
        logger.error("job %d: %s", job_id, reason, exc_info=True)
        _record_failure(db, job_id, JobState.FAILED, reason)
        return JobError(reason)


def _record_failure(db: Database, job_id: int, state: JobState, reason: str) -> None:
    try:
        finish_job(db, job_id, state, reason)
    except SQLAlchemyError:
        logger.error("cannot record the outcome of job %d", job_id)


def _read(settings: Settings, db: Database, job_id: int) -> _Claimed | DraftOutcome:
    """A claimed job's study, images and order; or its outcome when it needs no draft."""
    job, study = _load_job(db, job_id)
    study_tag = uid_digest(study.study_instance_uid)
    if _superseded(db, job):
        finish_job(db, job_id, JobState.SUPERSEDED)
        logger.info("job %d of study %s superseded by a newer job", job_id, study_tag)
        return DraftOutcome(job_id, JobState.SUPERSEDED)
    images = load_job_images(db, settings.storage.spool_dir, job)
    destinations = settings.destinations_for(images.calling_ae)
    existing = _existing_version(db, job.id)
    if existing is not None:
        # A retry after a crash: the draft exists; make sure it is in the outbox.
        ids = requeue_version(
            db, settings.storage.reports_dir, settings.storage.outbox_dir, existing, destinations
        )
        finish_job(db, job_id, JobState.DONE)
        return DraftOutcome(job.id, JobState.DONE, existing.version, ids)
    match = resolve_worklist(settings, db, study)
    return _Claimed(job, study, images, destinations, match)


def _analyse_all(
    settings: Settings, model: ChestXrayVLM, claimed: Sequence[_Claimed]
) -> list[tuple[StudyAnalysis, float] | Exception]:
    """The vision side of every claimed job, with its share of the seconds: one call for
    all their images, or one call per job when the batch fails as a whole."""
    if not claimed:
        return []
    refuse = settings.inference.screening == "refuse"
    started = time.perf_counter()
    try:
        analysed = model.analyse_many(
            [item.images.frontal for item in claimed],
            skip_unusable=True,
            leave_out_non_chest=refuse,
        )
    except Exception as exc:  # noqa: BLE001 - run one by one below
        if len(claimed) == 1:
            return [exc]
        logger.warning("the vision side failed on a batch of %d studies (%s); running them "
                       "one by one", len(claimed), describe_exception(exc))
    else:
        share = (time.perf_counter() - started) / len(claimed)
        return [a if isinstance(a, Exception) else (a, share) for a in analysed]
    results: list[tuple[StudyAnalysis, float] | Exception] = []
    for item in claimed:
        started = time.perf_counter()
        try:
            analysis = model.analyse(
                item.images.frontal, skip_unusable=True, leave_out_non_chest=refuse
            )
            results.append((analysis, time.perf_counter() - started))
        except Exception as exc:  # noqa: BLE001 - recorded on its job by _screen
            results.append(exc)
    return results


def _screen(
    settings: Settings, item: _Claimed, analysed: tuple[StudyAnalysis, float] | Exception
) -> _Prepared:
    """A claimed job's image analysis, with the content check's verdict applied."""
    from inference import InferenceError
    from inference.model import NotChestError

    if isinstance(analysed, NotChestError):
        raise JobError(f"{NOT_DRAFTED_PREFIX}{analysed}") from analysed
    if isinstance(analysed, InferenceError):
        raise JobError(
            f"the model cannot use the images of job {item.job.id}: {analysed}"
        ) from analysed
    if isinstance(analysed, Exception):
        raise analysed
    analysis, seconds = analysed
    outside = [s for s in analysis.content if not (s.is_chest and s.in_distribution)]
    if outside and settings.inference.screening == "refuse":
        raise JobError(
            f"{NOT_DRAFTED_PREFIX}{len(outside)} image(s) {outside[0].describe()} "
            "(inference.screening = refuse)"
        )
    return _Prepared(item.job, item.study, item.images, item.destinations, item.match,
                     analysis, outside, seconds)


def _generate(
    model: ChestXrayVLM, prepared: Sequence[_Prepared]
) -> list[tuple[DraftReport, float] | Exception]:
    """Each prepared job's draft and its model seconds: one batched call, or one call per
    job when the batch fails (so the failure lands on the study that caused it)."""
    from inference import StudyRequest

    if not prepared:
        return []
    requests = [
        StudyRequest(p.analysis, p.match.indication if p.match is not None else None)
        for p in prepared
    ]
    started = time.perf_counter()
    try:
        drafts = model.generate_reports(requests)
    except Exception as exc:  # noqa: BLE001 - retried one by one below
        if len(prepared) == 1:
            return [exc]
        logger.warning("a batch of %d drafts failed (%s); drafting them one by one",
                       len(prepared), describe_exception(exc))
    else:
        share = (time.perf_counter() - started) / len(prepared)
        return [(draft, share) for draft in drafts]
    results: list[tuple[DraftReport, float] | Exception] = []
    for request in requests:
        started = time.perf_counter()
        try:
            (draft,) = model.generate_reports([request])
            results.append((draft, time.perf_counter() - started))
        except Exception as exc:  # noqa: BLE001 - recorded on its job by _finish
            results.append(exc)
    return results


def _finish(
    settings: Settings,
    db: Database,
    model: ChestXrayVLM,
    item: _Prepared,
    drafted: tuple[DraftReport, float] | Exception,
) -> DraftOutcome:
    from inference import InferenceError

    job, study, images = item.job, item.study, item.images
    if isinstance(drafted, InferenceError):
        raise JobError(f"the model cannot use the images of job {job.id}: {drafted}")
    if isinstance(drafted, Exception):
        raise drafted
    draft, model_seconds = drafted
    seconds = item.vision_seconds + model_seconds
    study_tag = uid_digest(study.study_instance_uid)
    outside = item.outside
    if outside:
        logger.warning("job %d: study %s drafted with a caution: %s", job.id, study_tag,
                       outside[0].describe())
        draft.text = _with_caution(draft.text, outside)
    skipped = describe_unusable(images.frontal, item.analysis.unusable)
    if skipped:
        # Drafted from the usable images; the others are named in the job, the log and
        # the SR's findings text, so the reader knows what the draft did not look at.
        logger.warning("job %d: study %s drafted without %s", job.id, study_tag,
                       "; ".join(skipped))
        draft.text = _not_assessed(draft.text, skipped, len(images.frontal))
    report, records = draft_to_report(draft)
    latest = latest_version(db, job.study_id)
    sr = build_draft_sr(
        images.sources,
        report,
        _algorithm(model),
        instance_number=1 if latest is None else latest.version + 1,
        worklist=item.match.worklist_info() if item.match is not None else None,
    )
    version, ids = _store_draft(settings, db, sr, report, records, job, model, item.destinations)
    note = f"drafted without {'; '.join(skipped)}" if skipped else None
    finish_job(db, job.id, JobState.DONE, note)
    logger.info(
        "job %d: study %s drafted in %.1f s (%d image(s), %d frontal), report version %d, "
        "%d destination(s)",
        job.id,
        study_tag,
        seconds,
        len(images.sources),
        len(images.frontal),
        version.version,
        len(ids),
    )
    return DraftOutcome(job.id, JobState.DONE, version.version, ids, seconds, note=note)


def describe_unusable(frontal: Sequence[Dataset], unusable: Sequence[tuple[int, str]]) -> list[str]:
    """``"series 1 image 2 (pixel data cannot be decoded)"`` for each image left out.

    Images are named by Series Number and Instance Number (what a reader finds them by in
    the viewer), never by patient data; reasons are scrubbed.
    """
    names = []
    for index, reason in unusable:
        ds = frontal[index]
        series = str(ds.get("SeriesNumber", "") or "?").strip()
        number = str(ds.get("InstanceNumber", "") or index + 1).strip()
        names.append(f"series {series} image {number} ({scrub_text(reason)})")
    return names


def _with_caution(text: str, outside: Sequence[ContentScore]) -> str:
    """The model's text with the caution statement first (``inference.screening = warn``)."""
    findings, impression = split_report_text(text)
    statement = f"{CAUTION_STATEMENT} ({outside[0].describe()}); interpret with caution."
    return f"FINDINGS: {statement} {findings}\nIMPRESSION: {statement} {impression}"


def _not_assessed(text: str, skipped: Sequence[str], total: int) -> str:
    """The model's text with a statement of the images it could not read."""
    statement = (
        f"Not assessed: {len(skipped)} of {total} frontal images could not be read: "
        + "; ".join(skipped) + "."
    )
    findings, impression = split_report_text(text)
    return f"FINDINGS: {statement} {findings}\nIMPRESSION: {impression}"


__all__ = [
    "CAUTION_STATEMENT",
    "NO_NARRATIVE",
    "DraftOutcome",
    "describe_unusable",
    "JobImages",
    "claim_job",
    "draft_job",
    "draft_jobs",
    "draft_to_report",
    "fail_claimed",
    "finish_job",
    "load_job_images",
    "split_report_text",
    "touch_job",
    "touch_jobs",
]
