"""The SR chain reaches a real PACS: Orthanc receives draft, amendment and signed report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from apihelpers import (
    api_settings,
    auth,
    predecessor_uids,
    seed_drafted_study,
)
from fastapi.testclient import TestClient
from sqlalchemy import select
from support.orthanc import Orthanc

from dicom_node.api import DialogService, create_app
from dicom_node.pipeline.delivery import deliver_items, enqueue_sr
from dicom_node.settings import Settings
from dicom_node.store import Database, OutboxItem, OutboxState
from sr_templates import (
    AMENDED_SERIES_DESCRIPTION,
    DRAFT_SERIES_DESCRIPTION,
    VERIFIED_SERIES_DESCRIPTION,
)

pytestmark = pytest.mark.network


def pacs_settings(folder: Path, bundle: Path, orthanc: Orthanc) -> Settings:
    """Test settings whose one PACS destination is the Orthanc."""
    return api_settings(
        folder,
        bundle,
        pacs={"orthanc": {"ae_title": orthanc.ae_title, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}},
        delivery={"timeout_s": 10},
    )


def deliver_draft(settings: Settings, db: Database, draft: Any) -> None:
    """What the draft job does with version 1: queue it for the PACS and send it."""
    ids = enqueue_sr(db, settings.storage.outbox_dir, draft, settings.destinations_for("ORTHANC"))
    report = deliver_items(settings, db, ids)
    assert [r.outcome.value for r in report.results] == ["sent"], report


def check_chain(orthanc: Orthanc, study_uid: str, reader: str, count: int = 3) -> None:
    """Orthanc holds the draft, `count` - 2 amendments and the signed SR of the study, each
    naming all its predecessors, next to the image."""
    srs = orthanc.wait_for_srs(study_uid, count)
    assert len(srs) == count, f"Orthanc holds {len(srs)} SR(s) of the study"
    by_depth = sorted(srs, key=lambda sr: len(predecessor_uids(sr)))
    for depth, sr in enumerate(by_depth):
        assert predecessor_uids(sr) == [str(x.SOPInstanceUID) for x in by_depth[:depth]]
    assert [sr.SeriesDescription for sr in by_depth] == [
        DRAFT_SERIES_DESCRIPTION, *[AMENDED_SERIES_DESCRIPTION] * (count - 2),
        VERIFIED_SERIES_DESCRIPTION,
    ]
    assert [sr.VerificationFlag for sr in by_depth] == ["UNVERIFIED"] * (count - 1) + [
        "VERIFIED"]
    signed = by_depth[-1]
    assert str(signed.VerifyingObserverSequence[0].VerifyingObserverName) == reader
    assert {str(sr.StudyInstanceUID) for sr in srs} == {study_uid}
    modalities = sorted(series["Modality"] for series in orthanc.study_series(study_uid))
    assert modalities == ["CR"] + ["SR"] * count


def test_accepted_and_signed_versions_arrive_in_orthanc(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path, orthanc: Orthanc,
) -> None:
    settings = pacs_settings(tmp_path / "node", tiny_bundle, orthanc)
    db = Database(settings.database_url)
    db.create_all()
    service = DialogService(settings, db, lambda: tiny_model)
    try:
        study = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        orthanc.upload(study.image)
        deliver_draft(settings, db, study.draft)
        with TestClient(create_app(service)) as client:
            base = f"/api/studies/{study.study_uid}"
            proposal = client.post(f"{base}/messages", json={"text": "there is no effusion"},
                                   headers=auth()).json()["proposal"]
            accepted = client.post(f"{base}/proposals/{proposal['id']}/accept", headers=auth())
            assert accepted.status_code == 201
            assert accepted.json()["destinations"] == ["orthanc"]
            # The tiny model's text still states the effusion: the reader keeps the code.
            version = accepted.json()["version"]
            confirmed = client.put(f"{base}/report", headers=auth(), json={
                "based_on_version": 2, "findings_text": version["findings_text"],
                "impression_text": version["impression_text"],
                "confirm": ["Pleural Effusion"]})
            assert confirmed.status_code == 201, confirmed.text
            signed = client.post(f"{base}/signoff", json={"based_on_version": 3},
                                 headers=auth())
            assert signed.status_code == 201
        check_chain(orthanc, study.study_uid, "Doe^Jane", count=4)
        service.close()  # waits for the background deliveries to record their outcome
        with db.session() as session:
            states = list(session.scalars(select(OutboxItem.state).order_by(OutboxItem.id)))
        assert states == [OutboxState.SENT] * 4
        assert not any(settings.storage.outbox_dir.rglob("*.dcm"))
    finally:
        service.close()
        db.dispose()
