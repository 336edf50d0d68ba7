"""Signed-off studies as training examples: images, final report, correction pairs, provenance."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from registryhelpers import INSTRUCTION, READER, phantom_rows, seed_signed_off, site_settings
from sqlalchemy import select

from dicom_node.retrain.learning import (
    collect_signed_off,
    export_learning_set,
    pseudonymous_uid,
)
from dicom_node.settings import Settings
from dicom_node.store import Database, ReportKind, ReportVersion
from training.data import load_dicom_folder


@dataclass
class Site:
    settings: Settings
    db: Database
    uids: list[str]
    signed_at: datetime


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, tiny_model: Any,
    site_phantoms: Path,
) -> Iterator[Site]:
    """Six phantom studies received, drafted by the tiny model, amended and signed off."""
    settings = site_settings(tmp_path_factory.mktemp("learning") / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    signed_at = datetime.now(UTC)
    uids = seed_signed_off(settings, db, tiny_model, site_phantoms, signed_at=signed_at)
    yield Site(settings, db, uids, signed_at)
    db.dispose()


def test_every_signed_off_study_becomes_an_example_with_its_correction(site: Site) -> None:
    studies, skipped = collect_signed_off(site.db, site.settings.storage.spool_dir)
    assert len(studies) == 6 and not any(skipped.values())
    with site.db.session() as session:
        kinds = [row.kind for row in session.scalars(
            select(ReportVersion).where(ReportVersion.study_id == studies[0].study_id)
            .order_by(ReportVersion.version))]
    assert kinds == [ReportKind.DRAFT, ReportKind.AMENDMENT, ReportKind.SIGNOFF]
    study = studies[0]
    assert study.signer == READER and len(study.version_ids) == 3
    assert len(study.sr_sop_instance_uids) == 3 and study.images[0].is_file()
    # The draft -> amendment pair carries the reader's message; draft -> final is the same
    # change, so it is not repeated.
    (pair,) = study.corrections
    assert pair.kind == "amendment" and pair.instruction == INSTRUCTION
    assert pair.before.startswith("FINDINGS:") and pair.after == study.report
    assert pair.before != pair.after


def test_since_filters_by_sign_off_date(site: Site) -> None:
    later = site.signed_at + timedelta(seconds=1)
    assert collect_signed_off(site.db, site.settings.storage.spool_dir, since=later)[0] == []
    earlier = site.signed_at - timedelta(days=1)
    assert len(collect_signed_off(site.db, site.settings.storage.spool_dir,
                                  since=earlier)[0]) == 6


def test_the_learning_set_is_read_by_the_training_loader_and_names_no_patient(
    site: Site, site_phantoms: Path, tmp_path: Path
) -> None:
    studies, skipped = collect_signed_off(site.db, site.settings.storage.spool_dir)
    learning = export_learning_set(studies, tmp_path / "set", skipped=skipped)
    assert (learning.n_studies, learning.n_images, learning.n_corrections) == (6, 6, 6)

    records = load_dicom_folder(learning.dicom_dir, learning.reports_csv)
    assert len(records) == 6
    by_uid = {r.study_id: r for r in records}
    rows = {pseudonymous_uid(uid): row for uid, row in zip(site.uids,
                                                           phantom_rows(site_phantoms),
                                                           strict=True)}
    for uid, record in by_uid.items():
        row = rows[uid]
        assert record.findings == row["findings"] and record.impression == row["impression"]
        # Labels are the reader-verified coded findings of the sign-off.
        assert record.labels["Pleural Effusion"] == (1.0 if row["Pleural Effusion"] == "1.0"
                                                     else 0.0)
        assert record.subject_id.startswith("site-")

    # No patient name or ID, no original UID, anywhere in the exported files.
    originals = [(str(r["subject_id"])) for r in phantom_rows(site_phantoms)] + site.uids
    for path in learning.dicom_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert "PatientName" not in ds and "AccessionNumber" not in ds
        assert ds.PatientID.startswith("site-") and ds.StudyInstanceUID.startswith("2.25.")
    for text_file in (learning.reports_csv, learning.corrections, learning.provenance):
        text = text_file.read_text(encoding="utf-8")
        assert not any(value in text for value in originals), text_file.name
        assert "PHANTOM^" not in text

    provenance = [json.loads(line) for line in learning.provenance.read_text().splitlines()]
    first = provenance[0]
    assert first["signer"] == READER and len(first["report_version_ids"]) == 3
    assert len(first["sr_sop_instance_uids"]) == 3 and len(first["study_digest"]) == 12
    assert first["draft_model"] == {"name": "tiny-vit-qformer", "version": "0.0.0"}
    pairs = [json.loads(line) for line in learning.corrections.read_text().splitlines()]
    assert {p["instruction"] for p in pairs} == {INSTRUCTION}
    with learning.reports_csv.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["StudyInstanceUID", "findings", "impression", "indication"]
    assert len(header) == 4 + 14
