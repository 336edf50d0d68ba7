"""Study assembly and routing: stability, the routing rules, idempotent job creation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from nodehelpers import T0, record
from sqlalchemy import select

from dicom_node.pipeline.assembly import (
    InstanceInfo,
    StudySnapshot,
    assemble,
    find_stable_studies,
    is_reportable,
    route_study,
)
from dicom_node.store import Database, Job, JobState, Study

STABLE = 10.0


def image(
    sop: str,
    modality: str | None = "CR",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
) -> InstanceInfo:
    return InstanceInfo(
        sop_instance_uid=sop,
        series_instance_uid="1.2.3.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality=modality,
        body_part=body_part,
        view_position=view,
        path=f"{sop}.dcm",
        received_at=T0,
    )


def study(*instances: InstanceInfo) -> StudySnapshot:
    return StudySnapshot(1, "1.2.3", None, T0, tuple(instances))


# --------------------------------------------------------------------------- routing rules
def test_pa_chest_cr_is_reportable_and_laterals_travel_along_after_it() -> None:
    routing = route_study(study(image("1.1", view="LL"), image("1.2", view="PA")))
    assert routing.reportable and routing.reason == ""
    assert [info.view_position for info in routing.images] == ["PA", "LL"]


@pytest.mark.parametrize(
    ("instances", "reportable"),
    [
        ((image("1", modality="DX", view="AP"),), True),
        ((image("1", body_part=None),), True),
        ((image("1", view="LL"), image("2", view="LATERAL")), False),
        ((image("1", view=None),), False),
        ((image("1", modality="CT", view=None),), False),
        ((image("1", body_part="ABDOMEN"),), False),
        ((image("1", modality="SR", body_part=None, view=None),), False),
        ((image("1", modality="CT", view=None), image("2")), True),
    ],
    ids=["dx-ap", "no-body-part", "lateral-only", "no-view", "ct", "abdomen", "sr-only",
         "ct-plus-chest-pa"],
)
def test_routing_rules(instances: tuple[InstanceInfo, ...], reportable: bool) -> None:
    assert is_reportable(study(*instances)) is reportable
    if not reportable:
        assert route_study(study(*instances)).reason


def test_only_chest_xrays_are_handed_to_the_model() -> None:
    routing = route_study(study(image("1", modality="CT", view=None), image("2"), image("3",
                          modality="SR", body_part=None, view=None)))
    assert [info.sop_instance_uid for info in routing.images] == ["2"]


def test_instance_set_hash_ignores_order() -> None:
    a, b = image("1.1"), image("1.2")
    assert study(a, b).instance_set_hash == study(b, a).instance_set_hash
    assert study(a).instance_set_hash != study(a, b).instance_set_hash


# --------------------------------------------------------------------------- assembly on a DB
def jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def test_a_study_is_assembled_once_it_is_stable(database: Database) -> None:
    database.record_instance(record("1.2.3.1", at=T0))
    database.record_instance(record("1.2.3.2", at=T0 + timedelta(seconds=3), view_position="LL"))
    assert find_stable_studies(database, STABLE, T0 + timedelta(seconds=12)) == []
    assert assemble(database, STABLE, T0 + timedelta(seconds=12)).jobs_created == []

    (snapshot,) = find_stable_studies(database, STABLE, T0 + timedelta(seconds=14))
    assert {info.sop_instance_uid for info in snapshot.instances} == {"1.2.3.1", "1.2.3.2"}
    created = assemble(database, STABLE, T0 + timedelta(seconds=14)).jobs_created
    (job,) = jobs(database)
    assert created == [job.id]
    assert job.state == JobState.QUEUED and job.attempts == 0
    assert job.instance_count == 2 and job.instance_set_hash == snapshot.instance_set_hash
    assert job.instances_until == T0 + timedelta(seconds=3)


def test_assembly_is_idempotent_and_new_instances_make_a_new_job(database: Database) -> None:
    database.record_instance(record("1.2.3.1", at=T0))
    later = T0 + timedelta(minutes=1)
    assert len(assemble(database, STABLE, later).jobs_created) == 1
    assert assemble(database, STABLE, later).jobs_created == []
    assert find_stable_studies(database, STABLE, later) == []
    # The PACS re-sends the same study: duplicates change nothing.
    assert database.record_instance(record("1.2.3.1", at=later)) is False
    assert assemble(database, STABLE, later + timedelta(minutes=1)).jobs_created == []
    # A lateral view arrives after the report started: a new job for the new set.
    database.record_instance(record("1.2.3.2", at=later, view_position="LL"))
    assert assemble(database, STABLE, later + timedelta(seconds=5)).jobs_created == []
    assert len(assemble(database, STABLE, later + timedelta(minutes=1)).jobs_created) == 1
    first, second = jobs(database)
    assert (first.instance_count, second.instance_count) == (1, 2)
    assert first.instance_set_hash != second.instance_set_hash


def test_not_reportable_studies_get_no_job_and_are_not_revisited(database: Database) -> None:
    database.record_instance(record("1.2.3.1", at=T0, view_position="LL"))
    database.record_instance(record("7.7.7.1", study="7.7.7", at=T0, modality="CT",
                                    body_part="CHEST", view_position=None))
    result = assemble(database, STABLE, T0 + timedelta(minutes=1))
    assert result.jobs_created == []
    reasons = sorted(reason for _, reason in result.not_reportable)
    assert reasons[0].startswith("no CR or DX image") and "frontal" in reasons[1]
    assert find_stable_studies(database, STABLE, T0 + timedelta(minutes=2)) == []
    with database.session() as session:
        assert all(s.not_reportable_reason for s in session.scalars(select(Study)))
    assert jobs(database) == []
    # A PA view completes the study: now it is reportable.
    database.record_instance(record("1.2.3.2", at=T0 + timedelta(minutes=2)))
    assert len(assemble(database, STABLE, T0 + timedelta(minutes=3)).jobs_created) == 1
    with database.session() as session:
        study_row = session.scalars(select(Study).where(Study.study_instance_uid == "1.2.3")).one()
        assert study_row.not_reportable_reason is None


def test_a_stale_snapshot_creates_no_job(database: Database) -> None:
    from dicom_node.pipeline.assembly import create_job

    database.record_instance(record("1.2.3.1", at=T0))
    (snapshot,) = find_stable_studies(database, STABLE, T0 + timedelta(minutes=1))
    database.record_instance(record("1.2.3.2", at=T0 + timedelta(minutes=1)))
    assert create_job(database, snapshot, T0 + timedelta(minutes=1)) is None
    assert jobs(database) == []


def test_now_must_be_timezone_aware(database: Database) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        find_stable_studies(database, STABLE, datetime(2025, 1, 1))
