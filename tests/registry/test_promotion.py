"""Promotion and rollback reach a running node's worker without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from registryhelpers import phantom_rows, said, site_settings, toml_text
from sqlalchemy import select
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.jobqueue import context as queue_context
from dicom_node.models import model_cache
from dicom_node.models.registry import ensure_initial_version, promote, register_bundle
from dicom_node.ops.service import NodeService
from dicom_node.settings import Settings
from dicom_node.store import Database, ReportVersion, Study

runner = CliRunner()


@pytest.fixture
def node(tmp_path: Path, tiny_bundle: Path) -> Iterator[NodeService]:
    """A node with the embedded worker (no broker), drafting with the tiny bundle."""
    service = NodeService(site_settings(tmp_path / "node", tiny_bundle))
    service.start()
    yield service
    service.stop()


def _send(node: NodeService, path: Path) -> str:
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assert node.address is not None
    host, port = node.address
    assoc = ae.associate(host, port, ae_title=node.settings.node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert int(status.Status) == 0
    return str(ds.StudyInstanceUID)


def _draft_of(db: Database, study_uid: str, timeout: float = 60.0) -> ReportVersion:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            row = session.scalars(
                select(ReportVersion).join(Study, Study.id == ReportVersion.study_id)
                .where(Study.study_instance_uid == study_uid)
            ).first()
            if row is not None:
                session.expunge(row)
                return row
        time.sleep(0.1)
    raise AssertionError("the study was not drafted in time")


def test_promotion_switches_the_running_worker_and_rollback_restores_it(
    node: NodeService, second_bundle: Path, site_phantoms: Path, tmp_path: Path
) -> None:
    settings = node.settings
    config = tmp_path / "node.toml"
    config.write_text(toml_text({
        "storage": {"folder": settings.storage.folder, "min_free_bytes": 0},
        "inference": {"bundle": settings.inference.bundle},
    }))
    studies = [site_phantoms / row["path"] for row in phantom_rows(site_phantoms)[:3]]

    first_uid = _send(node, studies[0])
    first = _draft_of(node.db, first_uid)
    assert (first.model_name, first.model_version) == ("tiny-vit-qformer", "0.0.0")

    registered = runner.invoke(app, ["model", "register", str(second_bundle), "--config",
                                     str(config)])
    assert registered.exit_code == 0, registered.output
    promoted = runner.invoke(app, ["model", "promote", "0.0.1", "--force", "--config",
                                   str(config)])
    assert promoted.exit_code == 0, promoted.output
    assert "model version 0.0.1 is active (was 0.0.0)" in said(promoted)
    time.sleep(2 * settings.retrain.active_check_s)

    second = _draft_of(node.db, _send(node, studies[1]))
    assert second.model_version == "0.0.1"
    assert node.worker is not None and node.worker.is_alive()  # the same worker, no restart

    back = runner.invoke(app, ["model", "rollback", "--config", str(config)])
    assert back.exit_code == 0, back.output
    time.sleep(2 * settings.retrain.active_check_s)
    third = _draft_of(node.db, _send(node, studies[2]))
    assert third.model_version == "0.0.0"
    # The first draft still names the version that made it.
    assert _draft_of(node.db, first_uid).model_version == "0.0.0"


def test_a_job_in_flight_keeps_its_model_while_new_jobs_get_the_promoted_one(
    tmp_path: Path, tiny_bundle: Path, second_bundle: Path, site_phantoms: Path
) -> None:
    settings: Settings = site_settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    queue_context.set_settings(settings, db)
    try:
        in_flight = queue_context.model()  # what a running job holds
        assert in_flight.version == "0.0.0"
        old_bundle = ensure_initial_version(db, settings).bundle
        register_bundle(db, settings, second_bundle)
        promote(db, settings, "0.0.1", force=True)
        time.sleep(2 * settings.retrain.active_check_s)

        new = queue_context.model()
        assert new.version == "0.0.1" and new is not in_flight
        # The running job's model still works, and still is the old version.
        image = pydicom.dcmread(site_phantoms / phantom_rows(site_phantoms)[0]["path"])
        assert in_flight.generate_report([image]).model_version == "0.0.0"
        # The cache let the old model go: asking for it again loads a new object.
        assert model_cache.get_model(settings.inference, bundle=old_bundle) is not in_flight
    finally:
        model_cache.forget_models()
        db.dispose()
