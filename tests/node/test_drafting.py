"""The report job on a real database and spool with a tiny model: claim, supersede, fail, retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from nodehelpers import T0, new_instance, node_settings, record
from sqlalchemy import select, update

from dicom_node.errors import JobError
from dicom_node.pipeline.assembly import assemble
from dicom_node.pipeline.drafting import (
    NO_NARRATIVE,
    draft_job,
    draft_jobs,
    draft_to_report,
    split_report_text,
)
from dicom_node.settings import Settings
from dicom_node.store import Database, Job, JobState, OutboxItem, ReportKind, ReportVersion
from inference import DraftReport, FindingPrediction


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(
        tmp_path / "node",
        pacs={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
    )


@pytest.fixture
def db(settings: Settings) -> Database:
    database = Database(settings.database_url)
    database.create_all()
    return database


@pytest.fixture
def receive(settings: Settings, db: Database, rg1_uncr: Path) -> Callable[..., None]:
    """Record RG1_UNCR under a SOP Instance UID as if the SCP had received it."""
    source = pydicom.dcmread(rg1_uncr)

    def put(sop: str, at: timedelta = timedelta(0), view_position: str = "PA") -> None:
        target = settings.storage.spool_dir / f"{sop}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        new_instance(source, SOPInstanceUID=sop, ViewPosition=view_position).save_as(target)
        db.record_instance(
            record(sop, study=str(source.StudyInstanceUID), at=T0 + at,
                   view_position=view_position)
        )

    return put


def jobs(db: Database) -> list[Job]:
    with db.session() as session:
        rows = list(session.scalars(select(Job).order_by(Job.id)))
        for row in rows:
            session.expunge(row)
        return rows


def test_a_job_is_drafted_once_even_when_its_message_comes_twice(
    settings: Settings, db: Database, receive: Callable[..., None], tiny_model: object
) -> None:
    receive("1.2.3.1")
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    first = draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    assert first.state is JobState.DONE and first.report_version == 1
    assert len(first.outbox_ids) == 1
    again = draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    assert again.state is None  # not claimable: already done
    with db.session() as session:
        (version,) = session.scalars(select(ReportVersion)).all()
        assert version.kind is ReportKind.DRAFT and version.job_id == job_id
        assert session.scalars(select(OutboxItem)).one().destination == "pacs"
    sr = pydicom.dcmread(settings.storage.reports_dir / version.sr_path)
    assert sr.SOPInstanceUID == version.sr_sop_instance_uid
    assert len(list(settings.storage.outbox_dir.rglob("*.dcm"))) == 1
    # The model's provenance travels with every draft (TID 4019 Algorithm Parameters).
    from sr_templates import read_report

    algorithm = read_report(sr).algorithm
    assert algorithm is not None
    assert algorithm.parameters["intended_use"] == (
        "Software tests only; its reports mean nothing.")
    assert algorithm.parameters["licence"] == "none: random weights"


def test_an_older_job_of_a_study_is_superseded_by_the_newer_one(
    settings: Settings, db: Database, receive: Callable[..., None], tiny_model: object
) -> None:
    receive("1.2.3.1")
    (old,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    receive("1.2.3.2", at=timedelta(seconds=10), view_position="LL")
    (new,) = assemble(db, 0.0, T0 + timedelta(seconds=15)).jobs_created
    assert draft_job(settings, db, tiny_model, old).state is JobState.SUPERSEDED  # type: ignore[arg-type]
    outcome = draft_job(settings, db, tiny_model, new)  # type: ignore[arg-type]
    assert outcome.state is JobState.DONE
    assert [job.state for job in jobs(db)] == [JobState.SUPERSEDED, JobState.DONE]


def test_a_missing_spool_file_fails_the_job_with_a_reason(
    settings: Settings, db: Database, receive: Callable[..., None], tiny_model: object
) -> None:
    receive("1.2.3.1")
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    (settings.storage.spool_dir / "1.2.3.1.dcm").unlink()
    with pytest.raises(JobError, match="cannot be read from the spool"):
        draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    (job,) = jobs(db)
    assert job.state is JobState.FAILED and "spool" in (job.error or "")
    assert "1.2.3.1" not in (job.error or "")  # no identifiers in the reason


def test_a_job_retried_after_a_crash_reuses_its_stored_draft(
    settings: Settings, db: Database, receive: Callable[..., None], tiny_model: object
) -> None:
    receive("1.2.3.1")
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    # As if the worker died after storing the draft: the row is running and stale.
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.RUNNING, started_at=T0, updated_at=T0)
        )
    outcome = draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    assert outcome.state is JobState.DONE and outcome.report_version == 1
    with db.session() as session:
        assert len(session.scalars(select(ReportVersion)).all()) == 1


def _draft(text: str, positive: set[str]) -> DraftReport:
    labels = ["No Finding", "Cardiomegaly", "Pleural Effusion"]
    findings = [
        FindingPrediction(label, 0.9 if label in positive else 0.1, 0.5) for label in labels
    ]
    return DraftReport(text, findings, "cough", "demo", "1.0")


def test_the_draft_codes_follow_its_text_and_keep_the_model_probabilities() -> None:
    # The classifier calls No Finding and Cardiomegaly positive; the text says otherwise.
    report, records = draft_to_report(_draft(
        "FINDINGS: Small left pleural effusion. No pneumothorax.\n"
        "IMPRESSION: Small left pleural effusion.",
        {"No Finding", "Cardiomegaly"},
    ))
    presence = {r.label: r.presence for r in records}
    assert presence == {"No Finding": "absent", "Cardiomegaly": "not_assessed",
                        "Pleural Effusion": "present"}
    assert all(r.source == "text" for r in records)
    # The probabilities stay the model's, whatever the text says.
    assert {r.label: r.probability for r in records} == {
        "No Finding": 0.9, "Cardiomegaly": 0.9, "Pleural Effusion": 0.1}
    assert {f.label: f.presence for f in report.findings} == presence
    _, records = draft_to_report(_draft("FINDINGS: Lungs clear. Heart size normal.", set()))
    presence = {r.label: r.presence for r in records}
    assert presence == {"No Finding": "present", "Cardiomegaly": "absent",
                        "Pleural Effusion": "not_assessed"}
    assert report.indication == "cough"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FINDINGS: Clear lungs.\nIMPRESSION: Normal.", ("Clear lungs.", "Normal.")),
        ("Heart is enlarged.", ("Heart is enlarged.", "Heart is enlarged.")),
        ("IMPRESSION: Effusion.", ("Effusion.", "Effusion.")),
        ("", (NO_NARRATIVE, NO_NARRATIVE)),
        ("\x7fFINDINGS: a\x01b.\nIMPRESSION: ok\x0c", ("ab.", "ok")),
    ],
)
def test_model_text_becomes_sr_texts(text: str, expected: tuple[str, str]) -> None:
    assert split_report_text(text) == expected


def test_a_corrupt_image_beside_a_good_one_is_named_and_the_study_drafted(
    settings: Settings, db: Database, receive: Callable[..., None], tiny_model: object,
    rg1_j2kr: Path,
) -> None:
    from pydicom.encaps import encapsulate

    receive("1.2.3.1")
    corrupt = new_instance(pydicom.dcmread(rg1_j2kr), SOPInstanceUID="1.2.3.2",
                           ViewPosition="PA", SeriesNumber="7", InstanceNumber="2")
    corrupt.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 8])
    corrupt.StudyInstanceUID = pydicom.dcmread(settings.storage.spool_dir / "1.2.3.1.dcm",
                                               stop_before_pixels=True).StudyInstanceUID
    corrupt.save_as(settings.storage.spool_dir / "1.2.3.2.dcm")
    db.record_instance(record("1.2.3.2", study=str(corrupt.StudyInstanceUID), at=T0,
                              path="1.2.3.2.dcm"))
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    outcome = draft_job(settings, db, tiny_model, job_id)  # type: ignore[arg-type]
    assert outcome.state is JobState.DONE
    (job,) = jobs(db)
    assert job.state is JobState.DONE
    assert job.error is not None and job.error.startswith("drafted without series 7 image 2 (")
    with db.session() as session:
        version = session.scalars(select(ReportVersion)).one()
    assert version.findings_text.startswith(
        "Not assessed: 1 of 2 frontal images could not be read: series 7 image 2 ("
    )
    sr = pydicom.dcmread(settings.storage.reports_dir / version.sr_path)
    texts: list[str] = []
    sr.walk(lambda _, element: texts.append(str(element.value))
            if element.keyword == "TextValue" else None)
    assert any(t.startswith("Not assessed: 1 of 2 frontal images") for t in texts)


def _image_instance(source: pydicom.Dataset, sop: str, image: np.ndarray) -> pydicom.Dataset:
    ds = new_instance(source, SOPInstanceUID=sop, ViewPosition="PA")
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = (image * 4095).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize("screening", ["refuse", "warn"])
def test_a_skull_film_is_not_drafted_or_is_drafted_with_a_caution_by_setting(
    tmp_path: Path, rg1_uncr: Path, screened_bundle: Path, screening: str
) -> None:
    from dicom_node.errors import NOT_DRAFTED_PREFIX
    from dicom_node.ops.health import recent_jobs_check
    from dicom_node.pipeline.drafting import CAUTION_STATEMENT
    from inference import ChestXrayVLM, RuntimeOptions
    from training.phantoms.negatives import negative_images

    settings = node_settings(tmp_path / "node", inference={"screening": screening},
                             worker={"unhealthy_after_failures": 1})
    db = Database(settings.database_url)
    db.create_all()
    model = ChestXrayVLM.from_bundle(screened_bundle, RuntimeOptions(device="cpu"))
    source = pydicom.dcmread(rg1_uncr)
    (skull,) = negative_images(1, size=256, seed=11)
    target = settings.storage.spool_dir / "9.9.1.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    _image_instance(source, "9.9.1", skull).save_as(target)
    db.record_instance(record("9.9.1", study=str(source.StudyInstanceUID), at=T0,
                              path="9.9.1.dcm"))
    (job_id,) = assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created
    if screening == "refuse":
        with pytest.raises(JobError, match="not a frontal chest radiograph"):
            draft_job(settings, db, model, job_id)
        (job,) = jobs(db)
        assert job.state is JobState.FAILED and (job.error or "").startswith(NOT_DRAFTED_PREFIX)
        # a film the check kept from drafting is the image's doing, not the node's
        assert recent_jobs_check(db, 1)() is None
        return
    outcome = draft_job(settings, db, model, job_id)
    assert outcome.state is JobState.DONE
    with db.session() as session:
        version = session.scalars(select(ReportVersion)).one()
    assert version.findings_text.startswith(CAUTION_STATEMENT)
    assert version.impression_text.startswith(CAUTION_STATEMENT)
    assert "not a frontal chest radiograph" in version.findings_text


def _three_studies(settings: Settings, db: Database, rg1_uncr: Path) -> list[int]:
    """Three studies of one image each (SOP 1.2.3.1-3), assembled: their job ids."""
    source = pydicom.dcmread(rg1_uncr)
    for index in range(3):
        sop, study = f"1.2.3.{index + 1}", f"1.2.840.99.{index + 1}"
        target = settings.storage.spool_dir / f"{sop}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        new_instance(source, SOPInstanceUID=sop, StudyInstanceUID=study).save_as(target)
        db.record_instance(record(sop, study=study, at=T0))
    job_ids = sorted(assemble(db, 0.0, T0 + timedelta(seconds=5)).jobs_created)
    assert len(job_ids) == 3
    return job_ids


def test_a_batch_of_jobs_is_drafted_by_one_model_call_and_a_failing_study_fails_alone(
    settings: Settings, db: Database, rg1_uncr: Path, tiny_model: object
) -> None:
    job_ids = _three_studies(settings, db, rg1_uncr)
    (settings.storage.spool_dir / "1.2.3.2.dcm").unlink()  # the middle study cannot be read

    calls: list[int] = []
    generate = tiny_model.generate_reports  # type: ignore[attr-defined]

    def counted(requests, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(requests))
        return generate(requests, **kwargs)

    tiny_model.generate_reports = counted  # type: ignore[attr-defined]
    try:
        results = draft_jobs(settings, db, tiny_model, job_ids)  # type: ignore[arg-type]
    finally:
        del tiny_model.generate_reports  # type: ignore[attr-defined]
    assert calls == [2]  # the two readable studies in one call
    first, failed, third = results
    assert isinstance(failed, JobError) and "cannot be read from the spool" in str(failed)
    assert not isinstance(first, JobError) and first.state is JobState.DONE
    assert not isinstance(third, JobError) and third.state is JobState.DONE
    assert [job.state for job in jobs(db)] == [JobState.DONE, JobState.FAILED, JobState.DONE]
    with db.session() as session:
        versions = list(session.scalars(select(ReportVersion).order_by(ReportVersion.job_id)))
    assert [v.job_id for v in versions] == [job_ids[0], job_ids[2]]


def test_when_the_batched_call_fails_each_study_is_drafted_alone(
    settings: Settings, db: Database, rg1_uncr: Path, tiny_model: object
) -> None:
    job_ids = _three_studies(settings, db, rg1_uncr)
    generate = tiny_model.generate_reports  # type: ignore[attr-defined]
    calls: list[int] = []

    def flaky(requests, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(requests))
        if len(requests) > 1 or len(calls) == 3:  # the batch, then the second study alone
            raise RuntimeError("CUDA out of memory")
        return generate(requests, **kwargs)

    tiny_model.generate_reports = flaky  # type: ignore[attr-defined]
    try:
        results = draft_jobs(settings, db, tiny_model, job_ids)  # type: ignore[arg-type]
    finally:
        del tiny_model.generate_reports  # type: ignore[attr-defined]
    assert calls == [3, 1, 1, 1]
    assert [job.state for job in jobs(db)] == [JobState.DONE, JobState.FAILED, JobState.DONE]
    assert isinstance(results[1], JobError) and "RuntimeError" in str(results[1])
