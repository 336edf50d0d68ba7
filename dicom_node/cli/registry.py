"""Commands of the model registry and retrain jobs.

``dicom_node model list|register|promote|rollback`` (on the ``model`` group) and
``dicom_node retrain [--stages ...] [--since DATE]`` / ``dicom_node retrain status``.
Registered on the main app by :mod:`dicom_node.cli`; the inference stack is imported only
by the commands that need it.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.cli._app import ConfigOption, _fail, _quiet_libraries, app, console, model_app
from dicom_node.errors import NodeError
from dicom_node.ops.logs import configure_logging
from dicom_node.settings import Settings, load_settings
from dicom_node.store import Database

retrain_app = typer.Typer(
    help="Retrain the model on signed-off reports; 'retrain status' shows the runs.",
    invoke_without_command=True,
)
app.add_typer(retrain_app, name="retrain")


def _load(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    """The node's database for one command (missing tables are created, as ``status`` does);
    failures become a one-line error."""
    try:
        db = Database(settings.database_url)
        db.create_all()
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    try:
        yield db
    except SQLAlchemyError as exc:
        raise _fail(f"cannot use the database {db.safe_url}: {type(exc).__name__}: {exc}") from exc
    finally:
        db.dispose()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _figure(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


# --------------------------------------------------------------------------- model list
@model_app.command("list")
def model_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    config: ConfigOption = None,
) -> None:
    """List the registered model versions with their metrics; * marks the active one.

    The first use registers the configured bundle (inference.bundle) as the active version.
    """
    settings = _load(config)
    from dicom_node.models.registry import ensure_initial_version, list_versions
    from inference import InferenceError

    with _database(settings) as db:
        try:
            ensure_initial_version(db, settings)
            versions = list_versions(db, settings)
        except (NodeError, InferenceError) as exc:
            raise _fail(str(exc)) from exc
    if as_json:
        sys.stdout.write(json.dumps([v.to_json() for v in versions], indent=2) + "\n")
        return
    table = Table(title="Model versions")
    for column in ("", "version", "source", "parent", "CE F1 macro", "baseline", "created",
                   "promoted", "note"):
        table.add_column(column)
    for v in versions:
        baseline = v.metrics.get("baseline")
        base_text = (
            f"{baseline.get('version')} {_figure(baseline.get('ce_f1_macro'))}"
            if isinstance(baseline, dict)
            else ""
        )
        promoted = (
            f"{_when(v.promoted_at)} by {v.promoted_by}" if v.promoted_at is not None else ""
        )
        table.add_row(
            "*" if v.active else "", v.version, v.source.value, v.parent_version or "",
            _figure(v.ce_f1), base_text, _when(v.created_at), promoted, v.promotion_note or "",
        )
    console.print(table)


# --------------------------------------------------------------------------- register
@model_app.command("register")
def model_register(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory to register.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Version name (default: the manifest's).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Copy a bundle into the registry as a new, inactive version (promote it to use it)."""
    settings = _load(config)
    from dicom_node.models.registry import ensure_initial_version, register_bundle
    from dicom_node.store import ModelSource
    from inference import InferenceError

    with _database(settings) as db:
        try:
            ensure_initial_version(db, settings)
            info = register_bundle(db, settings, bundle, version=version,
                                   source=ModelSource.IMPORTED)
        except (NodeError, InferenceError) as exc:
            raise _fail(str(exc)) from exc
    console.print(
        f"registered model version {info.version} ({info.model_name}, CE F1 macro "
        f"{_figure(info.ce_f1)}) at {info.bundle}; activate it with "
        f"'dicom_node model promote {info.version}'",
        highlight=False,
    )


