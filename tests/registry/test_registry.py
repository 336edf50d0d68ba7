"""The model registry on SQLite and PostgreSQL: first version, promotion gate, rollback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from registryhelpers import said, site_settings, toml_text
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.models.registry import (
    PromotionRefusedError,
    RegistryError,
    VersionNotFoundError,
    active_version,
    ensure_initial_version,
    list_versions,
    promote,
    register_bundle,
    rollback,
)
from dicom_node.settings import Settings
from dicom_node.store import Database, ModelSource, ModelVersion
from inference import BundleError, load_manifest

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Path, database_url: str) -> Settings:
    return site_settings(tmp_path / "node", tiny_bundle, database={"url": database_url})


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    database.create_all()
    yield database
    database.dispose()


def _copy(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def test_the_configured_bundle_becomes_the_first_active_version(
    settings: Settings, db: Database, tiny_bundle: Path
) -> None:
    assert active_version(db, settings, ensure=False) is None
    first = ensure_initial_version(db, settings)
    assert first.version == "0.0.0" and first.active and first.source is ModelSource.IMPORTED
    # A copy in the registry folder, verified, with the registry's name as its version.
    assert first.bundle == settings.storage.folder / "models" / "0.0.0"
    manifest = load_manifest(first.bundle, verify=True)
    assert manifest.version == "0.0.0"
    assert manifest.raw["registry"]["source"] == "imported"
    # Asking again changes nothing.
    assert ensure_initial_version(db, settings).version == "0.0.0"
    assert [v.version for v in list_versions(db, settings)] == ["0.0.0"]


def test_a_worse_candidate_is_refused_unless_forced_and_rollback_restores(
    settings: Settings, db: Database, second_bundle: Path, tmp_path: Path
) -> None:
    ensure_initial_version(db, settings)
    # Two retrain-style candidates, each evaluated against the active version on the same
    # held-out studies.
    worse = register_bundle(
        db, settings, second_bundle, version="cand-worse", source=ModelSource.RETRAIN,
        parent="0.0.0",
        metrics={"ce_f1_macro": 0.31, "n_studies": 40.0,
                 "baseline": {"version": "0.0.0", "ce_f1_macro": 0.36}},
    )
    assert not worse.active
    with pytest.raises(PromotionRefusedError) as refused:
        promote(db, settings, "cand-worse")
    message = str(refused.value)
    assert "0.310" in message and "0.360" in message and "--force" in message
    assert "same 40 held-out studies" in message
    assert active_version(db, settings, ensure=False).version == "0.0.0"  # type: ignore[union-attr]

    result = promote(db, settings, "cand-worse", force=True, by="admin")
    assert result.forced and result.previous == "0.0.0"
    active = active_version(db, settings, ensure=False)
    assert active is not None and active.version == "cand-worse"
    assert active.promoted_by == "admin" and (active.promotion_note or "").startswith("forced")

    better = register_bundle(
        db, settings, _copy(second_bundle, tmp_path / "b2"), version="cand-better",
        metrics={"ce_f1_macro": 0.40},
    )
    # No shared baseline with cand-worse: each version's own figure is compared.
    promote(db, settings, better.version)
    assert active_version(db, settings, ensure=False).version == "cand-better"  # type: ignore[union-attr]

    assert rollback(db, settings).version == "cand-worse"
    assert rollback(db, settings).version == "0.0.0"
    with pytest.raises(RegistryError, match="no previous version"):
        rollback(db, settings)
    assert [v.version for v in list_versions(db, settings) if v.active] == ["0.0.0"]


def test_a_candidate_without_a_figure_cannot_be_compared(
    settings: Settings, db: Database, second_bundle: Path
) -> None:
    ensure_initial_version(db, settings)
    register_bundle(db, settings, second_bundle)  # tiny bundles carry no evaluation
    with pytest.raises(PromotionRefusedError, match="no CE F1 macro figure"):
        promote(db, settings, "0.0.1")
    with pytest.raises(VersionNotFoundError, match="registered: 0.0.0, 0.0.1"):
        promote(db, settings, "0.0.9")
    with pytest.raises(RegistryError, match="already the active version"):
        promote(db, settings, "0.0.0")


def test_registration_refuses_bad_names_taken_names_and_tampered_bundles(
    settings: Settings, db: Database, second_bundle: Path, tmp_path: Path
) -> None:
    ensure_initial_version(db, settings)
    with pytest.raises(RegistryError, match="not allowed"):
        register_bundle(db, settings, second_bundle, version="../escape")
    with pytest.raises(RegistryError, match="already registered"):
        register_bundle(db, settings, second_bundle, version="0.0.0")
    tampered = _copy(second_bundle, tmp_path / "tampered")
    with (tampered / "vision.onnx").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError, match="checksum mismatch"):
        register_bundle(db, settings, tampered, version="tampered")
    assert not (settings.storage.folder / "models" / "tampered").exists()


def test_the_database_allows_one_active_version_only(
    settings: Settings, db: Database, second_bundle: Path
) -> None:
    ensure_initial_version(db, settings)
    register_bundle(db, settings, second_bundle)
    with pytest.raises(IntegrityError), db.session() as session:
        session.execute(update(ModelVersion).values(active=True))


def test_model_commands(
    settings: Settings, db: Database, second_bundle: Path, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml_text({
        "storage": {"folder": settings.storage.folder, "min_free_bytes": 0},
        "inference": {"bundle": settings.inference.bundle},
        "database": {"url": settings.database_url},
    }))
    listed = runner.invoke(app, ["model", "list", "--json", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    (first,) = json.loads(listed.output)
    assert first["version"] == "0.0.0" and first["active"] is True

    registered = runner.invoke(
        app, ["model", "register", str(second_bundle), "--version", "site-b",
              "--config", str(config)],
    )
    assert registered.exit_code == 0, registered.output
    assert "registered model version site-b" in said(registered)

    refused = runner.invoke(app, ["model", "promote", "site-b", "--config", str(config)])
    assert refused.exit_code == 1
    assert "no CE F1 macro figure" in said(refused) and "--force" in said(refused)

    forced = runner.invoke(app, ["model", "promote", "site-b", "--force", "--config", str(config)])
    assert forced.exit_code == 0, forced.output
    assert "model version site-b is active (was 0.0.0)" in said(forced)
    assert "jobs already running finish on 0.0.0" in said(forced)

    table = runner.invoke(app, ["model", "list", "--config", str(config)])
    assert table.exit_code == 0 and "site-b" in said(table)

    back = runner.invoke(app, ["model", "rollback", "--config", str(config)])
    assert back.exit_code == 0, back.output
    assert "model version 0.0.0 is active again (was site-b)" in said(back)
    again = runner.invoke(app, ["model", "rollback", "--config", str(config)])
    assert again.exit_code == 2 and "no previous version" in said(again)


def _version(name: str, metrics: dict[str, object], source: ModelSource) -> object:
    from datetime import UTC, datetime

    from dicom_node.models.registry import VersionInfo

    return VersionInfo(
        version=name, bundle=Path("/nonexistent"), model_name="m", original_version=None,
        metrics=metrics, source=source, parent_version=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC), active=False, promoted_at=None,
        promoted_by=None, previous_version=None, promotion_note=None,
    )


def test_the_gate_says_no_site_data_instead_of_comparing_phantom_figures() -> None:
    from dicom_node.models.registry import compare

    demo = _version("demo", {"ce_f1_macro": 0.95, "evaluated_on": "test (held-out phantoms)"},
                    ModelSource.DEMO)
    site = _version("site", {"ce_f1_macro": 0.40, "evaluated_on": "site test set"},
                    ModelSource.IMPORTED)
    gate = compare(site, demo)
    assert not gate.passed
    assert gate.message.startswith("no site data: the active version demo was evaluated on "
                                   "synthetic phantoms")
    # A retrain whose held-out studies hold none of the site's sign-offs says so too ...
    retrain = {"ce_f1_macro": 0.9, "n_studies": 10, "site_studies": 0,
               "baseline": {"version": "demo", "ce_f1_macro": 0.5}}
    gate = compare(_version("r1", retrain, ModelSource.RETRAIN), demo)
    assert not gate.passed and "none of this site's signed reports" in gate.message
    # ... and one with site studies among them is compared on the same studies.
    gate = compare(_version("r2", {**retrain, "site_studies": 3}, ModelSource.RETRAIN), demo)
    assert gate.passed and "both on the same 10 held-out studies" in gate.message
    # An imported model that nobody evaluated here: no figure, and the gate says why.
    gate = compare(_version("imp", {}, ModelSource.IMPORTED), site)
    assert not gate.passed and "evaluated on this site's studies" in gate.message


def test_an_imported_published_model_registers_and_the_gate_says_it_has_no_site_figure(
    settings: Settings, db: Database, radialog_bundle: Path
) -> None:
    ensure_initial_version(db, settings)
    info = register_bundle(db, settings, radialog_bundle, version="radialog-1")
    assert info.source is ModelSource.IMPORTED and info.model_name == "radialog-v1"
    manifest = load_manifest(info.bundle, verify=True)  # the referenced Vicuna is checked too
    assert manifest.llm_base.is_absolute() and manifest.external_files
    with pytest.raises(PromotionRefusedError, match="not evaluated; an imported model"):
        promote(db, settings, "radialog-1")
    result = promote(db, settings, "radialog-1", force=True)
    assert result.forced and active_version(db, settings).version == "radialog-1"
