"""Retrain jobs on tiny models: from signed-off phantom studies to a registered candidate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from registryhelpers import said, seed_signed_off, site_settings, toml_text
from sqlalchemy import update
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.jobqueue import TRAINING_QUEUE, EmbeddedWorker, configure_app
from dicom_node.jobqueue import context as queue_context
from dicom_node.jobqueue.dispatch import send_retrain
from dicom_node.models.registry import get_version
from dicom_node.retrain.runs import create_run, get_run
from dicom_node.settings import Settings
from dicom_node.store import Database, ModelSource, ModelVersion, RetrainState
from inference import load_manifest

runner = CliRunner()

#: A retrain small enough for 2 CPU cores: 2 steps per stage, 4 held-out studies at most.
RETRAIN = {
    "max_base_studies": 16,
    "min_signed_off": 4,
    "max_steps": 2,
    "batch_size": 2,
    "eval_limit": 4,
    "eval_corrections": 2,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
    "device": "cpu",
}


def _site(tmp_path: Path, bundle: Path, base: Path) -> tuple[Settings, Path]:
    retrain = {**RETRAIN, "base_data": base}
    settings = site_settings(tmp_path / "node", bundle, retrain=retrain)
    config = tmp_path / "node.toml"
    config.write_text(toml_text({
        "storage": {"folder": settings.storage.folder, "min_free_bytes": 0},
        "inference": {"bundle": bundle, "device": "cpu"},
        "retrain": retrain,
    }))
    return settings, config


def test_a_retrain_run_learns_from_sign_offs_and_registers_a_candidate(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, site_phantoms: Path,
    base_phantoms: Path,
) -> None:
    settings, config = _site(tmp_path, tiny_bundle, base_phantoms)
    db = Database(settings.database_url)
    db.create_all()
    seed_signed_off(settings, db, tiny_model, site_phantoms)

    result = runner.invoke(
        app, ["retrain", "--stages", "report,instruct", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "no broker configured (broker.url): running retrain run 1 in the foreground" in (
        said(result)
    )
    assert "candidate model version retrain-1 registered (not active)" in said(result)

    status = runner.invoke(app, ["retrain", "status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "run 1: done, 100 % (done); candidate retrain-1" in said(status)
    for step in ("6 studies (6 images, 6 correction pairs)", "training report",
                 "training instruct", "evaluating", "candidate retrain-1 registered"):
        assert step in said(status), step
    details = json.loads(
        runner.invoke(app, ["retrain", "status", "1", "--json", "--config", str(config)]).output
    )["run"]
    assert details["state"] == "done" and details["stages"] == ["report", "instruct"]

    listed = runner.invoke(app, ["model", "list", "--json", "--config", str(config)])
    versions = {v["version"]: v for v in json.loads(listed.output)}
    assert versions["0.0.0"]["active"] and not versions["retrain-1"]["active"]
    candidate = get_version(db, settings, "retrain-1")
    assert candidate.source is ModelSource.RETRAIN and candidate.parent_version == "0.0.0"
    metrics = candidate.metrics
    assert 0.0 <= metrics["ce_f1_macro"] <= 1.0 and metrics["n_studies"] >= 1
    assert metrics["baseline"]["version"] == "0.0.0" and "ce_f1_macro" in metrics["baseline"]
    assert metrics["site_studies"] == 6 and metrics["base_studies"] == 16
    assert metrics["site_corrections"] >= 1

    # The candidate is a verified bundle with both adapters, trained further from 0.0.0's.
    manifest = load_manifest(candidate.bundle, verify=True)
    assert manifest.version == "retrain-1" and set(manifest.adapters) == {"report", "instruct"}
    assert manifest.metrics is not None and manifest.metrics["baseline"]["version"] == "0.0.0"
    parent = load_manifest(get_version(db, settings, "0.0.0").bundle)
    for name in ("report", "instruct"):
        new = (manifest.adapters[name] / "adapter_model.safetensors").read_bytes()
        old = (parent.adapters[name] / "adapter_model.safetensors").read_bytes()
        assert new != old, f"the {name} adapter did not change"
    provenance = settings.storage.folder / "retrain" / "run-1" / "signed_off" / "provenance.jsonl"
    assert len(provenance.read_text().splitlines()) == 6

    # The registry holds the figures the retrain wrote into the candidate's manifest.
    assert manifest.metrics["test"]["ce_f1_macro"] == metrics["ce_f1_macro"]
    assert manifest.metrics["baseline"]["ce_f1_macro"] == metrics["baseline"]["ce_f1_macro"]

    # Both figures come from the same held-out studies, so the gate compares them. A candidate
    # measured worse than the baseline is refused, naming both figures; one measured better
    # is promoted. (The tiny model's own figures are whatever its random weights score, so
    # the test sets the candidate's figure on each side of the baseline.)
    baseline = float(metrics["baseline"]["ce_f1_macro"])
    studies = int(metrics["n_studies"])

    def candidate_scores(value: float) -> None:
        with db.session() as session:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version == "retrain-1")
                .values(metrics_json=json.dumps({**metrics, "ce_f1_macro": value}))
            )

    candidate_scores(baseline - 0.1)
    refused = runner.invoke(app, ["model", "promote", "retrain-1", "--config", str(config)])
    assert refused.exit_code == 1
    assert (
        f"candidate retrain-1 has CE F1 macro {baseline - 0.1:.3f}, worse than the active "
        f"version 0.0.0 ({baseline:.3f}; both on the same {studies} held-out studies)"
    ) in said(refused)
    assert get_version(db, settings, "0.0.0").active

    candidate_scores(baseline + 0.1)
    promoted = runner.invoke(app, ["model", "promote", "retrain-1", "--config", str(config)])
    assert promoted.exit_code == 0, promoted.output
    assert f"both on the same {studies} held-out studies" in said(promoted)
    assert get_version(db, settings, "retrain-1").active
    assert not get_version(db, settings, "0.0.0").active
    db.dispose()


def test_a_retrain_queued_on_the_training_queue_is_run_by_a_worker(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, site_phantoms: Path,
    base_phantoms: Path,
) -> None:
    settings, _ = _site(tmp_path, tiny_bundle, base_phantoms)
    db = Database(settings.database_url)
    db.create_all()
    seed_signed_off(settings, db, tiny_model, site_phantoms)
    celery = configure_app(settings)  # the embedded queue: a SQLite transport in the folder
    queue_context.set_settings(settings, db)
    run = create_run(db, ["report"], None, requested_by="admin")
    send_retrain(settings, run.id)
    assert get_run(db, run.id).state is RetrainState.QUEUED
    worker = EmbeddedWorker(celery, settings, queues=[TRAINING_QUEUE])
    worker.start()
    try:
        deadline = time.monotonic() + 240
        while get_run(db, run.id).state in (RetrainState.QUEUED, RetrainState.RUNNING):
            assert time.monotonic() < deadline, get_run(db, run.id).log_tail
            time.sleep(0.5)
    finally:
        worker.stop()
    info = get_run(db, run.id)
    assert info.state is RetrainState.DONE, info.error
    assert info.candidate_version == "retrain-1" and info.progress == 1.0
    manifest = load_manifest(get_version(db, settings, "retrain-1").bundle)
    # Only the report adapter was retrained; the instruct adapter is carried over as it was.
    parent = load_manifest(get_version(db, settings, "0.0.0").bundle)
    assert (manifest.adapters["instruct"] / "adapter_model.safetensors").read_bytes() == (
        parent.adapters["instruct"] / "adapter_model.safetensors"
    ).read_bytes()
    db.dispose()


def test_a_retrain_without_enough_sign_offs_fails_with_the_reason(
    tmp_path: Path, tiny_bundle: Path, base_phantoms: Path
) -> None:
    _, config = _site(tmp_path, tiny_bundle, base_phantoms)
    bad = runner.invoke(app, ["retrain", "--stages", "classifier", "--config", str(config)])
    assert bad.exit_code == 2
    assert "--stages must name one or more of report, instruct" in said(bad)

    result = runner.invoke(app, ["retrain", "--since", "2999-01-01", "--config", str(config)])
    assert result.exit_code == 1
    assert ("retrain run 1 failed: 0 studies signed off since 2999-01-01 with their images in "
            "the spool; a retrain needs at least 4 (retrain.min_signed_off)") in said(result)
    status = runner.invoke(app, ["retrain", "status", "--config", str(config)])
    assert "failed" in said(status) and "retrain.min_signed_off" in said(status)


def test_a_retrain_that_cannot_be_queued_is_recorded_as_failed(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml_text({
        "storage": {"folder": tmp_path / "node", "min_free_bytes": 0},
        "inference": {"bundle": tiny_bundle},
        "broker": {"url": "redis://127.0.0.1:1/0"},  # nothing listens there
    }))
    result = runner.invoke(app, ["retrain", "--config", str(config)])
    assert result.exit_code == 2
    assert "retrain run 1 failed: the broker is unreachable" in said(result)
    assert "nothing was queued" in said(result)
    status = runner.invoke(app, ["retrain", "status", "--json", "--config", str(config)])
    run = json.loads(status.output)["run"]
    assert run["state"] == "failed" and run["phase"] == "not started"