# --------------------------------------------------------------------------- promote
@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="The registered version to activate.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even if its CE F1 is worse than the active one."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Make a version the active one; workers switch at their next job, without a restart.

    Refused (exit 1) when its CE F1 macro is worse than the active version's, or cannot be
    compared, unless --force is given.
    """
    settings = _load(config)
    from dicom_node.models.registry import PromotionRefusedError, promote
    from inference import InferenceError

    with _database(settings) as db:
        try:
            result = promote(db, settings, version, force=force, by=_user())
        except PromotionRefusedError as exc:
            raise _fail(str(exc), 1) from exc
        except (NodeError, InferenceError) as exc:
            raise _fail(str(exc)) from exc
    if result.gate is not None:
        prefix = "forced past the CE F1 gate: " if result.forced else ""
        console.print(f"{prefix}{result.gate.message}", highlight=False)
    console.print(
        f"model version {result.version} is active (was {result.previous}); workers use it "
        f"for jobs they start from now on (within {settings.retrain.active_check_s:g} s), "
        f"jobs already running finish on {result.previous}",
        highlight=False,
    )


@model_app.command("rollback")
def model_rollback(config: ConfigOption = None) -> None:
    """Make the version that was active before the current one active again."""
    settings = _load(config)
    from dicom_node.models.registry import rollback
    from inference import InferenceError

    with _database(settings) as db:
        try:
            result = rollback(db, settings, by=_user())
        except (NodeError, InferenceError) as exc:
            raise _fail(str(exc)) from exc
    console.print(
        f"rolled back: model version {result.version} is active again (was "
        f"{result.previous}); workers switch within {settings.retrain.active_check_s:g} s",
        highlight=False,
    )


# --------------------------------------------------------------------------- retrain
def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"--since {text!r} is not a date (YYYY-MM-DD) or ISO date-time") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@retrain_app.callback()
def retrain(
    ctx: typer.Context,
    stages: Annotated[
        str, typer.Option(help="Comma-separated LoRA stages to retrain: report, instruct.")
    ] = "report,instruct",
    since: Annotated[
        str | None,
        typer.Option(help="Only studies signed off on or after this date (YYYY-MM-DD, UTC)."),
    ] = None,
    foreground: Annotated[
        bool,
        typer.Option("--foreground", help="Run here and now even when a broker is configured."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Queue a retrain job on the 'training' queue: learn from signed-off studies.

    The job exports the signed-off studies, fine-tunes the active model's adapters on them
    plus the base dataset (retrain.base_data), evaluates candidate and active model on the
    same held-out studies and registers the candidate (not active). Without a broker
    (broker.url) the job runs in the foreground.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = _load(config)
    from dicom_node.jobqueue import configure_app, is_embedded
    from dicom_node.jobqueue import context as queue_context
    from dicom_node.jobqueue.dispatch import send_retrain
    from dicom_node.jobqueue.training_tasks import retrain as retrain_task
    from dicom_node.retrain.runs import (
        RetrainError,
        create_run,
        fail_run,
        get_run,
        parse_stages,
    )

    try:
        stage_names = parse_stages(stages)
    except RetrainError as exc:
        raise _fail(str(exc)) from exc
    since_at = _parse_since(since)
    with _database(settings) as db:
        run = create_run(db, stage_names, since_at, requested_by=_user())
        configure_app(settings)
        queue_context.set_settings(settings, db)
        if not foreground and not is_embedded(settings):
            try:
                send_retrain(settings, run.id)
            except Exception as exc:  # noqa: BLE001 - kombu raises many kinds when unreachable
                reason = f"the broker is unreachable ({type(exc).__name__}); nothing was queued"
                fail_run(db, run.id, reason)
                raise _fail(f"retrain run {run.id} failed: {reason}") from exc
            console.print(
                f"retrain run {run.id} queued on the training queue ({', '.join(stage_names)}"
                f"{', signed off since ' + since_at.date().isoformat() if since_at else ''}); "
                "a worker started with 'dicom_node worker --queues training' runs it; follow "
                f"it with 'dicom_node retrain status {run.id}'",
                highlight=False,
            )
            return
        reason = "--foreground" if foreground else "no broker configured (broker.url)"
        console.print(
            f"{reason}: running retrain run {run.id} in the foreground "
            f"({', '.join(stage_names)}); this takes a while",
            highlight=False,
        )
        _quiet_libraries()
        try:
            retrain_task.apply((run.id,), throw=True)
        except Exception as exc:  # noqa: BLE001 - recorded in the run; shown below
            console.print(f"unexpected error: {type(exc).__name__}: {exc}", highlight=False)
        info = get_run(db, run.id)
    if info.state.value != "done":
        raise _fail(f"retrain run {run.id} failed: {info.error}", 1)
    console.print(
        f"retrain run {run.id} done: candidate model version {info.candidate_version} "
        f"registered (not active); compare with 'dicom_node model list', activate with "
        f"'dicom_node model promote {info.candidate_version}'",
        highlight=False,
    )


@retrain_app.command("status")
def retrain_status(
    run_id: Annotated[
        int | None, typer.Argument(help="The run to show in detail (default: the newest).")
    ] = None,
    lines: Annotated[int, typer.Option(min=0, help="Log lines shown.")] = 30,
    limit: Annotated[int, typer.Option(min=1, help="Runs listed.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show retrain runs: state, progress, phase, candidate version and the log's tail."""
    settings = _load(config)
    from dicom_node.retrain.runs import RetrainError, get_run, list_runs

    with _database(settings) as db:
        runs = list_runs(db, limit)
        try:
            detail = get_run(db, run_id) if run_id is not None or runs else None
        except RetrainError as exc:
            raise _fail(str(exc)) from exc
    if as_json:
        sys.stdout.write(
            json.dumps(
                {"runs": [r.to_json() | {"log_tail": None} for r in runs],
                 "run": detail.to_json() if detail else None},
                indent=2,
            )
            + "\n"
        )
        return
    if not runs:
        console.print("no retrain run has been requested yet ('dicom_node retrain')")
        return
    table = Table(title="Retrain runs (newest first)")
    for column in ("id", "state", "progress", "phase", "stages", "since", "candidate",
                   "created", "updated"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            str(r.id), r.state.value + (" (stale)" if r.stale() else ""),
            f"{100 * r.progress:.0f} %", r.phase, ",".join(r.stages),
            r.since.date().isoformat() if r.since else "", r.candidate_version or "",
            _when(r.created_at), _when(r.updated_at),
        )
    console.print(table)
    if detail is None:
        return
    console.print(
        f"run {detail.id}: {detail.state.value}, {100 * detail.progress:.0f} % ({detail.phase})"
        + (f"; candidate {detail.candidate_version}" if detail.candidate_version else "")
        + (f"; error: {detail.error}" if detail.error else ""),
        highlight=False,
    )
    if detail.stale():
        console.print(
            f"no update since {_when(detail.updated_at)}: its worker has probably stopped; "
            "request a new run",
            highlight=False,
        )
    tail = detail.log_tail.splitlines()[-lines:] if lines else []
    if tail:
        console.print("log (last lines):", highlight=False)
        for line in tail:
            console.print(f"  {line}", highlight=False, markup=False)


__all__ = [
    "model_list",
    "model_promote",
    "model_register",
    "model_rollback",
    "retrain",
    "retrain_app",
    "retrain_status",
]
